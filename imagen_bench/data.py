"""`imagen-bench data shapes` (write a captioned shapes dataset) and `imagen-bench eval shapes` (caption alignment
of a model on held-out shapes captions, scored by imagen.shapes_scorer)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import uuid
from pathlib import Path

from imagen.errors import UserError
from imagen.worlds import WORLDS

CSV_NAME = "captions.csv"


# ----------------------------------------------------------------------------- data shapes


def write_shapes(out: Path, n: int, size: int, seed: int, split: str, overwrite: bool = False,
                 progress: bool = False) -> Path:
    """Render n items of ShapesWorld(seed, split) as PNGs + captions.csv into `out`, atomically: everything is
    written into a temp folder beside `out`, which is renamed to `out` only when complete."""
    from PIL import Image

    from imagen.shapes import FACT_COLUMNS, ShapesWorld, facts_to_row, render

    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if not 8 <= size <= 4096:
        raise UserError(f"--size must be between 8 and 4096 pixels, got {size}")
    world = ShapesWorld(seed, split)  # an unknown split is a UserError
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} already exists and is not empty; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        rows = []
        items = range(n)
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(items, desc="shapes", unit="img")
        width = max(6, len(str(n - 1)))
        for i in items:
            scene, text, facts = world.item(i)
            name = f"{i:0{width}d}.png"
            Image.fromarray(render(scene, size), mode="RGB").save(tmp / name)
            rows.append({"file": name, "caption": text, **facts_to_row(facts)})
        with open(tmp / CSV_NAME, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["file", "caption", *FACT_COLUMNS])
            writer.writeheader()
            writer.writerows(rows)
        if out.exists():  # --overwrite: move the old folder aside, then put the new one in place
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _data_shapes(args: argparse.Namespace) -> int:
    out = write_shapes(Path(args.out), args.n, args.size, args.seed, args.split, args.overwrite, progress=True)
    if args.json:
        print(json.dumps({"out": str(out), "n": args.n, "size": args.size, "seed": args.seed, "split": args.split,
                          "captions": str(out / CSV_NAME)}))
    else:
        print(f"wrote {args.n} images ({args.size}px, split {args.split}, seed {args.seed}) and {CSV_NAME} to {out}")
    return 0


# ----------------------------------------------------------------------------- eval shapes


def eval_spec(model: str, world: str, guidances: list[float], n: int, seed: int, steps: int | None,
              threshold: str | None, sampler: str | None, batch_size: int) -> str:
    """The grid spec of an `eval shapes` run: n held-out captions of the world, one image each at every guidance
    weight (each weight for every stage), the alignment metric; a setting that is None is the model's own."""
    from bench.spec import _toml_value

    axes = {"guidance": [float(g) for g in guidances], "steps": steps, "threshold": threshold, "sampler": sampler}
    lines = [f"name = {_toml_value(f'eval-{world}')}", f"model = {_toml_value(model)}",
             f"suites = {_toml_value([f'{world}:{n}'])}", f"seed = {int(seed)}", f"batch_size = {int(batch_size)}",
             "", "[axes]"]
    lines += [f"{k} = {_toml_value(v if isinstance(v, list) else [v])}" for k, v in axes.items() if v is not None]
    return "\n".join(lines + ["", "[metrics]", "alignment = true"]) + "\n"


