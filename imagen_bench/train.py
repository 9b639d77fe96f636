"""`imagen-bench train CONFIG.toml`: train one stage of a cascade (imagen.train)."""

from __future__ import annotations

import argparse
import dataclasses
import json

DESCRIPTION = """\
Train one stage of an Imagen cascade from a TOML config ([model], [train], [data], out).

The run folder gets the inference checkpoint (config.json + <stage>.safetensors with the EMA weights, so
`--checkpoint RUN_DIR` samples from it), train_state/ for --resume, loss.csv, and preview grids in samples/.
Train the SR stage into the same folder as the base to complete the cascade. Only the trained stage is built on
the device. Several processes (torchrun or accelerate launch) each take their own device (cuda:LOCAL_RANK) and
train data-parallel through PyTorch DDP, or sharded through FSDP2 with [train] parallel = "fsdp"; checkpoints
are in one format either way (a 2-process state resumes in 1 process, exact to the step); only rank 0 writes.
On a GPU, [train] precision = "auto" trains in bf16 autocast; grad_checkpointing = true trades compute for
activation memory; optimizer = "adafactor" is the paper's optimiser for the base."""

EPILOG = """\
examples:
  imagen-bench train configs/tiny_test.toml --out runs/tiny            # seconds: a smoke run of the tiny preset
  imagen-bench train configs/shapes_base_pos.toml                      # the reference base, phase 1 (layout)
  imagen-bench train configs/shapes_base.toml                          # phase 2: from phase 1's weights (init)
  imagen-bench train configs/shapes_sr.toml                            # stage 2 (16 -> 64 SR), same run folder
  imagen-bench train configs/shapes_base.toml --resume                 # continue bit-exactly after a stop
  imagen-bench train configs/shapes_base.toml --set train.steps=200 --set train.init= --out runs/quick
  torchrun --nproc-per-node 2 -m imagen_bench train configs/shapes_base_pos.toml  # DDP (gloo on CPU, nccl on GPU)
  torchrun --nproc-per-node 8 -m imagen_bench train configs/paper_base.toml --set train.parallel=fsdp \\
      --set train.optimizer=adamw --set train.lr=1e-4   # the 2B base sharded over 8 GPUs
  scripts/train_reference.sh                                           # both stages + copy into imagen/weights/shapes
  imagen-bench train configs/hard_base.toml --ablation pooled-text     # an ablation of the findings report, into
                                                                       # runs/shapes-hard-pooled-text
"""


def _parse_set(items: list[str]) -> dict:
    """--set section.key=value (value parsed as TOML: 10, 1e-4, "text", true, [1, 2])."""
    from imagen.config import toml_value
    from imagen.errors import UserError

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: write section.key=value, e.g. --set train.steps=100")
        key, value = item.split("=", 1)
        out[key.strip()] = toml_value(value)  # a bare word: a string
    return out


def run(args: argparse.Namespace) -> int:
    from imagen.train import load_config, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = _parse_set(args.set or [])
    if args.out:
        overrides["out"] = args.out
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    cfg = load_config(args.config, overrides)
    if args.ablation:
        from imagen.train import ablate

        cfg = ablate(cfg, args.ablation)
        if not args.out:  # an ablated model is another cascade: its own folder beside the recipe's
            from pathlib import Path

            out = Path(cfg.out)
            cfg = dataclasses.replace(cfg, out=str(out.with_name(f"{out.name}-{args.ablation}")))
    result = train(cfg, resume=args.resume, device=args.device, progress=not args.json,
                   stop_at=args.stop_at, text_cache=args.text_cache)
    if args.json:
        print(json.dumps(result))
    elif result["rank"] == 0:
        print(f"trained stage {cfg.train.stage!r} to step {result['step']} (loss {result['loss']:.4f}) "
              f"in {result['seconds']:.0f} s; checkpoint: {result['out']}")
    return 0


def register(subparsers) -> None:
    from imagen_bench import HelpFormatter

    p = subparsers.add_parser("train", help="train one stage of a cascade from a TOML config",
                              description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("config", help="training config (TOML): out, [model], [train], [data]; see configs/")
    p.add_argument("--out", help="run folder (overrides the config's out)")
    p.add_argument("--steps", type=int, help="total steps (overrides [train] steps)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's train_state (bit-exact); starts fresh if there is none")
    p.add_argument("--ablation", choices=("random-text", "pooled-text", "no-aug"),
                   help="train an ablation of the config's model (the findings report): random-text = MiniLM's "
                        "architecture with random weights; pooled-text = no cross-attention, the pooled text vector "
                        "only; no-aug = SR without noise-conditioning augmentation. Default out: OUT-ABLATION")
    p.add_argument("--stop-at", type=int, help="stop after this step (checkpointed), as if interrupted")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default; 1 is fastest on a busy shared CPU)")
    p.add_argument("--text-cache", help="embedding cache folder (default: $IMAGEN_BENCH_CACHE/text)")
    p.add_argument("--json", action="store_true", help="print only the result as JSON (no progress bar)")
    p.set_defaults(func=run)
