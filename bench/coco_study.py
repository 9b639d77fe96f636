"""`imagen-bench coco` as a grid study: the zero-shot COCO FID protocol (bench.metrics.coco) run through the one flow.

The study's suite is `coco=<captions file>:N` (the protocol's draw: N captions, one per distinct image, from the
seed), one image per caption, seeded like every other study (bench.work.item_seed: spec seed, prompt id, sample
index), and its one metric is FID against the COCO images (or their statistics) at the protocol's crop step. So a
COCO run is a study like any other: `grid status` shows its progress, `report` reads it, `drawbench pairs` can rate
it, a killed run resumes by the store's rules, and another setting is another cell of the same study. Beside its
tables, OUT/manifest.json says what must agree for two numbers to be compared and OUT/result.json holds the number.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from imagen.errors import UserError

from bench import store
from bench.generators import kind_of
from bench.grid import run_grid
from bench.spec import _toml_value, parse_spec
from bench.metrics.coco import CocoRun, build_manifest, read_captions, reference_stats, sample_captions, \
    small_n_warning, write_json
from bench.metrics.features import Protocol

STUDY_NAME = "coco-zero-shot"


def spec_text(run: CocoRun, settings: dict) -> str:
    """The grid spec of a COCO run: `settings` are the sampling axes given ({axis: one value}); an axis left out is
    the model's own setting."""
    protocol = Protocol(run.protocol, run.size)
    fid = {"extractor": run.extractor, "reference": run.images or run.reference_stats, "protocol": protocol.id}
    lines = [f"name = {_toml_value(STUDY_NAME)}", f"model = {_toml_value(run.model)}",
             f"suites = {_toml_value([f'coco={Path(run.captions).resolve()}:{run.n}'])}", "samples_per_prompt = 1",
             f"seed = {int(run.seed)}", f"batch_size = {int(run.batch_size)}", "", "[axes]"]
    lines += [f"{k} = {_toml_value([v])}" for k, v in settings.items() if v is not None]
    lines += ["", "[metrics]", f"fid = {_toml_value(fid)}"]
    return "\n".join(lines) + "\n"


def _axes(sampler, flags: dict | None) -> dict:
    """A full SamplerConfig (every axis) or the flags a user gave (None: the model's own) -> {axis: value}."""
    given = ({"sampler": sampler.sampler, "steps": sampler.steps, "guidance": sampler.guidance,
              "threshold": sampler.threshold, "aug_level": sampler.aug_level} if sampler is not None else flags or {})
    out = {}
    for k, v in given.items():
        if isinstance(v, (tuple, list)):  # one value per stage, all equal: one value (as the threshold collapses)
            v = v[0] if len(set(v)) == 1 else list(v)
        if v is not None:
            out[k] = v
    return out


