"""The published prompt suites of today's text-to-image benchmarks, read from their authors' files in the data folder.

  geneval                  GenEval (Ghosh et al. 2023): 553 prompts in 6 tags; each prompt's `include` / `exclude`
                           (objects, counts, colours, positions) is its metadata, its tag its category
  t2i-compbench            T2I-CompBench (Huang et al. 2023): the 8 categories' validation prompts (300 each);
  t2i-compbench-<category> one category: color, shape, texture, spatial, 3d_spatial, non_spatial, numeracy, complex
  partiprompts             PartiPrompts (Yu et al. 2022): 1,632 prompts; Category is the category, Challenge and Note
                           the metadata
  dpg-bench                DPG-Bench (Hu et al. 2024): 1,065 dense prompts; its item id is the metadata

Each protocol generates a fixed number of images per prompt (PROTOCOL_IMAGES); a study that uses another number is
not the published protocol, and its report says so. Prompt ids are stable: the suite and a hash of the prompt (for
T2I-CompBench also its category, since one text may stand in two categories).
"""

from __future__ import annotations

import json
from pathlib import Path

from imagen.errors import UserError

GENEVAL_FILE = Path("geneval") / "evaluation_metadata.jsonl"
COMPBENCH_DIR = Path("t2i-compbench")
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex")
PARTI_FILE = Path("partiprompts") / "PartiPrompts.tsv"
DPG_FILE = Path("dpg-bench") / "prompts.csv"
SUITES = ("geneval", "t2i-compbench", *(f"t2i-compbench-{c}" for c in COMPBENCH_CATEGORIES), "partiprompts",
          "dpg-bench")
# images per prompt of each published protocol (GenEval's evaluation, T2I-CompBench's, DPG-Bench's)
PROTOCOL_IMAGES = {"geneval": 4, "t2i-compbench": 10, "dpg-bench": 4}


def protocol_images(suite: str) -> int | None:
    """The images per prompt a suite's published protocol generates (None: the suite has no such rule)."""
    return PROTOCOL_IMAGES.get("t2i-compbench" if suite.startswith("t2i-compbench") else suite)


def files(name: str) -> list[tuple[Path, str | None]]:
    """The data-folder files of a published suite, each with the T2I-CompBench category it holds (else None)."""
    if name == "geneval":
        return [(GENEVAL_FILE, None)]
    if name == "t2i-compbench":
        return [(COMPBENCH_DIR / f"{c}_val.txt", c) for c in COMPBENCH_CATEGORIES]
    if name.startswith("t2i-compbench-"):
        category = name[len("t2i-compbench-"):]
        if category not in COMPBENCH_CATEGORIES:
            raise UserError(f"suite {name!r}: T2I-CompBench has the categories {', '.join(COMPBENCH_CATEGORIES)}")
        return [(COMPBENCH_DIR / f"{category}_val.txt", category)]
    if name == "partiprompts":
        return [(PARTI_FILE, None)]
    if name == "dpg-bench":
        return [(DPG_FILE, None)]
    raise UserError(f"unknown published suite {name!r}; known: {', '.join(SUITES)}")


def geneval(path: Path) -> list[tuple[str, str, str]]:
    """GenEval's evaluation_metadata.jsonl -> [(prompt, tag, metadata JSON)]: one prompt a line with its tag and
    the objects it asks for (include, exclude)."""
    out = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            text, tag = item["prompt"], item["tag"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{k}: not a GenEval metadata line ({type(exc).__name__}: {exc})") from None
        meta = {key: item[key] for key in ("tag", "include", "exclude") if key in item}
        out.append((text, tag, json.dumps(meta, sort_keys=True)))
    if not out:
        raise UserError(f"{path}: no GenEval prompts")
    return out


def compbench(path: Path) -> list[str]:
    """One T2I-CompBench category file: a prompt a line."""
    lines = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not lines:
        raise UserError(f"{path}: no prompts")
    return lines


__all__ = ["SUITES", "COMPBENCH_CATEGORIES", "PROTOCOL_IMAGES", "protocol_images", "files", "geneval", "compbench"]
