"""`imagen-bench model ...`: a model's structure and memory without allocating its weights (info, plan), and the
SDEdit noise-level probe of a trained base (probe)."""

from __future__ import annotations

import argparse
import json
import re

from imagen.config import PRESETS, preset


def _info(args: argparse.Namespace) -> int:
    from imagen.unet import count_parameters  # torch: imported when the command runs, not for --help

    cfg = preset(args.preset)  # an unknown name is a UserError: one line, exit 2
    stages = [
        {"name": st.name, "resolution": st.resolution, "params": count_parameters(st.unet, null_text=st.null_text)}
        for st in cfg.stages
    ]
    info = {"preset": cfg.name, "text_encoder": cfg.text.name, "stages": stages}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"preset {cfg.name}: text encoder {cfg.text.name} ({cfg.text.kind}, {cfg.text.dim}-d tokens, "
          f"max {cfg.text.max_length}; not counted below)")
    width = max(len(s["name"]) for s in stages)
    for st, s in zip(cfg.stages, stages):
        src = f"{st.lowres_resolution}->{st.resolution}" if st.is_sr else f"{st.resolution}"
        print(f"  {s['name']:<{width}}  {src:>10}px  {s['params']:>14,d} params  ({s['params'] / 1e6:,.1f}M)")
    total = sum(s["params"] for s in stages)
    print(f"  {'total':<{width}}  {'':>10}    {total:>14,d} params  ({total / 1e6:,.1f}M)")
    return 0


PLAN_EPILOG = """examples:
  imagen-bench model plan --preset paper --stage base --batch 64 --gpu-memory 80GiB
  imagen-bench model plan --preset paper --stage base --batch 64 --gpus 8 --parallel fsdp --grad-checkpointing \\
      --gpu-memory 80GiB --json
  imagen-bench model plan --preset paper --stage sr1024 --batch 4 --mode sample --gpu-memory 141GiB
  imagen-bench model plan --preset paper --stage sr1024 --batch 16 --mode train --crop 256 --gpu-memory 80GiB
  imagen-bench model plan --preset small --stage base --batch 16 --precision fp32   # a CPU run's peak
"""


def _plan(args: argparse.Namespace) -> int:
    from imagen.memory import GiB, parse_size, plan

    cfg = preset(args.preset)
    mem = parse_size(args.gpu_memory) if args.gpu_memory else None
    stages = [args.stage] if args.stage else [s.name for s in cfg.stages]
    modes = ("train", "sample") if args.mode == "both" else (args.mode,)
    parallel = args.parallel if args.gpus > 1 else "none"
    plans = [plan(cfg, st, args.batch, mode=m, precision=args.precision, optimizer=args.optimizer, parallel=parallel,
                  gpus=args.gpus, grad_checkpointing=args.grad_checkpointing, gpu_memory=mem,
                  crop=args.crop if m == "train" else 0)
             for st in stages for m in modes]
    if args.json:
        print(json.dumps({"preset": cfg.name, "plans": [p.as_dict() for p in plans], "method": METHOD}))
        return 0

    unit, scale = ("GiB", GiB) if max(p.total for p in plans) >= GiB else ("MiB", 2 ** 20)

    def g(b):
        return f"{b / scale:8.2f}"

    print(f"preset {cfg.name}, {args.precision}, batch {args.batch} per device"
          + (f", {args.gpus} GPUs ({parallel})" if args.gpus > 1 else "") + f" ({unit} per device)")
    print(f"  {'stage':<8} {'mode':<6} {'params':>8} {'weights':>8} {'grads':>8} {'optim':>8} {'ema':>8} "
          f"{'activ.':>8} {'total':>8}" + ("  fits  max batch" if mem else ""))
    for p in plans:
        count = f"{p.params / 1e9:7.2f}B" if p.params >= 1e8 else f"{p.params / 1e6:7.2f}M"
        line = (f"  {p.stage:<8} {p.mode:<6} {count} {g(p.weights)} {g(p.gradients)} {g(p.optimizer)} "
                f"{g(p.ema)} {g(p.activations + p.gathered)} {g(p.total)}")
        if mem:
            line += f"  {'yes' if p.fits else 'NO ':<4}  {p.max_batch if p.max_batch is not None else '-'}"
        print(line)
    print("  total = weights + optim + ema + the step's traced peak (activations, with the gradients as they appear; "
          "grads shows them at the end of the step)")
    if mem:
        print(f"  budget: {mem / GiB:.1f} GiB less a 10% margin for the CUDA context and allocator slack")
    print("method: " + METHOD)
    return 0


