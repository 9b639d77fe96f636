"""Prompt suites: DrawBench, COCO captions (zero-shot protocol), the shapes world's held-out captions, any CSV.

A suite is named by a string: `drawbench`, `coco` (or `coco=<captions file>`), `shapes`, `shapes-hard`
(imagen.worlds), or the path of a prompt file: CSV or TSV (by the extension, else sniffed from the header line), a
`prompt` column and an optional `category`, header names matched without regard to case (`Prompt`, `Category`); any
other columns are kept with each prompt as metadata (JSON) and land in its sample rows. `NAME:N` takes a seeded
subset of N prompts (stratified over categories where there are any, so `drawbench:22` holds two prompts of each of
its 11 categories). Every prompt gets a stable id: the suite name and a hash of its text, the same in every run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench import published as published_suites
from bench.ids import prompt_id
from imagen.errors import UserError

BUILTIN = ("drawbench", "coco", "shapes", "shapes-hard")
PUBLISHED = published_suites.SUITES  # GenEval, T2I-CompBench (and each category), PartiPrompts, DPG-Bench
WORLD_SUITES = ("shapes", "shapes-hard")  # the suites whose prompts carry facts, and whose scenes are the reference
DRAWBENCH_FILE = Path("drawbench") / "prompts.csv"
COCO_FILE = Path("coco") / "val2014_captions_5k.csv"


@dataclass(frozen=True)
class Prompt:
    """One prompt of a suite; `facts` (JSON text) is what the shapes scorer checks, empty elsewhere."""

    suite: str
    prompt_id: str
    text: str
    category: str | None = None
    facts: str | None = None
    meta: str | None = None  # JSON {column: value} of a prompt file's other columns


def parse_name(name: str) -> tuple[str, int | None]:
    """'drawbench:22' -> ('drawbench', 22); 'my.csv' -> ('my.csv', None)."""
    base, sep, count = name.rpartition(":")
    if not sep or not count.strip().lstrip("-").isdigit():
        return name, None
    n = int(count)
    if n <= 0:
        raise UserError(f"suite {name!r}: the subset size after ':' must be a positive integer")
    return base, n


def suite_label(base: str) -> str:
    """The name stored with each prompt: the builtin name, or a CSV file's stem."""
    return base if base in BUILTIN else Path(base).stem


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    path = data_dir if data_dir is not None else os.environ.get("IMAGEN_BENCH_DATA")
    return Path(path) if path else None


# ----------------------------------------------------------------------------- readers


def _dialect(path: Path, first_line: str) -> dict:
    """csv.reader options: TSV (.tsv/.tab, or a tab in the header) has no quoting (PartiPrompts has prompts that
    start with a quote character); CSV quotes as usual; otherwise the delimiter is sniffed from the header line,
    and a header without any (one column) reads each line whole."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab") or (suffix != ".csv" and "\t" in first_line):
        return {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    if suffix == ".csv":
        return {"delimiter": ","}
    if not any(c in first_line for c in ",;|"):
        return {"delimiter": "\x1f", "quoting": csv.QUOTE_NONE}  # one column: a unit separator never in text
    try:
        return {"delimiter": csv.Sniffer().sniff(first_line, delimiters=",;|").delimiter}
    except csv.Error:
        return {"delimiter": ","}


def read_prompt_csv(path: Path, suite: str, *, text_column: str = "prompt") -> list[Prompt]:
    """A CSV/TSV with a `prompt` column (and an optional `category`; other columns kept as metadata); header names
    matched without regard to case; errors name the file and line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"prompt file {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read prompt file {path}: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; it needs a header line with a '{text_column}' column")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, **_dialect(path, text.splitlines()[0]))
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as exc:
        raise UserError(f"{path}:1: malformed CSV header ({exc})") from None
    lower = [h.lower() for h in header]
    if text_column not in lower:
        raise UserError(f"{path}:1: no '{text_column}' column in the header {header}; "
                        f"name the prompt column '{text_column}' (and optionally add 'category')")
    if lower.count(text_column) > 1 or lower.count("category") > 1:
        raise UserError(f"{path}:1: the header {header} names the prompt or category column twice")
    i_text = lower.index(text_column)
    i_cat = lower.index("category") if "category" in lower else None
    extra = [(i, h) for i, h in enumerate(header) if i not in (i_text, i_cat) and h]
    prompts: list[Prompt] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue  # blank lines are allowed
            if len(row) != len(header):
                raise UserError(f"{path}:{line}: expected {len(header)} fields ({', '.join(header)}), got "
                                f"{len(row)}; quote prompts that contain commas")
            prompt = row[i_text].strip()
            if not prompt:
                raise UserError(f"{path}:{line}: empty prompt")
            category = (row[i_cat].strip() or None) if i_cat is not None else None
            meta = json.dumps({h: row[i] for i, h in extra}, ensure_ascii=False) if extra else None
            prompts.append(Prompt(suite, prompt_id(suite, prompt), prompt, category, meta=meta))
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    if not prompts:
        raise UserError(f"{path}: no prompts after the header line")
    return prompts


