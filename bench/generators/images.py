"""A precomputed image set behind the generator contract (`images:<folder or CSV>`): images another system made.

Two layouts:
  - a CSV (or TSV) with a `file` column (paths relative to the CSV's folder), a `prompt` or `prompt_id` column, and
    an optional `sample_index` (default: the order of a prompt's rows, from 0);
  - a folder holding one sub-folder per prompt, named by the prompt's text or its prompt id
    (e.g. `drawbench-1f0c...`), whose images in natural order of their names (`2.png` before `10.png`) are
    sample 0, 1, ...

The set has no sampling settings (a grid spec for it needs no [axes]). Every file is hashed (remembered by path,
size and mtime), and the set's checkpoint hash is a hash of every (prompt, sample index, file sha256), so another
set, or the same set with one image changed, is another model. Every file is also opened as an image when the set is
loaded, so every unreadable one is named in one error before any work.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from imagen.errors import UserError
from imagen.fileio import IMAGE_SUFFIXES

from bench.filehash import HashMemo, digest_of
from bench.generators.base import Generated



def natural_key(name: str) -> list:
    """Sort key that orders the numbers in a name by value: 2.png before 10.png, img9 before img10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def unreadable(files) -> list[tuple[Path, str]]:
    """(file, why) for each file PIL cannot open and verify as an image."""
    from PIL import Image

    bad = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
            bad.append((Path(f), f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    return bad


def _csv_entries(path: Path) -> list[tuple[str, str, int, Path]]:
    """[(key kind "prompt" | "prompt_id", key, sample index, file)] from a CSV/TSV; errors name the line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"images:{path}: cannot read it as UTF-8 text ({exc})") from None
    tsv = path.suffix.lower() in (".tsv", ".tab")  # no quoting in TSV, as in the suites' prompt files
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    header = [h.strip().lower() for h in next(reader, [])]
    key = "prompt" if "prompt" in header else "prompt_id" if "prompt_id" in header else None
    if key is None or "file" not in header:
        raise UserError(f"images:{path}: needs a 'file' column and a 'prompt' or 'prompt_id' column (and optionally "
                        f"'sample_index'); the header is {header}")
    i_key, i_file = header.index(key), header.index("file")
    i_idx = header.index("sample_index") if "sample_index" in header else None
    out, counts, seen = [], {}, set()
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        line = reader.line_num
        if len(row) != len(header):
            raise UserError(f"images:{path}:{line}: expected {len(header)} fields, got {len(row)}; quote prompts "
                            f"that contain the delimiter")
        k = row[i_key].strip()
        if i_idx is not None:
            try:
                idx = int(row[i_idx])
            except ValueError:
                raise UserError(f"images:{path}:{line}: sample_index {row[i_idx]!r} is not an integer") from None
        else:
            idx = counts.get(k, 0)
        counts[k] = max(counts.get(k, 0), idx + 1)
        if (k, idx) in seen:
            raise UserError(f"images:{path}:{line}: a second image for {key} {k!r} sample {idx}")
        seen.add((k, idx))
        f = Path(row[i_file].strip())
        f = f if f.is_absolute() else path.parent / f
        if not f.is_file():
            raise UserError(f"images:{path}:{line}: image file {f} not found")
        out.append((key, k, idx, f))
    if not out:
        raise UserError(f"images:{path}: no images listed after the header")
    return out


def _folder_entries(root: Path) -> list[tuple[str, str, int, Path]]:
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted((f for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")),
                       key=lambda f: (natural_key(f.name), f.name))  # 01.png and 1.png: a fixed order
        out += [("folder", sub.name, k, f) for k, f in enumerate(files)]
    if not out:
        raise UserError(f"images:{root}: no images found; use one sub-folder per prompt (named by the prompt or its "
                        f"prompt id) holding its images, or a CSV with columns prompt, sample_index, file")
    return out


class ImageSetGenerator:
    """Looks each (prompt, sample index) up in the set; makes nothing, so it has no axes and ignores seeds."""

    kind = "images"
    axes = frozenset()
    n_stages = None
    sampler_defaults = None
    uses_seeds = False

    def __init__(self, source: str | Path, model_id: str | None = None, memo: HashMemo | None = None):
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"images:{source}: no such folder or CSV file")
        self.source = path
        self.model_id = model_id or f"images:{source}"
        entries = _csv_entries(path) if path.is_file() else _folder_entries(path)
        bad = unreadable(f for _, _, _, f in entries)
        if bad:
            shown = "; ".join(f"{f} ({why})" for f, why in bad[:10]) + (f"; and {len(bad) - 10} more"
                                                                      if len(bad) > 10 else "")
            raise UserError(f"{self.model_id}: {len(bad)} of {len(entries)} images cannot be read: {shown}; replace "
                            f"or remove them")
        memo = memo or HashMemo()
        hashed = [(kind, key, idx, str(f), memo.sha256(f)) for kind, key, idx, f in entries]
        memo.save()
        self.files = {(kind, key, idx): Path(f) for kind, key, idx, f, _ in hashed}
        self.checkpoint_hash = digest_of(sorted([kind, key, idx, sha] for kind, key, idx, _, sha in hashed))

    def lookup(self, prompt: str, prompt_id: str | None, index: int) -> Path | None:
        for kind, key in (("prompt", prompt), ("prompt_id", prompt_id), ("folder", prompt_id), ("folder", prompt)):
            f = self.files.get((kind, key, index))
            if f is not None:
                return f
        return None

    def check(self, settings: list, requests) -> None:
        if any(s is not None for s in settings):
            raise UserError(f"{self.model_id} is a precomputed image set: it has no sampling settings, so a spec for it "
                            f"takes no [axes]; remove them")
        missing = [r for r in requests if self.lookup(r.prompt, r.prompt_id, r.sample_index) is None]
        if missing:
            pairs = sorted({(r.prompt, r.sample_index) for r in missing})
            prompts = sorted({r.prompt for r in missing})
            shown = "; ".join(f"{p!r} sample {k}" for p, k in pairs[:5]) + (" ..." if len(pairs) > 5 else "")
            asked = {k for r in requests for k in (r.prompt, r.prompt_id)}
            unmatched = sorted({key for kind, key, _ in self.files if kind == "folder" and key not in asked})
            extra = ""
            if unmatched:
                names = ", ".join(repr(k) for k in unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
                extra = (f"; {len(unmatched)} folder(s) of the set match no prompt of the suites: {names} (a folder "
                         f"is named by the prompt's exact text or its prompt id)")
            raise UserError(f"{self.model_id} has no image for {len(pairs)} of the {len(requests)} (prompt, sample) "
                            f"pairs the spec asks for, in {len(prompts)} prompts: {shown}{extra}; add them to the "
                            f"set or lower samples_per_prompt / the suites")

    def describe(self, settings) -> dict:
        return {"kind": self.kind, "source": str(self.source), "images": len(self.files)}

    def generate(self, prompts, seeds, settings, *, keys=None, batch_size: int = 8) -> Generated:
        from PIL import Image, UnidentifiedImageError

        keys = keys or [(None, 0)] * len(prompts)
        out = []
        for prompt, (pid, idx) in zip(prompts, keys):
            f = self.lookup(prompt, pid, idx)
            if f is None:
                raise UserError(f"{self.model_id} has no image for {prompt!r} sample {idx}")
            try:
                with Image.open(f) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except (OSError, UnidentifiedImageError) as exc:
                raise UserError(f"{self.model_id}: {f} is not a readable image ({exc}); replace or remove it") from None
        return Generated(out)