def evaluate_shapes(pipeline, guidances: list[float], n: int, seed: int, steps: int | None, threshold: str | None,
                    sampler: str | None, batch_size: int, progress: bool = False, world: str = "shapes",
                    out=None, device: str = "cpu", precision: str = "fp32") -> list[dict]:
    """`eval shapes` as a grid study (the one flow: the same seeds as `grid run` of the same spec): n held-out captions
    of the world at each guidance weight, scored by the world's scorer, stored in the study folder `out` (default: one
    per spec and model under $IMAGEN_BENCH_CACHE/studies, so a rerun reuses every image and score). Returns
    [{"guidance", "n", "sampler", "accuracy", "by_category", "cell_id"}], one per weight."""
    import hashlib
    import os

    from bench import store
    from bench.generators import contract
    from bench.grid import parse_spec, run_grid
    from bench.metrics.alignment import ALIGN_OVERALL

    gen = contract(pipeline)
    if gen.sampler_defaults is None:
        raise UserError(f"{gen.model_id} is a precomputed image set; eval shapes samples held-out captions at "
                        f"several guidance weights, so it needs a model (use grid run with the shapes suite instead)")
    d = gen.sampler_defaults  # a setting not given is the model's own (None for a diffusers stage's own)
    text = eval_spec(gen.model_id, world, guidances, n, seed, d.steps if steps is None else steps,
                     d.threshold if threshold is None else threshold, d.sampler if sampler is None else sampler,
                     batch_size)
    spec = parse_spec(text, source="eval shapes")
    if out is None:  # one cached study per spec, model, precision and result schema
        root = Path(os.environ.get("IMAGEN_BENCH_CACHE") or Path.home() / ".cache" / "imagen-bench")
        key = hashlib.sha256(json.dumps([text, gen.checkpoint_hash, precision, store.SCHEMA_VERSION]).encode())
        out = root / "studies" / f"eval-{world}-{key.hexdigest()[:12]}"
    run_grid(spec, out, generator=gen, device=device, progress=progress, log=lambda *_: None)
    plan = json.loads(store.read_table(out, store.STUDY)[store.COL_PLAN].iloc[-1])
    metrics = store.read_table(out, store.METRICS)
    metrics = metrics.drop_duplicates([store.COL_CELL_ID, store.COL_METRIC, store.COL_CATEGORY], keep="last")
    results = []
    for cid, cell in plan.items():
        rows = metrics[metrics[store.COL_CELL_ID] == cid]
        overall = rows[rows[store.COL_CATEGORY].isna()]
        acc = {m[len("align_"):]: float(v) for m, v in zip(overall[store.COL_METRIC], overall[store.COL_VALUE])
               if m.startswith("align_") and m != ALIGN_OVERALL}
        total = overall[overall[store.COL_METRIC] == ALIGN_OVERALL]
        acc["overall"] = float(total[store.COL_VALUE].iloc[0])
        cats = rows[rows[store.COL_CATEGORY].notna() & (rows[store.COL_METRIC] == ALIGN_OVERALL)]
        used = {"sampler": cell.get(store.COL_SAMPLER), "steps": cell.get(store.COL_STEPS),
                "guidance": [float(x) for x in str(cell.get(store.COL_GUIDANCE_STAGES)).split(",")],
                "threshold": cell.get(store.COL_THRESHOLD),
                "aug_level": [float(x) for x in str(cell.get(store.COL_AUG_LEVEL)).split(",")]}
        results.append({"guidance": float(cell.get(store.COL_GUIDANCE)), "n": int(total[store.COL_N].iloc[0]),
                        "sampler": used, "accuracy": acc, "cell_id": cid, "study": str(out),
                        "by_category": {c: {"overall": float(v)} for c, v in zip(cats[store.COL_CATEGORY],
                                                                                 cats[store.COL_VALUE])}})
    return sorted(results, key=lambda r: r["guidance"])


def _table(results: list[dict]) -> str:
    from bench.metrics.alignment import FACT_TYPES

    cols = [t for t in (*FACT_TYPES, "overall") if any(t in r["accuracy"] for r in results)]
    lines = [f"{'guidance':>8}  {'n':>5}  " + "  ".join(f"{c:>8}" for c in cols)]
    for r in results:
        acc = r["accuracy"]
        lines.append(f"{r['guidance']:>8g}  {r['n']:>5d}  "
                     + "  ".join(f"{acc[c]:>8.3f}" if c in acc else f"{'-':>8}" for c in cols))
    lines.append("")
    lines.append("overall accuracy by category:")
    cats = sorted({c for r in results for c in r["by_category"]})
    lines.append(f"{'guidance':>8}  " + "  ".join(f"{c:>12}" for c in cats))
    for r in results:
        lines.append(f"{r['guidance']:>8g}  " + "  ".join(
            f"{r['by_category'][c]['overall']:>12.3f}" if c in r["by_category"] else f"{'-':>12}" for c in cats))
    return "\n".join(lines)


