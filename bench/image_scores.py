"""Per-image scores of a study: CLIP score, GenEval's verdict, VQAScore, PickScore, HPS, ImageReward; one value per
image and scorer, kept in the
study's `scores` table, scored where the image was made.

A grid run scores its own shard's images right after making them (under torchrun each rank scores its shard with
its judges loaded once), and the metrics stage (bench.cell_metrics) turns the stored values into a cell's means and
intervals. An image's score is keyed by (sample id, the scorer's settings hash, the image's sha256): a value is
written once, a part file per chunk of images, so a killed run loses at most one chunk and re-scores nothing already
stored; rows that two processes wrote for one key (a rerun beside a running shard) are read as one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import store
from bench.work import now

CHUNK = 256  # images per written part: what a killed scoring run can lose


def _geneval_rows(df) -> np.ndarray:
    metas = [json.loads(m) if isinstance(m, str) else None for m in df[store.COL_META]] if store.COL_META in df \
        else [None] * len(df)
    return np.array([isinstance(m, dict) and "include" in m and "tag" in m for m in metas], dtype=bool)


def _all_rows(df) -> np.ndarray:
    return np.ones(len(df), dtype=bool)


def _score_clip(fns, images, df, table):
    name, values = fns.clip(images, list(df[store.COL_PROMPT]), table)
    return name, [float(v) for v in values]


def _score_geneval(fns, images, df, table):
    name, correct = fns.geneval(images, [json.loads(m) for m in df[store.COL_META]], table)
    return name, [float(c) for c in correct]


def _score_vqascore(fns, images, df, table):
    name, values = fns.vqascore(images, list(df[store.COL_PROMPT]), table)
    return name, [float(v) for v in values]


def _score_preference(key: str):
    def score(fns, images, df, table):
        name, values = fns.preference(key, images, list(df[store.COL_PROMPT]), table)
        return name, [float(v) for v in values]

    return score


@dataclass(frozen=True)
class PerImage:
    """A per-image scorer: which sample rows it scores, and (run's functions, images, rows, table) -> (name, values)."""

    applies: object
    score: object


PER_IMAGE = {"clip_score": PerImage(_all_rows, _score_clip), "geneval": PerImage(_geneval_rows, _score_geneval),
             "vqascore": PerImage(_all_rows, _score_vqascore),
             **{k: PerImage(_all_rows, _score_preference(k)) for k in ("pickscore", "hpsv2", "imagereward")}}

# what a table holds that changes how fast, not what, a judge scores
_NOT_IN_HASH = ("batch_size",)
# The version of each scorer's code: bumped whenever a rule, a preprocessing step or a label mapping changes what it
# computes from the same weights, so values stored by the earlier code stop looking current.
SCORER_VERSIONS = {"clip_score": 1, "geneval": 2, "vqascore": 1, "pickscore": 1, "hpsv2": 1, "imagereward": 1}


def settings_hash(key: str, settings) -> str:
    """The hash that keys a scorer's values: its [metrics] key, its code's version and everything its value depends
    on (the table with its weights' hashes and resolved dtype), less what only changes speed."""
    if isinstance(settings, dict):
        settings = {k: v for k, v in settings.items() if k not in _NOT_IN_HASH}
    canon = json.dumps([key, SCORER_VERSIONS.get(key, 1), settings], sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def stored(study) -> dict:
    """{(sample id, settings hash, image sha256): (metric name, value)} of every score the study holds."""
    df = store.read_table(study, store.SCORES)
    if not len(df):
        return {}
    keys = zip(df[store.COL_SAMPLE_ID], df[COL_SETTINGS_HASH], df[store.COL_SHA256])
    return {k: (name, float(v)) for k, name, v in zip(keys, df[store.COL_METRIC], df[store.COL_VALUE])}


def missing(samples, tables: dict, settings: dict, have: dict) -> dict:
    """{key: the sample rows its scorer applies to and has no stored value for}, for the per-image keys of tables."""
    out = {}
    for key in tables:
        if key not in PER_IMAGE or not len(samples):
            continue
        rows = samples[PER_IMAGE[key].applies(samples)]
        h = settings_hash(key, settings[key])
        todo = [(s, h, sha) not in have for s, sha in zip(rows[store.COL_SAMPLE_ID], rows[store.COL_SHA256])]
        if any(todo):
            out[key] = rows[np.asarray(todo, dtype=bool)]
    return out


def score_images(study, samples, tables: dict, settings: dict, fns, *, prefix: str, load_images, progress=True,
                 have: dict | None = None) -> dict:
    """Score every sample row (flagged images already left out) that a per-image scorer of `tables` applies to and
    that has no stored value; a part file per chunk. Returns the stored values with the new ones added."""
    have = stored(study) if have is None else have
    todo = missing(samples, tables, settings, have)
    total = sum(len(rows) for rows in todo.values())
    if not total:
        return have
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="image", desc="scoring")
    for key, rows in todo.items():
        h = settings_hash(key, settings[key])
        for start in range(0, len(rows), CHUNK):
            part = rows.iloc[start:start + CHUNK]
            images = load_images(study, list(part[store.COL_IMAGE_PATH]))
            name, values = PER_IMAGE[key].score(fns, images, part, tables[key])
            out = []
            for sid, cell, sha, value in zip(part[store.COL_SAMPLE_ID], part[store.COL_CELL_ID],
                                             part[store.COL_SHA256], values):
                have[(sid, h, sha)] = (name, float(value))
                out.append({store.COL_STUDY: Path(study).name, store.COL_SAMPLE_ID: sid,
                            store.COL_CELL_ID: cell, COL_SCORER: key, COL_SETTINGS_HASH: h, store.COL_METRIC: name,
                            store.COL_VALUE: float(value), store.COL_SHA256: sha, store.COL_CREATED: now()})
            store.write_part(study, store.SCORES, out, prefix=prefix)
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    return have


def values(have: dict, key: str, settings, df) -> tuple[str, list[float]]:
    """(metric name, the stored value of each of the rows df) for one scorer; every row must have been scored."""
    h = settings_hash(key, settings)
    got = [have[(s, h, sha)] for s, sha in zip(df[store.COL_SAMPLE_ID], df[store.COL_SHA256])]
    return got[0][0], [v for _, v in got]


def checkpoint_sha256(table) -> str | None:
    """The sha256 of the HPS or ImageReward checkpoint a [metrics] table names (None: not on this machine yet)."""
    from bench.metrics.hub import file_sha256
    from imagen.errors import UserError

    try:
        if "version" in table:
            from bench.metrics.hpsv2 import weights_file

            return file_sha256(weights_file(table.get("weights"), table["version"]))
        from bench.metrics.imagereward import weights_files

        return file_sha256(weights_files(table.get("weights"), table.get("med_config"))[0])
    except UserError:
        return None


COL_SCORER, COL_SETTINGS_HASH = store.COL_SCORER, store.COL_SETTINGS_HASH

__all__ = ["PER_IMAGE", "PerImage", "CHUNK", "SCORER_VERSIONS", "settings_hash", "stored", "missing", "score_images",
           "values", "checkpoint_sha256", "COL_SCORER", "COL_SETTINGS_HASH"]