def run_coco(run: CocoRun, sampler=None, progress: bool = True, log=None, *, flags: dict | None = None,
             generator=None) -> dict:
    """Run (or resume) the COCO study in run.out and return the result ({"metric", "value", "n", "n_ref", ...}).

    `sampler` is every setting (a SamplerConfig), or None for the model's own with `flags` (the settings a user gave)
    put over them; a precomputed `images:` set takes none."""
    out = Path(run.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    if (run.images is None) == (run.reference_stats is None):
        raise UserError("give the reference as either --images DIR (the COCO val2014 images) or "
                        "--reference-stats FILE.npz, not both")
    sampled = sample_captions(read_captions(run.captions), run.n, run.seed)  # --n and the file, before any work
    settings = _axes(sampler, flags)
    if run.model.startswith("images:") and settings:
        raise UserError(f"{run.model} is a precomputed image set: it takes no sampling flags")
    spec = parse_spec(spec_text(run, settings), source="coco")
    warning = small_n_warning(run.n)
    if warning and log:
        log(f"warning: {warning}")
    if warning:
        import warnings

        warnings.warn(warning, stacklevel=2)
    say = log or (lambda *_: None)
    if run.verify and run.images:  # re-hash every reference image once, before the study uses the cached statistics
        from bench.generators import rank_device
        from bench.metrics.features import LazyExtractor

        reference_stats(run.images, None, LazyExtractor(run.extractor, rank_device(run.device)), run.size,
                        progress=progress, kind=run.protocol, verify=True)
    summary = run_grid(spec, out, device=run.device, generator=generator, progress=progress, log=say)
    return _result(run, spec, out, sampled, warning, summary)


def _result(run: CocoRun, spec, out: Path, sampled, warning, summary: dict) -> dict:
    """The study's FID row for this run's cell -> result.json, with manifest.json (what makes two numbers
    comparable)."""
    from bench.cell_metrics import _inputs_hash, _with_inputs
    from bench.metrics.fid import fid_metric_name

    plan = json.loads(store.read_table(out, store.STUDY)[store.COL_PLAN].iloc[-1])
    (cell_id,) = [c for c in plan if plan[c].get("items")]  # this run's spec has one cell
    samples = store.read_table(out, store.SAMPLES, key=store.COL_SAMPLE_ID)
    mine = samples[samples[store.COL_CELL_ID] == cell_id]
    model_hash = str(mine[store.COL_CHECKPOINT_HASH].iloc[0])
    if store.COL_FLAGGED in mine:
        mine = mine[~mine[store.COL_FLAGGED].fillna(False).astype(bool).to_numpy()]
    # the FID row of exactly this run's inputs: its images, extractor, protocol and reference (a study may hold the
    # same cell's FID against another reference, from an earlier run)
    ihash = _inputs_hash("fid", _with_inputs(spec.metrics.fid), mine[store.COL_SHA256])
    metrics = store.read_table(out, store.METRICS)
    name = fid_metric_name(run.extractor, Protocol(run.protocol, run.size))
    rows = metrics[(metrics[store.COL_CELL_ID] == cell_id) & (metrics[store.COL_METRIC] == name)
                   & (metrics[store.COL_INPUTS_HASH] == ihash)] if len(metrics) else metrics
    if not len(rows):
        raise UserError(f"{out}: the study has no FID row for this run yet (other shards still generating?); rerun "
                        f"the same command to finish it")
    row = rows.iloc[-1]
    reference = reference_stats(run.images, run.reference_stats, run.extractor, run.size, kind=run.protocol)
    cell = plan[cell_id]

    def floats(text):
        return [float(x) for x in str(text).split(",")] if text is not None else None

    sampler = {"sampler": cell.get(store.COL_SAMPLER), "steps": cell.get(store.COL_STEPS),
               "guidance": floats(cell.get(store.COL_GUIDANCE_STAGES)), "threshold": cell.get(store.COL_THRESHOLD),
               "aug_level": floats(cell.get(store.COL_AUG_LEVEL))}
    manifest = build_manifest(
        captions_file=run.captions, sampled=sampled, seed=run.seed, reference=reference, extractor=run.extractor,
        size=run.size, kind=run.protocol, extractor_weights=getattr(reference, "weights", None),
        model={"model": spec.model, "kind": kind_of(spec.model),
               "checkpoint_hash": model_hash,
               "cell_id": cell_id},
        sampler=sampler if cell.get(store.COL_GUIDANCE_STAGES) is not None else {})
    manifest["generation"] = cell.get("generation", {})
    manifest["n_flagged"] = int(row.get(store.COL_N_FLAGGED) or 0) if store.COL_N_FLAGGED in rows else 0
    manifest["study"] = str(out)
    write_json(out / "manifest.json", manifest)
    payload = {"metric": str(row[store.COL_METRIC]), "value": float(row[store.COL_VALUE]), "n": int(row[store.COL_N]),
               "n_ref": int(reference.n), "warning": warning, "cell_id": str(row[store.COL_CELL_ID]),
               "manifest": "manifest.json", "run": asdict(run)}
    write_json(out / "result.json", payload)
    return payload


__all__ = ["run_coco", "spec_text", "STUDY_NAME"]
