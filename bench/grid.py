"""The grid runner: spec (bench.spec) -> cells and work items (bench.work) -> images (bench.generate) -> metrics
(bench.cell_metrics), resumable and sharded, in a study folder (bench.study: its identity and status).

The model is any generator a model spec string names (bench.generators): our Imagen, a diffusers pipeline or
cascade, or a precomputed image set. Every setting is checked against what the generator can honour, and every
metric input, before any image is made; one process writes a study's shard at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from bench import cell_metrics, generate, store
from bench.generators import Request, contract, load_generator, rank_device
from bench.spec import fill_axes, load_spec, parse_spec, spec_to_toml  # noqa: F401  (re-exported)
from bench.study import (check_metric_inputs, check_same_study, environment, format_status, provenance,  # noqa: F401
                         status, study_identity)
from bench.suites import load_suites
from bench.work import Cell, GridSpec, MetricsSpec, WorkItem, expand, item_seed, now, plan, work_items  # noqa: F401
from imagen.config import normalize_threshold  # noqa: F401  (re-exported)
from imagen.errors import UserError

# ----------------------------------------------------------------------------- shards


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N); None -> torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if text is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is not None and world is not None:
            text = f"{rank}/{world}"
        else:
            return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: use I/N, e.g. --shard 0/2 and --shard 1/2") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def in_shard(item: WorkItem, shard: tuple[int, int]) -> bool:
    """Stable assignment: a hash of the sample id modulo the number of shards."""
    i, n = shard
    return n == 1 or int(hashlib.sha256(item.sample_id.encode()).hexdigest()[:8], 16) % n == i


def run_grid(spec: GridSpec, out: str | os.PathLike, *, shard: tuple[int, int] = (0, 1), data_dir=None,
             device: str = "cpu", generator=None, metric_fns=None, metrics: bool = True, extend: bool = False,
             progress: bool = True, log=print, wait: bool = False) -> dict:
    """Run (or resume) a grid into the study folder `out`: generation, then the spec's metrics per cell.

    Every input is checked before any work: the suites, every cell's settings against what the generator can honour
    (and, for a precomputed set, that it holds every image), the FID inputs, and that `out` is a study of this seed,
    prompt set and model. `generator` (default: the one the spec's model names, on this rank's device) and
    `metric_fns` (default: bench.metrics) can be injected. Returns a summary dict.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the study")
    prompts = load_suites(spec.suites, data_dir, spec.seed)  # suite errors surface here, before any work
    check_metric_inputs(spec, prompts, metrics)  # FID inputs: before the model is loaded
    check_same_study(out, study_identity(spec, prompts), extend)  # seed and prompts: before the model is loaded
    device = rank_device(device)
    gen = contract(generator) if generator is not None else load_generator(spec.model, device)
    spec = fill_axes(spec, gen.sampler_defaults)  # the axes a diffusers spec left out: the pipeline's own
    cells = expand(spec, gen.checkpoint_hash)
    items = work_items(cells, prompts, spec.samples_per_prompt, spec.seed)
    gen.check([c.sampler_config() for c in cells],
              [Request(it.prompt.text, it.seed, it.prompt.prompt_id, it.sample_index) for it in items])
    identity = study_identity(spec, prompts, gen.checkpoint_hash)
    check_same_study(out, identity, extend)
    used = {c.id: gen.describe(c.sampler_config()) for c in cells}
    mine = [it for it in items if in_shard(it, shard)]
    if (out / "tables" / store.STUDY).is_dir():  # a resume: say so when the spec is not the one the study ran
        before = set(store.read_table(out, store.STUDY)[store.COL_SPEC])
        if before and spec_to_toml(spec) not in before:
            log(f"note: {out} was run with another spec (or a model whose sampler.toml has changed since); its "
                f"images stay, and the cells of this spec that are new are added beside them")
    prefix = generate.part_prefix(shard)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with store.writer(out, prefix, wait=wait, shards=shard[1]):  # one writer per study and shard, one split
            return _run(spec, out, shard, prefix, gen, cells, items, mine, prompts, identity, used, device,
                        metric_fns, metrics, progress, log)
    except OSError as exc:  # a full disk, a read-only or vanished folder: one line, and the rerun resumes
        failure = store.write_failure(exc, out)
        if failure is None:
            raise
        raise failure from None


def _run(spec, out, shard, prefix, gen, cells, items, mine, prompts, identity, used, device, metric_fns, metrics,
         progress, log) -> dict:
    """run_grid's writing half, every input checked: the study row, the images, then the metrics."""
    versions, hardware = environment(device)
    store.write_part(out, store.STUDY, [{
        store.COL_STUDY: out.name, store.COL_NAME: spec.name, store.COL_MODEL: spec.model, **identity,
        store.COL_SPEC: spec_to_toml(spec), store.COL_VERSIONS: json.dumps(versions),
        store.COL_HARDWARE: json.dumps(hardware), store.COL_PLAN: json.dumps(plan(cells, items, used)),
        store.COL_PROVENANCE: json.dumps(provenance(spec) if metrics else {}),
        store.COL_SHARD: f"{shard[0]}/{shard[1]}", store.COL_CREATED: now(),
    }], prefix=prefix)
    log(f"grid {spec.name!r}: {len(cells)} cells x {len(prompts)} prompts x {spec.samples_per_prompt} samples "
        f"= {len(items)} images; this shard ({shard[0]}/{shard[1]}): {len(mine)}")
    made = generate.generate_items(out, mine, gen, study_name=out.name, model=spec.model, used=used,
                                   batch_size=spec.batch_size, shard=shard, progress=progress)
    scored, prepared = True, None
    if metrics:  # this shard's per-image scores, where its images are (each rank its own judges, loaded once)
        prepared = cell_metrics.prepare(spec, metric_fns, device, log)
        scored = cell_metrics.score_shard(out, prepared, mine, items, progress=progress, prefix=prefix)
    done = generate.done_ids(out)
    complete = all(it.sample_id in done for it in items)
    summary = {"study": str(out), "cells": len(cells), "images": len(items), "generated": made,
               "complete": complete, "metric_rows": 0}
    if metrics and complete and scored:
        summary["metric_rows"] = cell_metrics.compute_metrics(out, spec, prompts, items=items,
                                                              progress=progress, prefix=prefix, log=log,
                                                              prepared=prepared)
    elif metrics:
        log(f"other shards are still {'generating' if not complete else 'scoring'}: metrics run when the last "
            f"shard finishes (or rerun this command without --shard)")
    return summary


__all__ = ["GridSpec", "MetricsSpec", "Cell", "WorkItem", "parse_spec", "load_spec", "spec_to_toml", "expand",
           "work_items", "item_seed", "parse_shard", "in_shard", "plan", "status", "format_status", "fill_axes",
           "normalize_threshold", "check_metric_inputs", "run_grid", "study_identity"]
