"""Grid spec (TOML) -> cells with stable ids -> work items; the resumable, sharded runner and `grid status`.

A cell is one full sampling setting (sampler, steps, guidance per stage, thresholding, SR augmentation level) of one
model; its id is a short hash of those settings' canonical JSON with the model's checkpoint hash, so the same
settings keep the same id across runs. A work item is (cell, prompt, sample index); its seed depends on the spec
seed, the prompt and the sample index but NOT on the cell, so every cell starts a given prompt/sample from the same
noise (a fair comparison across guidance weights and thresholding, paper Figure A.11).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


from bench import store
from bench.suites import Prompt, load_suites, parse_name
from imagen.config import SamplerConfig, normalize_threshold
from imagen.errors import UserError

KNOWN_SAMPLERS = ("ddpm", "ddim", "dpmpp-2m")
TOP_KEYS = {"name", "model", "suites", "samples_per_prompt", "seed", "batch_size", "axes", "metrics"}
AXIS_KEYS = {"guidance", "threshold", "sampler", "steps", "aug_level"}
METRIC_KEYS = {"fid", "clip_score", "alignment"}


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class MetricsSpec:
    fid: dict | None = None  # {"extractor": "effnet-lite0" | "inception", "reference": "shapes" | folder | .npz}
    clip_score: dict | None = None  # {"model": "shapes-clip" | an open_clip name}
    alignment: bool = False  # the shapes scorer, per cell and per category (shapes suite only)


@dataclass(frozen=True)
class GridSpec:
    name: str
    model: str
    suites: tuple[str, ...]
    samples_per_prompt: int = 1
    seed: int = 0
    batch_size: int = 8
    guidance: tuple[tuple[float, ...], ...] = ((5.0,),)  # each entry: one weight, or one per stage
    threshold: tuple[str, ...] = ("dynamic:0.995",)
    sampler: tuple[str, ...] = ("ddpm",)
    steps: tuple[int, ...] = (50,)
    aug_level: tuple[tuple[float, ...], ...] = ((0.0,),)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)


def _known_samplers() -> tuple[str, ...]:
    try:
        from imagen.sampling import SAMPLERS
    except ImportError:
        return KNOWN_SAMPLERS
    return tuple(SAMPLERS)


def _floats(value, key: str, low: float, high: float | None) -> tuple[float, ...]:
    vals = value if isinstance(value, list) else [value]
    if not vals:
        raise UserError(f"{key}: an empty per-stage list; give one number or one per stage")
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{key}: {v!r} is not a finite number")
        if v < low or (high is not None and v > high):
            rng = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise UserError(f"{key}: {v!r} must be {rng}")
        out.append(float(v))
    return tuple(out)


def _model_sampler_defaults(model: str):
    """The model's sampler settings (sampler.toml in its folder) or SamplerConfig's; reads no weights."""
    from imagen.checkpoint import sampler_defaults

    return sampler_defaults(model)


def _one(values: tuple[float, ...]):
    """One axis value from a per-stage tuple: a number when it is one value, else the list."""
    return values[0] if len(values) == 1 else list(values)


def _axis(axes: dict, key: str, default: list) -> list:
    values = axes.get(key, default)
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise UserError(f"axes.{key}: the axis is empty; give at least one value")
    return values


def _metric_table(value, key: str, defaults: dict) -> dict | None:
    if value is False or value is None:
        return None
    if value is True:
        return dict(defaults)
    if not isinstance(value, dict):
        raise UserError(f"metrics.{key}: use true/false or a table such as {defaults}")
    unknown = set(value) - set(defaults)
    if unknown:
        raise UserError(f"metrics.{key}: unknown key(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **value}


def _subtable(raw: dict, name: str, known: set[str], source: str) -> dict:
    """The [name] table of a spec (empty if absent), every key of it known."""
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise UserError(f"{source}: [{name}] must be a table")
    unknown = set(table) - known
    if unknown:
        raise UserError(f"{source}: unknown key(s) {name}.{sorted(unknown)}; known: {sorted(known)}")
    return table


def parse_spec(text: str, source: str = "spec", model: str | None = None) -> GridSpec:
    """Parse and check a grid spec; every mistake is a one-line UserError naming the key, before any work.

    `model` replaces the spec's model (`--model`) before the axes it leaves out are filled from that model's
    sampler settings."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML: {exc}") from None
    if model is not None:
        raw["model"] = model
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise UserError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    for key in ("name", "model", "suites"):
        if key not in raw:
            raise UserError(f"{source}: missing key {key!r}")
    if not isinstance(raw["name"], str) or not raw["name"].strip():
        raise UserError(f"{source}: name must be a non-empty string")
    if not isinstance(raw["model"], str) or not raw["model"].strip():
        raise UserError(f"{source}: model must be a shipped model name, a checkpoint folder or a preset name")
    suites = raw["suites"] if isinstance(raw["suites"], list) else [raw["suites"]]
    if not suites or not all(isinstance(s, str) and s.strip() for s in suites):
        raise UserError(f"{source}: suites must be a non-empty list of suite names, e.g. [\"shapes:64\"]")
    for s in suites:
        parse_name(s)
    ints = {}
    for key, default, low in (("samples_per_prompt", 1, 1), ("seed", 0, 0), ("batch_size", 8, 1)):
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise UserError(f"{source}: {key} must be an integer >= {low}, got {v!r}")
        ints[key] = v
    axes = _subtable(raw, "axes", AXIS_KEYS, source)
    # an axis left out is the model's own setting (its sampler.toml), else the global SamplerConfig default
    d = _model_sampler_defaults(raw["model"].strip())
    guidance = tuple(_floats(v, "axes.guidance", 0.0, None) for v in _axis(axes, "guidance", [_one(d.guidance)]))
    threshold = tuple(normalize_threshold(v, "axes.threshold") for v in _axis(axes, "threshold", [d.threshold]))
    samplers = _known_samplers()
    sampler = tuple(_axis(axes, "sampler", [d.sampler]))
    for s in sampler:
        if s not in samplers:
            raise UserError(f"axes.sampler: unknown sampler {s!r}; choose from {', '.join(samplers)}")
    steps = tuple(_axis(axes, "steps", [d.steps]))
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise UserError(f"axes.steps: {s!r} must be a positive integer")
    aug = tuple(_floats(v, "axes.aug_level", 0.0, 1.0) for v in _axis(axes, "aug_level", [_one(d.aug_level)]))
    metrics = _subtable(raw, "metrics", METRIC_KEYS, source)
    fid = _metric_table(metrics.get("fid"), "fid", {"extractor": "effnet-lite0", "reference": "shapes"})
    if fid and fid["extractor"] not in ("effnet-lite0", "inception"):
        raise UserError(f"metrics.fid.extractor: {fid['extractor']!r}; choose effnet-lite0 or inception")
    clip = _metric_table(metrics.get("clip_score"), "clip_score", {"model": "shapes-clip"})
    align = metrics.get("alignment", False)
    if not isinstance(align, bool):
        raise UserError("metrics.alignment: use true or false")
    return GridSpec(
        name=raw["name"].strip(), model=raw["model"].strip(), suites=tuple(s.strip() for s in suites),
        samples_per_prompt=ints["samples_per_prompt"], seed=ints["seed"], batch_size=ints["batch_size"],
        guidance=guidance, threshold=threshold, sampler=sampler, steps=steps, aug_level=aug,
        metrics=MetricsSpec(fid=fid, clip_score=clip, alignment=align),
    )


