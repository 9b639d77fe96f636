#!/usr/bin/env bash
# The prepared GPU run (issue 25): on a machine with one GPU, trains the hard-world base for --minutes
# (configs/gpu_hard_base.toml), samples and scores it, runs `pytest -m gpu`, the throughput / MFU benchmark of the
# paper's base stage and the memory plan against torch.cuda.max_memory_allocated, and writes every figure to
# OUT/gpu_run.json (default runs/gpu-run). About 8 minutes of one H100 at --minutes 3.
#
#   scripts/gpu_run.sh [--minutes 3] [--out runs/gpu-run] [--skip pytest,throughput] [--n 200]
#   scripts/gpu_run.sh --toy --device cpu --out /tmp/gpu-toy      # the same code at toy size (tests/test_gpu_run.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${PYTHON:-python}" scripts/gpu_run.py "$@"  # PYTHON: the project environment's interpreter
