#!/usr/bin/env bash
# The 60-minute CPU recipe of issue 25 for the hard world: trains the base of configs/hard2_base.toml (5,000 steps,
# about 50 minutes with 2 threads on the project's quiet 2-core CPU) and completes the cascade with `shapes-hard`'s
# shipped SR stage (the same sr64 config; it trained on real low-res renders, so it does not depend on the base).
#
#   scripts/train_hard2.sh [RUN_DIR] [extra imagen-bench train flags]   # default runs/shapes-hard2; rerun to resume
#
# Then: imagen-bench model probe RUN_DIR --sampler ddim --steps 20 --guidance 1 --threshold static
#       imagen-bench eval shapes --model RUN_DIR --guidance 1 3 5 --n 200 --sampler ddim --steps 20 --threshold static
# and, once its sampler settings are chosen: python scripts/ship_model.py RUN_DIR NAME SAMPLER.toml
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/shapes-hard2}"
shift || true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

imagen-bench train configs/hard2_base.toml --out "$RUN" --resume --threads 2 "$@"
if [ ! -f "$RUN/sr64.safetensors" ]; then
  cp imagen/weights/shapes-hard/sr64.safetensors "$RUN/sr64.safetensors"
fi