def load_spec(path: str | os.PathLike, model: str | None = None) -> GridSpec:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"grid spec {p} not found")
    return parse_spec(p.read_text(encoding="utf-8"), source=str(p), model=model)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def spec_to_toml(spec: GridSpec) -> str:
    """The spec as TOML text that parse_spec reads back to an equal spec (stored with every study)."""
    def stage_list(values):
        return [list(v) if len(v) > 1 else v[0] for v in values]

    lines = [f"name = {_toml_value(spec.name)}", f"model = {_toml_value(spec.model)}",
             f"suites = {_toml_value(list(spec.suites))}", f"samples_per_prompt = {spec.samples_per_prompt}",
             f"seed = {spec.seed}", f"batch_size = {spec.batch_size}", "", "[axes]",
             f"guidance = {_toml_value(stage_list(spec.guidance))}",
             f"threshold = {_toml_value(list(spec.threshold))}", f"sampler = {_toml_value(list(spec.sampler))}",
             f"steps = {_toml_value(list(spec.steps))}", f"aug_level = {_toml_value(stage_list(spec.aug_level))}",
             "", "[metrics]"]
    m = spec.metrics
    lines.append(f"fid = {_toml_value(m.fid) if m.fid else 'false'}")
    lines.append(f"clip_score = {_toml_value(m.clip_score) if m.clip_score else 'false'}")
    lines.append(f"alignment = {_toml_value(m.alignment)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- cells and work items


@dataclass(frozen=True)
class Cell:
    """One grid cell: every sampling setting of one model."""

    model_hash: str
    sampler: str
    steps: int
    guidance: tuple[float, ...]  # per stage (one value = all stages)
    threshold: str
    aug_level: tuple[float, ...]

    @property
    def id(self) -> str:
        canon = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(sampler=self.sampler, steps=self.steps, guidance=self.guidance,
                             threshold=self.threshold, aug_level=self.aug_level)

    def settings(self) -> dict:
        """The cell's settings as sample-row columns."""
        return {
            store.COL_SAMPLER: self.sampler, store.COL_STEPS: self.steps,
            store.COL_GUIDANCE: self.guidance[0], store.COL_GUIDANCE_STAGES: _join(self.guidance),
            store.COL_THRESHOLD: self.threshold, store.COL_AUG_LEVEL: _join(self.aug_level),
        }


def _join(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def expand(spec: GridSpec, model_hash: str) -> list[Cell]:
    """The cartesian product of the axes, thresholding outermost (one curve per thresholding in the report)."""
    return [Cell(model_hash, s, n, g, t, a) for t, g, s, n, a in
            itertools.product(spec.threshold, spec.guidance, spec.sampler, spec.steps, spec.aug_level)]


@dataclass(frozen=True)
class WorkItem:
    cell: Cell
    prompt: Prompt
    sample_index: int
    seed: int

    @property
    def sample_id(self) -> str:
        return f"{self.cell.id}/{self.prompt.prompt_id}/{self.sample_index}"

    @property
    def image_path(self) -> str:
        return f"images/{self.cell.id}/{self.prompt.prompt_id}-{self.sample_index}.png"


def item_seed(spec_seed: int, prompt_id: str, sample_index: int) -> int:
    """The seed of a work item: from (spec seed, prompt, sample index), not the cell; fits in 31 bits."""
    digest = hashlib.sha256(f"{spec_seed}/{prompt_id}/{sample_index}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def work_items(cells: list[Cell], prompts: list[Prompt], samples_per_prompt: int, seed: int) -> list[WorkItem]:
    """Every (cell, prompt, sample index), cell-major so a batch shares one sampler setting."""
    return [WorkItem(c, p, i, item_seed(seed, p.prompt_id, i))
            for c in cells for p in prompts for i in range(samples_per_prompt)]


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


def plan(cells: list[Cell], items: list[WorkItem]) -> dict:
    """{cell_id: {settings..., "items": n}} for the study table and `grid status`."""
    counts: dict[str, int] = {}
    for it in items:
        counts[it.cell.id] = counts.get(it.cell.id, 0) + 1
    return {c.id: {**c.settings(), "items": counts.get(c.id, 0)} for c in cells}


# ----------------------------------------------------------------------------- status


def status(study: str | os.PathLike) -> dict:
    """What is done in a study: per cell, images stored against planned, and metric rows."""
    study = Path(study)
    if not store.is_study(study) and not (study / "tables" / store.STUDY).is_dir():
        raise UserError(f"{study} is not a study folder (no tables/); run `imagen-bench grid run SPEC --out "
                        f"{study}` first")
    runs = store.read_table(study, store.STUDY)
    samples = store.read_table(study, store.SAMPLES, key=store.COL_SAMPLE_ID)
    metrics = store.read_table(study, store.METRICS)
    planned = json.loads(runs[store.COL_PLAN].iloc[-1]) if len(runs) and store.COL_PLAN in runs else {}
    done = samples.groupby(store.COL_CELL_ID).size().to_dict() if len(samples) else {}
    nmet = metrics.groupby(store.COL_CELL_ID).size().to_dict() if len(metrics) else {}
    cells = []
    for cid in list(planned) + [c for c in done if c not in planned]:
        p = planned.get(cid, {})
        cells.append({"cell_id": cid, "guidance": p.get(store.COL_GUIDANCE_STAGES),
                      "threshold": p.get(store.COL_THRESHOLD), "sampler": p.get(store.COL_SAMPLER),
                      "steps": p.get(store.COL_STEPS), "aug_level": p.get(store.COL_AUG_LEVEL),
                      "planned": p.get("items"), "done": int(done.get(cid, 0)), "metric_rows": int(nmet.get(cid, 0))})
    total = sum(c["planned"] or 0 for c in cells)
    n_done = sum(min(c["done"], c["planned"] or c["done"]) for c in cells)
    return {"study": str(study), "name": runs[store.COL_NAME].iloc[-1] if len(runs) else None,
            "runs": int(len(runs)), "planned": total, "done": n_done, "complete": bool(total) and n_done >= total,
            "metric_rows": int(len(metrics)), "cells": cells}


def format_status(st: dict) -> str:
    lines = [f"study {st['study']} ({st['name']}): {st['done']}/{st['planned']} images, "
             f"{st['metric_rows']} metric rows, {st['runs']} run(s)" + (" - complete" if st["complete"] else "")]
    lines.append(f"{'cell':12}  {'guidance':>8}  {'threshold':14} {'sampler':9} {'steps':>5}  {'done':>9}  metrics")
    for c in st["cells"]:
        lines.append(f"{c['cell_id']:12}  {str(c['guidance']):>8}  {str(c['threshold']):14} {str(c['sampler']):9} "
                     f"{str(c['steps']):>5}  {c['done']:>4}/{str(c['planned']):<4}  {c['metric_rows']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the runner


def environment(device: str) -> tuple[dict, dict]:
    """(package versions, hardware) recorded with every run."""
    import platform
    from importlib import metadata

    import torch

    versions = {"python": platform.python_version()}
    for pkg in ("imagen-bench", "torch", "numpy", "pyarrow", "transformers", "torch-fidelity", "open-clip-torch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    hardware = {"device": device, "machine": platform.machine(), "processor": platform.processor(),
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return versions, hardware


def load_pipeline(model: str, device: str = "cpu"):
    """The default generator: imagen.pipeline.Pipeline (a shipped name, a checkpoint folder or a preset)."""
    from imagen.pipeline import Pipeline

    return Pipeline.load(model, device=device)


def check_runnable(spec: GridSpec, prompts: list[Prompt], generator, metrics: bool = True) -> None:
    """What the spec alone cannot check: per-stage lists against the model's stages, and the FID inputs."""
    cascade_cfg = getattr(getattr(generator, "cascade", None), "cfg", None)
    n_stages = len(cascade_cfg.stages) if cascade_cfg is not None and hasattr(cascade_cfg, "stages") else None
    if n_stages is not None:
        for key, values, n in (("axes.guidance", spec.guidance, n_stages), ("axes.aug_level", spec.aug_level,
                                                                              n_stages - 1)):
            for v in values:
                if len(v) > 1 and n > 0 and len(v) != n:
                    raise UserError(f"{key}: {list(v)} has {len(v)} values but model {spec.model!r} needs one value "
                                    f"or {n} (one per {'stage' if key == 'axes.guidance' else 'SR stage'})")
    fid = spec.metrics.fid
    if not (metrics and fid):
        return
    ref = fid["reference"]
    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"metrics.fid.reference: {ref!r}; use \"shapes\", a folder of images, a study folder or a "
                        f"statistics .npz file")
    if ref == "shapes":
        if not any(parse_name(s)[0] == "shapes" for s in spec.suites):
            raise UserError("metrics.fid.reference = \"shapes\" needs the shapes suite in suites, e.g. "
                            "\"shapes:64\"; or give a folder of reference images")
        n_images = sum(p.suite == "shapes" for p in prompts) * spec.samples_per_prompt
    else:
        if not Path(ref).exists():
            raise UserError(f"metrics.fid.reference: {ref} not found; give \"shapes\", a folder of images, a study "
                            f"folder or a statistics .npz file")
        n_images = len(prompts) * spec.samples_per_prompt
    if n_images < 2:
        raise UserError(f"metrics.fid: FID needs at least 2 images per cell, this grid makes {n_images}; add prompts "
                        f"or raise samples_per_prompt")


def run_grid(spec: GridSpec, out: str | os.PathLike, *, shard: tuple[int, int] = (0, 1), data_dir=None,
             device: str = "cpu", generator=None, metric_fns=None, metrics: bool = True,
             progress: bool = True, log=print) -> dict:
    """Run (or resume) a grid into the study folder `out`: generation, then the spec's metrics per cell.

    Every input is checked before any work. `generator` (default: the spec's model through imagen.pipeline) and
    `metric_fns` (default: bench.metrics) can be injected. Returns a summary dict.
    """
    from bench import generate
    from bench.cell_metrics import compute_metrics

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the study")
    prompts = load_suites(spec.suites, data_dir, spec.seed)  # suite errors surface here, before any work
    if generator is None:
        generator = load_pipeline(spec.model, device)
    check_runnable(spec, prompts, generator, metrics)  # per-stage lengths, FID inputs: before any work
    model_hash = str(getattr(generator, "checkpoint_hash", spec.model))
    cells = expand(spec, model_hash)
    items = work_items(cells, prompts, spec.samples_per_prompt, spec.seed)
    mine = [it for it in items if in_shard(it, shard)]
    versions, hardware = environment(device)
    if (out / "tables" / store.STUDY).is_dir():  # a resume: say so when the spec is not the one the study ran
        before = set(store.read_table(out, store.STUDY)[store.COL_SPEC])
        if before and spec_to_toml(spec) not in before:
            log(f"note: {out} was run with another spec (or a model whose sampler.toml has changed since); its "
                f"images stay, and the cells of this spec that are new are added beside them")
    out.mkdir(parents=True, exist_ok=True)
    prefix = generate.part_prefix(shard)
    store.write_part(out, store.STUDY, [{
        store.COL_STUDY: out.name, store.COL_NAME: spec.name, store.COL_MODEL: spec.model,
        store.COL_CHECKPOINT_HASH: model_hash, store.COL_SPEC: spec_to_toml(spec),
        store.COL_VERSIONS: json.dumps(versions), store.COL_HARDWARE: json.dumps(hardware),
        store.COL_PLAN: json.dumps(plan(cells, items)), store.COL_SHARD: f"{shard[0]}/{shard[1]}",
        store.COL_CREATED: _now(),
    }], prefix=prefix)
    log(f"grid {spec.name!r}: {len(cells)} cells x {len(prompts)} prompts x {spec.samples_per_prompt} samples "
        f"= {len(items)} images; this shard ({shard[0]}/{shard[1]}): {len(mine)}")
    made = generate.generate_items(out, mine, generator, study_name=out.name, model=spec.model,
                                   batch_size=spec.batch_size, shard=shard, progress=progress)
    done = generate.done_ids(out)
    complete = all(it.sample_id in done for it in items)
    summary = {"study": str(out), "cells": len(cells), "images": len(items), "generated": made,
               "complete": complete, "metric_rows": 0}
    if metrics and complete:
        summary["metric_rows"] = compute_metrics(out, spec, prompts, metric_fns=metric_fns, device=device,
                                                 progress=progress, prefix=prefix, log=log)
    elif metrics:
        log("other shards are still generating: metrics run when the last shard finishes "
            "(or rerun this command without --shard)")
    return summary


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat()


__all__ = ["GridSpec", "MetricsSpec", "Cell", "WorkItem", "parse_spec", "load_spec", "spec_to_toml", "expand",
           "work_items", "item_seed", "parse_shard", "in_shard", "plan", "status", "format_status",
           "normalize_threshold", "check_runnable", "run_grid", "load_pipeline"]
