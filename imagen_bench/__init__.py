"""The `imagen-bench` command: one entry point, one module per group of subcommands.

Each module in this package defines `register(subparsers)`, which adds its subcommands and sets `func` on each;
`func(args) -> int` does the work. A `UserError` anywhere becomes one line on stderr and exit status 2.
This package is the top floor: nothing imports it (`python -m imagen_bench` and the `imagen-bench` script run it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from imagen.errors import UserError

# Subcommand groups, in the order `--help` lists them. A module that fails to import (a missing optional
# dependency) only disables its own commands.
GROUPS = ("model", "sample", "data", "train", "metrics", "grid", "drawbench", "findings")

EPILOG = """examples:
  imagen-bench quickstart                              # the main job: a grid on the shipped model, with a report
  imagen-bench model info --preset paper               # stage resolutions and parameter counts
  imagen-bench findings                                # the paper's findings on our own model (docs/findings.md)
  imagen-bench sample --preset tiny --prompt "a red circle" --guidance 3 --threshold dynamic:0.995 --out a.png
  imagen-bench <command> --help                        # every command has its own examples
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps hand-written examples as they are and shows defaults (unless the help already says what it is, or
    there is none to show)."""

    def _get_help_string(self, action):
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def sampler_flags(args: argparse.Namespace) -> dict:
    """The sampling flags a command was given (--sampler, --steps, --guidance, --threshold, --aug-level, where it
    has them), checked before any model is loaded (one-line UserError) and in canonical form. A flag left out is
    None, so `SamplerConfig.given(**flags)` puts the given ones over a model's own settings."""
    import math

    from imagen.config import normalize_threshold
    from imagen.errors import UserError
    from imagen.sampling import check_sampler

    flags = {k: getattr(args, k, None) for k in ("sampler", "steps", "guidance", "threshold", "aug_level")}
    if flags["threshold"] is not None:  # 'static' or one per stage: 'static,dynamic:0.99'
        flags["threshold"] = normalize_threshold(flags["threshold"], "--threshold")
    if flags["sampler"] is not None:
        # ours are checked here; a diffusers sampler (euler, unipc) or scheduler class name by the generator
        from bench.generators.schedulers import NAMES

        ours = [p for p in flags["sampler"].split(",") if not p.strip().endswith("Scheduler")
                and p.strip() not in NAMES]
        if ours:
            check_sampler(",".join(ours), "--sampler")
        from imagen.config import normalize_sampler

        flags["sampler"] = normalize_sampler(flags["sampler"], "--sampler")
    if flags["steps"] is not None and flags["steps"] < 1:
        raise UserError(f"--steps must be at least 1, got {flags['steps']}")
    if flags["guidance"] is not None:
        if not all(math.isfinite(g) and g >= 0 for g in flags["guidance"]):
            raise UserError(f"--guidance weights must be finite and >= 0 (1 = no guidance), got {flags['guidance']}")
        flags["guidance"] = tuple(flags["guidance"])
    if flags["aug_level"] is not None:
        if not all(0.0 <= a <= 1.0 for a in flags["aug_level"]):
            raise UserError(f"--aug-level values must be in [0, 1], got {flags['aug_level']}")
        flags["aug_level"] = tuple(flags["aug_level"])
    return flags


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """The shared --data-dir option (DrawBench prompts, COCO captions); defaults to $IMAGEN_BENCH_DATA."""
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("IMAGEN_BENCH_DATA"),
        help="folder holding drawbench/prompts.csv and coco/ (default: $IMAGEN_BENCH_DATA)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagen-bench",
        description="Imagen text-to-image diffusion: train, sample, and benchmark (FID, CLIP score, DrawBench).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        try:
            module = importlib.import_module(f"imagen_bench.{group}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("imagen_bench."):
                continue  # group not written yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"imagen-bench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `imagen-bench ... --json | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk, a quota, a read-only file system under any command: one line, exit 2
        from bench.store import write_failure

        failure = write_failure(exc, None)
        if failure is None:
            raise
        print(f"imagen-bench: error: {failure}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imagen-bench: interrupted; completed work is kept, run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
