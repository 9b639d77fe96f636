"""`imagen-bench model ...`: look at a model's structure without allocating its weights."""

from __future__ import annotations

import argparse
import json

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


def register(subparsers) -> None:
    from bench.cli import HelpFormatter

    group = subparsers.add_parser(
        "model", help="inspect model presets (stages, resolutions, parameter counts)",
        description="Inspect Imagen cascade presets.", formatter_class=HelpFormatter,
        epilog="examples:\n  imagen-bench model info --preset paper\n  imagen-bench model info --preset tiny --json\n",
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