def _need_data(data_dir: Path | None, rel: Path, suite: str) -> Path:
    if data_dir is None:
        raise UserError(f"suite {suite!r} needs the data folder: pass --data-dir DIR or set IMAGEN_BENCH_DATA "
                        f"to a folder holding {rel}")
    path = data_dir / rel
    if not path.is_file():
        raise UserError(f"suite {suite!r}: {path} not found; point --data-dir / IMAGEN_BENCH_DATA at a folder "
                        f"holding {rel}")
    return path


def drawbench(data_dir: Path | None) -> list[Prompt]:
    """The 200 DrawBench prompts in 11 categories (paper section 3.4)."""
    return read_prompt_csv(_need_data(data_dir, DRAWBENCH_FILE, "drawbench"), "drawbench")


def coco(data_dir: Path | None, n: int | None, seed: int, captions_file: str | None = None) -> list[Prompt]:
    """MS-COCO validation captions (zero-shot protocol, paper 4.1), drawn by bench.metrics.coco's protocol: from the
    data folder's 5k CSV (`coco:N`), or from a captions file (`coco=captions_val2014.json:N`); each prompt's meta
    holds its caption id, image id and file name."""
    path = Path(captions_file).expanduser() if captions_file else _need_data(data_dir, COCO_FILE, "coco")
    from bench.metrics import coco as coco_metrics  # the protocol's caption sampling lives with the protocol

    captions = coco_metrics.read_captions(path)
    if n is not None:
        captions = coco_metrics.sample_captions(captions, n, seed)  # one caption per distinct image
    # keyed by caption id, not text: the protocol draws N images, and two of them may share a caption's words
    return [Prompt("coco", prompt_id("coco", f"caption {c.caption_id}"), c.caption, None,
                   meta=json.dumps({"caption_id": c.caption_id, "image_id": c.image_id, "file_name": c.file_name}))
            for c in captions]


def published(data_dir: Path | None, name: str) -> list[Prompt]:
    """A published benchmark's prompts (bench.published: GenEval, T2I-CompBench, PartiPrompts, DPG-Bench) with its
    skill category and metadata; T2I-CompBench's prompts are one suite, `t2i-compbench`, whichever category asked."""
    P = published_suites
    out: list[Prompt] = []
    for rel, category in P.files(name):
        path = _need_data(data_dir, rel, name)
        if name == "geneval":
            out += [Prompt("geneval", prompt_id("geneval", t), t, tag, meta=meta) for t, tag, meta in P.geneval(path)]
        elif category is not None:
            meta = json.dumps({"category": category})
            out += [Prompt("t2i-compbench", prompt_id("t2i-compbench", f"{category}/{t}"), t, category, meta=meta)
                    for t in P.compbench(path)]
        else:  # PartiPrompts (Category; Challenge and Note kept) and DPG-Bench (item_id kept)
            out += read_prompt_csv(path, name)
    return out


def shapes(n: int | None, seed: int, world_name: str = "shapes") -> list[Prompt]:
    """Held-out captions of a shapes world (`shapes` or `shapes-hard`), with the facts its scorer checks."""
    from imagen.worlds import get_world

    world = get_world(world_name)
    prompts = []
    for item in world.held_out_captions(n or 64, seed):
        text, facts, category = _caption_parts(item)
        if dataclasses.is_dataclass(facts):
            facts = world.facts_to_row(facts)
        prompts.append(Prompt(world_name, prompt_id(world_name, text), text, category,
                              json.dumps(facts, sort_keys=True, default=str)))
    return _dedupe(prompts)