METHOD = ("weights, gradients, optimiser state and EMA counted from the parameter shapes (fp32 master weights); "
          "activations traced: the stage's forward (+ backward) on shape-only tensors while every tensor the code "
          "creates is counted until freed (peak); sampling runs 2 x batch rows (guidance). Checked against "
          "measured CPU training steps within 25% (tests/test_memory.py).")


PROBE_DESCRIPTION = """\
The SDEdit noise-level probe of a model's base stage (imagen.probe): n clean held-out scenes of the model's world
(its prompt suite's first n captions) are noised to each log-SNR level, denoised by the base with the model's own
sampler from that level to clean data, and scored by the world's scorer at the base's resolution, per fact type.
A fact whose accuracy falls between two levels is decided by the base in that range of noise; "clean" is the
renders themselves (the scorer's own ceiling). Each scene gets one noise draw, the same at every level. About 16 s
of one core at the defaults on shapes-hard (its own sampler: DDIM 20, w = 1). A run folder has no sampler.toml, so
it samples at the global defaults (DDPM 50, w = 5): give --sampler ddim --steps 20 --guidance 1 to compare."""

PROBE_EPILOG = """\
examples:
  imagen-bench model probe shapes-hard                                  # levels -3,-1,0,1,3, 64 scenes
  imagen-bench model probe runs/shapes-hard --n 128 --levels -20,-3,0,3 --json
  imagen-bench model probe shapes-hard --guidance 3 --threads 1
  imagen-bench model probe tiny --n 8                                   # an untrained preset (plain shapes world)
"""


def _probe(args: argparse.Namespace) -> int:
    import time

    import torch

    from imagen.probe import format_table, load_base, parse_levels, probe
    from imagen.text import EmbeddingCache, load_text_encoder
    from imagen_bench import sampler_flags

    levels = parse_levels(",".join(args.levels))
    flags = sampler_flags(args)  # checked before anything is loaded
    if args.threads:
        torch.set_num_threads(args.threads)
    from imagen.pipeline import resolve_device

    dev = resolve_device(args.device)
    cascade, defaults, world = load_base(args.model, dev)
    encoder = EmbeddingCache(load_text_encoder(cascade.cfg.text, dev), args.text_cache)
    cpu0 = time.process_time()
    result = probe(cascade, encoder, args.world or world, levels, n=args.n, seed=args.seed,
                   sampler=defaults.given(**flags), batch_size=args.batch_size)
    result.update(model=args.model, cpu_seconds=time.process_time() - cpu0, threads=torch.get_num_threads())
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model}: base at {result['resolution']} px on {result['n']} held-out {result['world']} scenes "
          f"(seed {result['seed']}); denoised by {result['sampler']} on the {result['steps']}-step grid, "
          f"w = {result['guidance']:g}, {result['threshold']} thresholding")
    print(format_table(result))
    print(f"{result['seconds']:.1f} s wall, {result['cpu_seconds']:.1f} s CPU ({result['threads']} threads)")
    return 0


