"""Batched, seeded, crash-safe generation of work items (one item = cell x prompt x sample index).

Order of writes per batch: every PNG atomically (temp file + fsync + rename), then ONE samples part file with the
batch's rows (atomic too). A SIGKILL at any moment leaves (a) complete PNGs, some without a row yet, and (b) temp
files with this writer's prefix. On restart, a row means done; an image without a row is regenerated (the same seed
gives the same image, written over it atomically); this writer's temp files are removed. Shards use their own
prefix, so concurrent shards never touch each other's temp files.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from bench import store
from bench.generators.base import Request, contract
from bench.work import WorkItem


def part_prefix(shard: tuple[int, int]) -> str:
    return f"s{shard[0]}of{shard[1]}"


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (deterministic: the same pixels give the same bytes and sha256)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_atomic(path: Path, data: bytes, prefix: str) -> None:
    """Write bytes so that `path` is either absent, the old file, or the complete new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{prefix}-{path.name}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a killed write: no temp file left behind
        tmp.unlink(missing_ok=True)
        raise


def clean_image_temps(study: Path, prefix: str) -> int:
    n = 0
    images = study / "images"
    if images.is_dir():
        for tmp in images.glob(f"*/.{prefix}-*.tmp"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def done_ids(study: Path) -> set[str]:
    """Sample ids that have a row: the completed work items."""
    tbl = store.read_arrow(study, store.SAMPLES)
    if store.COL_SAMPLE_ID not in tbl.column_names:
        return set()
    return set(tbl.column(store.COL_SAMPLE_ID).to_pylist())


def batches(items: list[WorkItem], batch_size: int) -> list[list[WorkItem]]:
    """Consecutive items of the same cell, at most batch_size each (a batch has one sampler setting)."""
    out: list[list[WorkItem]] = []
    for it in items:
        if out and out[-1][0].cell.id == it.cell.id and len(out[-1]) < batch_size:
            out[-1].append(it)
        else:
            out.append([it])
    return out


def sample_row(item: WorkItem, study_name: str, model: str, sha: str, seconds: float, *, flagged: bool = False,
               generation: str | None = None, seeded: bool = True) -> dict:
    p = item.prompt
    return {
        store.COL_SAMPLE_ID: item.sample_id, store.COL_STUDY: study_name, store.COL_MODEL: model,
        store.COL_CHECKPOINT_HASH: item.cell.model_hash, store.COL_CELL_ID: item.cell.id, **item.cell.settings(),
        store.COL_SUITE: p.suite, store.COL_PROMPT_ID: p.prompt_id, store.COL_PROMPT: p.text,
        store.COL_CATEGORY: p.category, store.COL_FACTS: p.facts, store.COL_META: p.meta,
        store.COL_SAMPLE_INDEX: item.sample_index,
        store.COL_SEED: item.seed if seeded else None, store.COL_IMAGE_PATH: item.image_path, store.COL_SHA256: sha,
        store.COL_SECONDS: float(seconds), store.COL_FLAGGED: bool(flagged), store.COL_GENERATION: generation,
        store.COL_CREATED: datetime.now(timezone.utc).isoformat(),
    }


def generate_items(study: str | os.PathLike, items: list[WorkItem], generator, *, study_name: str,
                   model: str, batch_size: int = 8, shard: tuple[int, int] = (0, 1), progress: bool = True,
                   used: dict | None = None, on_batch: Callable[[int], None] | None = None) -> int:
    """Generate every item without a row yet; returns how many images were made. `generator` keeps the contract of
    bench.generators.base; `used` maps a cell id to what the generator uses for it (stored in each row)."""
    study = Path(study)
    study.mkdir(parents=True, exist_ok=True)
    gen = contract(generator)
    prefix = part_prefix(shard)
    store.clean_temp_files_prefixed(study, prefix)
    clean_image_temps(study, prefix)
    done = done_ids(study)
    todo = [it for it in items if it.sample_id not in done]
    if not todo:
        return 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc=f"generating (shard {shard[0]}/{shard[1]})", smoothing=0.1)
    made = 0
    try:
        for batch in batches(todo, batch_size):
            t0 = time.perf_counter()
            requests = [Request(it.prompt.text, it.seed, it.prompt.prompt_id, it.sample_index) for it in batch]
            out = gen.generate(requests, batch[0].cell.sampler_config(), batch_size=batch_size)
            seconds = (time.perf_counter() - t0) / len(batch)
            cid = batch[0].cell.id
            generation = json.dumps(used[cid], sort_keys=True, default=str) if used and cid in used else None
            if not study.is_dir():  # never recreate a study folder someone removed mid-run
                raise FileNotFoundError(errno.ENOENT, "the study folder is gone", str(study))
            rows = []
            for it, img, flagged in zip(batch, out.images, out.flagged):
                data = png_bytes(img)
                write_atomic(study / it.image_path, data, prefix)
                rows.append(sample_row(it, study_name, model, hashlib.sha256(data).hexdigest(), seconds,
                                       flagged=flagged, generation=generation, seeded=gen.uses_seeds))
            store.write_part(study, store.SAMPLES, rows, prefix=prefix)
            made += len(batch)
            if bar is not None:
                bar.update(len(batch))
            if on_batch is not None:
                on_batch(made)
    finally:
        if bar is not None:
            bar.close()
    return made


def load_images(study: str | os.PathLike, paths: list[str]):
    """Stored PNGs (paths relative to the study) -> uint8 [N, H, W, 3], or an object array of [H, W, 3] images when
    their sizes differ (a precomputed set)."""
    images = [np.asarray(Image.open(Path(study) / p).convert("RGB")) for p in paths]
    if len({im.shape for im in images}) <= 1:
        return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)
    arr = np.empty(len(images), dtype=object)
    arr[:] = images
    return arr


__all__ = ["generate_items", "load_images", "png_bytes", "write_atomic", "done_ids", "batches",
           "part_prefix"]
