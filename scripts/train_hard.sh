#!/usr/bin/env bash
# Train the second reference cascade, `shapes-hard` (32 px base + 32 -> 64 px SR, MiniLM text), on the hard shapes
# world (imagen.shapes_hard) and ship it as package data in imagen/weights/shapes-hard/ (config.json, base and sr64
# safetensors as float16, world.txt, and sampler.toml from configs/hard_sampler.toml).
#
#   scripts/train_hard.sh [RUN_DIR]          # default RUN_DIR: runs/shapes-hard; rerun to resume after a stop
#
# The recipe is the CPU one (configs/hard_base.toml, configs/hard_sr.toml): about 36 + 13 minutes on a 2-core CPU
# when run one after the other, about 50 with caption encoding (docs/reference-models.md, "The second reference model"). The stages are independent (the SR stage
# trains on real low-res renders), so they may also run at the same time. Extra arguments after RUN_DIR go to every
# `imagen-bench train` call.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/shapes-hard}"
shift || true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

imagen-bench train configs/hard_base.toml --out "$RUN" --resume "$@"
imagen-bench train configs/hard_sr.toml --out "$RUN" --resume "$@"
python scripts/ship_model.py "$RUN" shapes-hard configs/hard_sampler.toml
