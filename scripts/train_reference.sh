#!/usr/bin/env bash
# Train the reference `shapes` cascade (16 px base + 16 -> 64 px SR, MiniLM text) on the shapes world and ship it
# as package data in imagen/weights/shapes/ (config.json + base.safetensors + sr64.safetensors, EMA weights in
# float16, and sampler.toml from configs/shapes_sampler.toml). The two stages are independent (the SR stage trains
# on real low-res images), so on a machine with cores to spare they can also run at the same time into two folders;
# ship_model.py then takes the merged folder.
#
#   scripts/train_reference.sh [RUN_DIR]          # default RUN_DIR: runs/shapes; rerun to resume after a stop
#
# The base trains in two phases (configs/shapes_base_pos.toml into RUN_DIR-pos, then configs/shapes_base.toml
# starting from its weights); the SR stage is independent of both.
#
# The recipe is the CPU one (configs/shapes_base_pos.toml, configs/shapes_base.toml, configs/shapes_sr.toml); on
# a GPU it runs unchanged (--device auto picks CUDA). Extra arguments after RUN_DIR go to every `imagen-bench
# train` call.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/shapes}"
shift || true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# the base in two phases: the positional layout first (Positional captions, high noise), then every category
imagen-bench train configs/shapes_base_pos.toml --out "$RUN-pos" --resume "$@"
imagen-bench train configs/shapes_base.toml --out "$RUN" --set train.init="$RUN-pos" --resume "$@"
imagen-bench train configs/shapes_sr.toml --out "$RUN" --resume "$@"

# float16 copy into imagen/weights/shapes/, with the sampler settings the model is evaluated at by default
python scripts/ship_model.py "$RUN" shapes configs/shapes_sampler.toml