def register(subparsers) -> None:
    from imagen_bench import HelpFormatter

    group = subparsers.add_parser(
        "model", help="inspect model presets (stages, parameter counts, memory) and probe a trained base",
        description="Inspect Imagen cascade presets; probe a trained base stage.", formatter_class=HelpFormatter,
        epilog="examples:\n  imagen-bench model info --preset paper\n  imagen-bench model info --preset tiny --json\n"
               "  imagen-bench model plan --preset paper --stage base --batch 64 --gpu-memory 80GiB\n"
               "  imagen-bench model probe shapes-hard --n 64 --levels -3,-1,0,1,3\n",
    )
    group.set_defaults(func=lambda args: group.print_help() or 2)  # `model` alone: its help, exit 2
    sub = group.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    info = sub.add_parser(
        "info", formatter_class=HelpFormatter,
        help="each stage's resolution and parameter count",
        description="Print each stage's resolution and U-Net parameter count (text encoder not counted). "
                    "The model is built on the meta device: no weights are allocated, so even `paper` is instant.",
        epilog="examples:\n"
               "  imagen-bench model info --preset paper\n"
               "  imagen-bench model info --preset small --json\n"
               "  imagen-bench model info --preset tiny --json | python -c 'import json,sys; print(json.load(sys.stdin))'\n",
    )
    info.add_argument("--preset", required=True, metavar="NAME", help=f"one of: {', '.join(PRESETS)}")
    info.add_argument("--json", action="store_true",
                      help='print only {"preset", "text_encoder", "stages": [{"name", "resolution", "params"}]}')
    info.set_defaults(func=_info)
    pl = sub.add_parser(
        "plan", formatter_class=HelpFormatter, help="memory per device for training and sampling a stage",
        description="Parameters, gradients, optimiser state, EMA and activations per device for training and "
                    "sampling one stage (or every stage), and with --gpu-memory whether it fits and the largest "
                    "batch that does. Nothing is allocated: activations are traced on shape-only tensors.",
        epilog=PLAN_EPILOG)
    pl.add_argument("--preset", required=True, metavar="NAME", help=f"one of: {', '.join(PRESETS)}")
    pl.add_argument("--stage", help="the stage (default: every stage)")
    pl.add_argument("--batch", type=int, required=True, help="images per device (sampling: prompts per device)")
    pl.add_argument("--mode", choices=("train", "sample", "both"), default="both")
    pl.add_argument("--precision", choices=("bf16", "fp32", "fp16"), default="bf16")
    pl.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adamw")
    pl.add_argument("--gpus", type=int, default=1, help="ranks training together")
    pl.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp", help="with --gpus > 1")
    pl.add_argument("--grad-checkpointing", action="store_true")
    pl.add_argument("--crop", type=int, default=0, help="SR training on random crops of this size (paper: 256 for "
                                                       "the 1024 stage)")
    pl.add_argument("--gpu-memory", metavar="SIZE", help="memory of one device, e.g. 80GiB (H100), 141GiB (H200)")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=_plan)
    pr = sub.add_parser("probe", formatter_class=HelpFormatter, help="SDEdit noise-level probe of a trained base",
                        description=PROBE_DESCRIPTION, epilog=PROBE_EPILOG)
    pr.add_argument("model", help="a shipped model, a run folder with a trained base, or a preset (untrained)")
    pr.add_argument("--n", type=int, default=64, help="held-out scenes")
    # "-3,-1,0,1,3" reads as a value, not an option, as "-3" does (argparse's own test for negative numbers)
    pr._negative_number_matcher = re.compile(r"^-\d*\.?\d+(?:[eE][-+]?\d+)?(?:,[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)*$")
    pr.add_argument("--levels", nargs="+", default=["-3,-1,0,1,3"], metavar="LEVEL",
                    help="log-SNR levels, comma- or space-separated (-20: pure noise) (default: -3,-1,0,1,3)")
    pr.add_argument("--seed", type=int, default=0, help="held-out split seed (the world's prompt suite's)")
    pr.add_argument("--world", help="score on this world (default: the model's own, from its world.txt)")
    pr.add_argument("--guidance", type=float, nargs=1, metavar="W", help="the base's guidance weight (default: the "
                                                                          "model's own)")
    pr.add_argument("--sampler", help="the base's sampler (default: the model's own)")
    pr.add_argument("--steps", type=int, help="the sampler's grid, of which each level runs the part above it "
                                              "(default: the model's own)")
    pr.add_argument("--threshold", help="the base's thresholding (default: the model's own)")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    pr.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    pr.add_argument("--text-cache", help="embedding cache folder (default: $IMAGEN_BENCH_CACHE/text)")
    pr.add_argument("--json", action="store_true", help="print only the result as JSON: the settings, clean and "
                                                        "levels [{log_snr, steps, accuracy, count, overall_interval}]")
    pr.set_defaults(func=_probe)
