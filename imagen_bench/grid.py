"""Commands: `grid run`, `grid status`, `report`, `table`, `quickstart`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from imagen.errors import UserError

QUICKSTART_SPEC = Path(__file__).resolve().parents[1] / "bench" / "specs" / "quickstart.toml"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def register(subparsers) -> None:
    from imagen_bench import HelpFormatter, add_data_dir

    grid = subparsers.add_parser(
        "grid", help="run a benchmark grid (guidance x thresholding x ...) and see its progress",
        description="Benchmark grids: every cell of a TOML spec's axes, every prompt of its suites.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  imagen-bench grid run bench/specs/quickstart.toml --out runs/qs\n"
               "  imagen-bench grid status runs/qs\n",
    )
    gsub = grid.add_subparsers(dest="grid_command", metavar="COMMAND")

    run = gsub.add_parser(
        "run", help="generate every image of a grid spec (resumable, shardable), then its metrics",
        description="Expand the spec's axes into cells, generate every (cell, prompt, sample) not stored yet, "
                    "then compute the spec's metrics per cell. Kill it at any time and run the same command again "
                    "to resume; completed work is never redone.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  imagen-bench grid run bench/specs/quickstart.toml --out runs/qs\n"
               "  imagen-bench grid run my.toml --out runs/a --data-dir ../shared/data\n"
               "  imagen-bench grid run my.toml --out runs/a --shard 0/2 &   # two processes share the work\n"
               "  imagen-bench grid run my.toml --out runs/a --shard 1/2\n"
               "  torchrun --nproc-per-node 4 -m imagen_bench grid run my.toml --out runs/a --device cuda"
               "   # cuda:LOCAL_RANK\n"
               "  imagen-bench grid run if.toml --out runs/if --model 'diffusers:DeepFloyd/IF-I-XL-v1.0+"
               "DeepFloyd/IF-II-L-v1.0?dtype=float16' --device cuda\n"
               "  imagen-bench grid run no-axes.toml --out runs/api --model images:api_images.csv   # made elsewhere; "
               "a spec without [axes]\n",
    )
    run.add_argument("spec", help="grid spec TOML file")
    run.add_argument("--out", required=True, help="study folder (created; reused to resume)")
    run.add_argument("--shard", default=None, help="I/N: this process's share of the work items "
                     "(default: torchrun's RANK/WORLD_SIZE, else all)")
    run.add_argument("--model", default=None,
                     help="override the spec's model: a shipped name, checkpoint folder or preset, "
                          "diffusers:<hub id or folder>[+stage II[+stage III]][?dtype=float16&safety_checker=off], or "
                          "images:<folder or CSV>; the axes the spec leaves out are that model's own settings")
    run.add_argument("--extend", action="store_true",
                     help="add this spec to a study made with another seed, prompt set or model (refused otherwise)")
    run.add_argument("--wait", action="store_true",
                     help="when another process is writing this study and shard, wait for it to finish instead of "
                          "stopping with its pid and host (a killed writer's lock is taken over either way)")
    run.add_argument("--device", default="cpu",
                     help="torch device for generation; under torchrun/accelerate, cuda means cuda:LOCAL_RANK")
    run.add_argument("--no-metrics", action="store_true", help="only generate images")
    run.add_argument("--json", action="store_true", help="print a JSON summary only")
    add_data_dir(run)
    run.set_defaults(func=cmd_run)

    st = gsub.add_parser(
        "status", help="what a study has done: images per cell against the plan, metric rows",
        description="Print, per cell, how many images are stored against how many the grid plans.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  imagen-bench grid status runs/qs\n  imagen-bench grid status runs/qs --json\n",
    )
    st.add_argument("study", help="study folder")
    st.add_argument("--json", action="store_true", help="print JSON only")
    st.set_defaults(func=cmd_status)
    grid.set_defaults(func=lambda args: (grid.print_help(), 0)[1])

    rep = subparsers.add_parser(
        "report", help="summary tables, Pareto plot, category bars, contact sheets and index.html of a study",
        description="Build STUDY/report/: summary.csv, summary.parquet, pareto.png (CLIP score against FID "
                    "per thresholding, as the paper's Figure A.11), categories.png, contact sheets, index.html.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  imagen-bench report runs/qs\n  imagen-bench report runs/qs --out /tmp/qs-report\n",
    )
    rep.add_argument("study", help="study folder")
    rep.add_argument("--out", default=None, help="report folder (default: STUDY/report)")
    rep.add_argument("--json", action="store_true", help="print JSON only")
    rep.set_defaults(func=cmd_report)

    table = subparsers.add_parser(
        "table", help="the paper's table: a row per model or cell, a column per score, with 95% intervals",
        description="One row per cell of the given studies, one column per stored score (FID, CLIP score, "
                    "alignment, GenEval overall and its tags, ...), with 95% intervals clustered by prompt, and a "
                    "footnote of the protocol: images per prompt (against each published suite's), the seed, the "
                    "judges' weights and the FID protocol.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  imagen-bench table runs/sd35 runs/flux --format md\n"
               "  imagen-bench table runs/qs --format latex > table.tex\n")
    table.add_argument("study", nargs="+", help="study folders (written by grid run, coco, eval shapes, findings)")
    table.add_argument("--format", default="md", choices=("md", "csv", "latex"), help="Markdown, CSV or LaTeX")
    table.set_defaults(func=cmd_table)

    qs = subparsers.add_parser(
        "quickstart", help="the main job: a guidance x thresholding grid on the shipped model, with a report",
        description="Run bench/specs/quickstart.toml (5 guidance weights x none/static/dynamic thresholding, "
                    "FID and alignment on 30 held-out captions of the hard shapes world) on the shipped shapes-hard2 "
                    "model, or on the untrained `tiny` preset when no trained model is installed, then write the "
                    "report with the paper's Figure A.11. Resumable: run it again to finish.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  imagen-bench quickstart\n  imagen-bench quickstart --out runs/quickstart\n"
               "  imagen-bench quickstart --prompts 4 --steps 4 --out /tmp/qs   # a smaller, faster grid\n",
    )
    qs.add_argument("--out", default="imagen-bench-quickstart", help="study folder")
    qs.add_argument("--model", default=None,
                    help="model to benchmark (default: shapes-hard2 if installed, else tiny); an axis the spec leaves "
                         "out comes from its sampler.toml")
    qs.add_argument("--prompts", type=int, default=None, help="prompts per suite (smaller = faster)")
    qs.add_argument("--steps", type=int, default=None, help="sampling steps (smaller = faster)")
    qs.add_argument("--device", default="cpu", help="torch device for generation")
    qs.add_argument("--json", action="store_true", help="print a JSON summary only")
    add_data_dir(qs)
    qs.set_defaults(func=cmd_quickstart)


def _progress(args) -> bool:
    return not args.json


def cmd_run(args) -> int:
    from bench.grid import load_spec, parse_shard, run_grid

    spec = load_spec(args.spec, model=args.model or None)  # axes it leaves out: that model's sampler settings
    shard = parse_shard(args.shard)
    summary = run_grid(spec, args.out, shard=shard, data_dir=args.data_dir, device=args.device,
                       metrics=not args.no_metrics, extend=args.extend, progress=_progress(args), log=_log,
                       wait=args.wait)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['generated']} images generated, {summary['metric_rows']} metric rows; "
              f"grid {'complete' if summary['complete'] else 'not complete yet'}. "
              f"Next: imagen-bench report {args.out}")
    return 0


def cmd_status(args) -> int:
    from bench.grid import format_status, status

    st = status(args.study)
    print(json.dumps(st) if args.json else format_status(st))
    return 0


def cmd_table(args) -> int:
    from reports.table import render

    sys.stdout.write(render(args.study, args.format))
    return 0


def cmd_report(args) -> int:
    from reports.build import build_report

    index = build_report(args.study, args.out)
    print(json.dumps({"report": str(index)}) if args.json else f"report: {index}")
    return 0


QUICKSTART_MODEL = "shapes-hard2"


def quickstart_model(requested: str | None) -> tuple[str, str | None]:
    """(model, note): the shipped shapes-hard2 model when installed, else the untrained tiny preset with a note."""
    if requested:
        return requested, None
    weights = Path(__file__).resolve().parents[1] / "imagen" / "weights" / QUICKSTART_MODEL
    if (weights / "config.json").is_file():
        return QUICKSTART_MODEL, None
    return "tiny", (f"note: the trained {QUICKSTART_MODEL} model is not installed (imagen/weights/{QUICKSTART_MODEL})"
                    "; benchmarking the UNTRAINED `tiny` preset instead, so its images are noise and its numbers "
                    "are meaningless")


def cmd_quickstart(args) -> int:
    import dataclasses

    from bench.grid import load_spec, run_grid
    from bench.suites import parse_name
    from reports.build import build_report

    t0 = time.perf_counter()
    model, note = quickstart_model(args.model)
    spec = load_spec(QUICKSTART_SPEC, model=model)
    if args.prompts is not None:
        if args.prompts < 2:
            raise UserError("--prompts must be at least 2 (FID needs two images per cell)")
        spec = dataclasses.replace(spec, suites=tuple(f"{parse_name(s)[0]}:{args.prompts}" for s in spec.suites))
    if args.steps is not None:
        if args.steps < 1:
            raise UserError("--steps must be a positive integer")
        spec = dataclasses.replace(spec, steps=(args.steps,))
    if note:
        _log(note)
    summary = run_grid(spec, args.out, data_dir=args.data_dir, device=args.device, progress=_progress(args),
                       log=_log)
    index = build_report(args.out)
    summary.update(report=str(index), model=model, note=note, seconds=round(time.perf_counter() - t0, 1))
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"\nquickstart done in {summary['seconds']:.0f} s: {summary['images']} images in {summary['cells']} cells "
          f"of model {model!r}.")
    if note:
        print(note)
    print(f"open the report:   {index}\n"
          f"  (file://{Path(index).resolve()})\n"
          f"summary table:     {Path(index).parent / 'summary.csv'}\n"
          f"progress/resume:   imagen-bench grid status {args.out}\n"
          f"rebuild report:    imagen-bench report {args.out}")
    return 0