def _weights(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:g}" for v in values)


def _eval_shapes(args: argparse.Namespace) -> int:
    from bench.generators import load_generator
    from imagen.config import to_dict
    from imagen_bench import sampler_flags

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    flags = sampler_flags(args)  # --guidance here is the list of weights to sweep, each for every stage
    from imagen.checkpoint import model_world_of

    world = args.world or model_world_of(args.model)
    pipeline = load_generator(args.model, device=args.device, precision=args.precision)
    results = evaluate_shapes(pipeline, args.guidance, args.n, args.seed, flags["steps"], flags["threshold"],
                              flags["sampler"], args.batch_size, progress=not args.json, world=world, out=args.out,
                              device=args.device, precision=args.precision)
    report = {"model": args.model, "checkpoint_hash": pipeline.checkpoint_hash, "seed": args.seed, "world": world,
              "study": results[0]["study"] if results else None,
              "precision": args.precision,
              "defaults": to_dict(pipeline.sampler_defaults), "results": results}
    if args.json:
        print(json.dumps(report))
    else:
        used = results[0]["sampler"]
        n = results[0]["n"] if results else 0
        drawn = "" if n == args.n else f" ({args.n} drawn; a caption drawn twice is one prompt)"
        print(f"model {args.model} ({pipeline.checkpoint_hash[:12]}), {n} held-out {world} captions{drawn}, "
              f"seed {args.seed}, {used['sampler']} {used['steps']} steps, threshold {used['threshold']} (model's "
              f"default guidance: {_weights(pipeline.sampler_defaults.guidance)}); fraction of images passing each "
              f"fact (overall: every fact of the caption)")
        print(_table(results))
        print(f"\nthe study: {results[0]['study']} (imagen-bench report / grid status read it)")
    return 0


# ----------------------------------------------------------------------------- registration