def _caption_parts(item) -> tuple[str, object, str | None]:
    if isinstance(item, dict):
        return item["caption"], item.get("facts"), item.get("category")
    text, facts, category = item
    return text, facts, category


def _dedupe(prompts: list[Prompt]) -> list[Prompt]:
    seen, out = set(), []
    for p in prompts:
        if p.prompt_id not in seen:
            seen.add(p.prompt_id)
            out.append(p)
    return out


# ----------------------------------------------------------------------------- subsets and the entry point


def subset(prompts: list[Prompt], n: int, seed: int, name: str) -> list[Prompt]:
    """A seeded subset of n prompts, round-robin over categories (each category shuffled), in file order."""
    if n > len(prompts):
        raise UserError(f"suite {name!r}: asks for {n} prompts but the suite has only {len(prompts)}")
    rng = random.Random(f"{seed}/{name}")
    by_cat: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_cat.setdefault(p.category or "", []).append(i)
    queues = []
    for cat in sorted(by_cat):
        idx = by_cat[cat][:]
        rng.shuffle(idx)
        queues.append(idx)
    chosen: list[int] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop())
    return [prompts[i] for i in sorted(chosen)]


def load_suite(name: str, data_dir: str | os.PathLike | None = None, seed: int = 0,
               shapes_fn: Callable[[int | None, int], list[Prompt]] | None = None) -> list[Prompt]:
    """The prompts of one suite name ('drawbench:22', 'shapes:64', 'coco:100', 'path/to/prompts.csv:10')."""
    base, n = parse_name(name)
    root = resolve_data_dir(data_dir)
    if base == "drawbench":
        prompts = _dedupe(drawbench(root))
    elif base == "coco" or base.startswith("coco="):  # the protocol's draw of n: exactly n prompts, one per image
        return coco(root, n, seed, base[len("coco="):] if base.startswith("coco=") else None)
    elif base in PUBLISHED or base.startswith("t2i-compbench-"):  # an unknown category: its own line
        prompts = _dedupe(published(root, base))
    elif base == "shapes":
        return (shapes_fn or shapes)(n, seed)  # the world draws exactly n captions from the seed
    elif base == "shapes-hard":
        return shapes(n, seed, "shapes-hard")
    elif base.lower().endswith((".csv", ".tsv", ".tab")) or Path(base).is_file():
        prompts = _dedupe(read_prompt_csv(Path(base), suite_label(base)))
    else:
        raise UserError(f"unknown suite {base!r}: use drawbench, coco, shapes, shapes-hard, geneval, "
                        f"t2i-compbench[-CATEGORY], partiprompts, dpg-bench, or the path of a CSV/TSV file "
                        f"with a 'prompt' column (add ':N' for a seeded subset)")
    return prompts if n is None else subset(prompts, n, seed, base)


def world_suite(suites) -> tuple[str, int] | None:
    """(name, n) of the one shapes-world suite among suite names (the FID reference "shapes" renders its scenes);
    None without one; two worlds in one study is a UserError (their scenes are not one reference set)."""
    found = [(parse_name(s)[0], parse_name(s)[1] or 64) for s in suites if parse_name(s)[0] in WORLD_SUITES]
    if len({name for name, _ in found}) > 1:
        raise UserError(f"suites {sorted({name for name, _ in found})}: a study takes one shapes world (the reference "
                        f"\"shapes\" renders its scenes); run the worlds as two studies")
    return found[0] if found else None


def load_suites(names: list[str] | tuple[str, ...], data_dir=None, seed: int = 0, shapes_fn=None) -> list[Prompt]:
    """All prompts of several suites, each prompt once (by prompt id)."""
    out: list[Prompt] = []
    for name in names:
        out.extend(load_suite(name, data_dir, seed, shapes_fn))
    return _dedupe(out)


__all__ = ["Prompt", "prompt_id", "parse_name", "load_suite", "load_suites", "read_prompt_csv", "subset",
           "BUILTIN", "WORLD_SUITES", "world_suite"]