def register(subparsers) -> None:
    from imagen_bench import HelpFormatter

    # data ...
    data = subparsers.add_parser(
        "data", help="write datasets (the shapes world)", formatter_class=HelpFormatter,
        description="Write datasets to disk.",
        epilog="examples:\n  imagen-bench data shapes --n 1000 --size 64 --seed 0 --split train --out data/shapes64\n",
    )
    data.set_defaults(func=lambda args: data.print_help() or 2)
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    shapes = dsub.add_parser(
        "shapes", formatter_class=HelpFormatter, help="render captioned shapes images (no download)",
        description="Render n captioned images of the shapes world (coloured circles, squares and triangles on white, "
                    "captions in the categories Colors, Counting, Positional, Binding, Misspellings) as PNGs plus "
                    f"{CSV_NAME} (columns file, caption, category, color_1, shape_1, count_1, color_2, shape_2, "
                    "count_2, relation). Item i depends only on (seed, split, i). The folder appears only when "
                    "complete.",
        epilog="examples:\n"
               "  imagen-bench data shapes --n 1000 --size 64 --seed 0 --split train --out data/shapes64\n"
               "  imagen-bench data shapes --n 200 --size 256 --split heldout --out data/shapes-heldout\n"
               "  imagen-bench data shapes --n 10 --size 32 --out /tmp/s --overwrite --json\n",
    )
    shapes.add_argument("--n", type=int, default=1000, help="number of images")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (8 to 4096)")
    shapes.add_argument("--seed", type=int, default=0, help="world seed")
    shapes.add_argument("--split", default="train", choices=("train", "heldout"),
                        help="train and heldout draw from disjoint seed streams")
    shapes.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    shapes.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    shapes.add_argument("--json", action="store_true", help="print only a JSON summary on stdout")
    shapes.set_defaults(func=_data_shapes)

    # eval ...
    ev = subparsers.add_parser(
        "eval", help="evaluate a model (caption alignment on the shapes world)", formatter_class=HelpFormatter,
        description="Evaluate a model.",
        epilog="examples:\n  imagen-bench eval shapes --model shapes --guidance 1 3 5 --n 64 --json\n",
    )
    ev.set_defaults(func=lambda args: ev.print_help() or 2)
    esub = ev.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    es = esub.add_parser(
        "shapes", formatter_class=HelpFormatter, help="caption alignment on held-out shapes captions",
        description="Sample n held-out captions of the model's world (shapes: balanced over Colors, Counting, "
                    "Positional, Binding, Misspellings; shapes-hard: Attributes, Counting, Positional, Inside, "
                    "Largest) at each guidance weight, as a grid study (the seeds of every study: spec seed, "
                    "prompt, sample; the same prompts and seeds at every weight; --out names the folder), "
                    "and score each image against its caption's facts with the world's scorer. "
                    "Accuracy per fact type = fraction of the images whose caption tests it that pass it; overall = "
                    "fraction of images passing every fact their caption tests. A fact type the sample did not "
                    "test is absent, not zero.",
        epilog="examples:\n"
               "  imagen-bench eval shapes --model shapes --guidance 1 3 5 --n 64 --json\n"
               "  imagen-bench eval shapes --model shapes --guidance 1 5 --n 200 --steps 50 --threshold static\n"
               "  imagen-bench eval shapes --model shapes-hard --guidance 1 3 5 --n 100   # its own (hard) world\n"
               "  imagen-bench eval shapes --model shapes-hard --threshold static,dynamic:0.99   # per stage\n"
               "  imagen-bench eval shapes --model runs/shapes/ckpt --guidance 3 --n 32 --device cuda --batch-size 32\n"
               "  imagen-bench eval shapes --model tiny --guidance 1 --n 5 --steps 2 --json   # untrained preset\n",
    )
    es.add_argument("--model", default="shapes",
                    help="shipped model name, checkpoint folder, preset (untrained), or diffusers:<hub id or folder>")
    es.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0], metavar="W",
                    help="classifier-free guidance weights (1 = no guidance), each applied to every stage; the "
                         "model's own weight (its sampler.toml) is shown in the output")
    es.add_argument("--n", type=int, default=64, help="held-out captions per guidance weight")
    es.add_argument("--steps", type=int, default=None,
                    help="sampling steps (default: the model's sampler.toml, else the SamplerConfig default)")
    es.add_argument("--threshold", default=None, metavar="T",
                    help="none | static | dynamic:P | dynamic:P:M, or one per stage comma-separated "
                         "(static,dynamic:0.99) (default: the model's sampler.toml, else the SamplerConfig default)")
    es.add_argument("--sampler", default=None,
                    help="sampler name, or one per stage comma-separated (ddim,ddpm) (default: the model's "
                         "sampler.toml, else the SamplerConfig default)")
    es.add_argument("--world", default=None, choices=WORLDS,
                    help="which world's held-out captions and scorer (default: the one the model was trained on, "
                         "its world.txt; shapes for models without one)")
    es.add_argument("--seed", type=int, default=0,
                    help="picks the held-out captions and, as in any study, the image seeds (spec seed, prompt, "
                         "sample)")
    es.add_argument("--out", default=None, metavar="DIR",
                    help="the study folder (default: one per spec and model under $IMAGEN_BENCH_CACHE/studies, so a "
                         "rerun reuses its images and scores)")
    es.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    es.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    es.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                    help="sampling precision of our models (see `imagen-bench sample --help`)")
    es.add_argument("--json", action="store_true",
                    help='print only {"model", "checkpoint_hash", "seed", "defaults" (the model\'s sampler '
                         'settings), "results": [{"guidance", "n", "sampler", "accuracy", "by_category"}]}')
    es.set_defaults(func=_eval_shapes)
