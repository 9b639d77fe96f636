"""Grid spec (TOML) -> cells -> work items (types in bench.work); the resumable, sharded runner and `grid status`.

The model is any generator a model spec string names (bench.generators): our Imagen, a diffusers pipeline or
cascade, or a precomputed image set. An axis the spec leaves out is the model's own setting. Every setting is
checked against what the generator can honour, and every FID input, before any image is made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tomllib
from pathlib import Path

from bench import cell_metrics, generate, store
from bench.generators import Request, contract, kind_of, load_generator, model_defaults, rank_device
from bench.generators.base import canonical_call
from bench.suites import WORLD_SUITES, Prompt, load_suites, parse_name, world_suite
from bench.work import Cell, GridSpec, MetricsSpec, WorkItem, expand, item_seed, now, plan, work_items
from imagen.config import SamplerConfig, normalize_threshold
from imagen.errors import UserError

KNOWN_SAMPLERS = ("ddpm", "ddim", "dpmpp-2m")
TOP_KEYS = {"name", "model", "suites", "samples_per_prompt", "seed", "batch_size", "negative_prompt", "axes", "call",
            "metrics"}
AXIS_KEYS = {"guidance", "threshold", "sampler", "steps", "aug_level", "distilled_guidance"}
METRIC_KEYS = {"fid", "clip_score", "alignment", "kid", "prc", "cmmd", "fd_clip"}


# ----------------------------------------------------------------------------- the spec


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


def _one(values: tuple[float, ...]):
    """One axis value from a per-stage tuple: a number when it is one value, else the list."""
    return values[0] if len(values) == 1 else list(values)


def _axis(axes: dict, key: str, default: list | None) -> list | None:
    """An axis's values, or `default` when the spec leaves it out (None: filled once the model is loaded)."""
    if key not in axes and default is None:
        return None
    values = axes.get(key, default)
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise UserError(f"axes.{key}: the axis is empty; give at least one value")
    return values


def _metric_table(value, key: str, defaults: dict, optional: tuple[str, ...] = ()) -> dict | None:
    if value is False or value is None:
        return None
    if value is True:
        return dict(defaults)
    if not isinstance(value, dict):
        raise UserError(f"metrics.{key}: use true/false or a table such as {defaults}")
    unknown = set(value) - set(defaults) - set(optional)
    if unknown:
        raise UserError(f"metrics.{key}: unknown key(s) {sorted(unknown)}; known: {sorted({*defaults, *optional})}")
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
    model = raw["model"].strip()
    kind = kind_of(model)
    if kind == "images":
        if axes:
            raise UserError(f"{source}: model {model!r} is a precomputed image set: it has no sampling settings, so "
                            f"the spec takes no [axes] (found {sorted(axes)}); remove them")
        guidance = threshold = sampler = steps = aug = ()
        distilled = None
    else:
        # an axis left out is the model's own setting: an Imagen folder's sampler.toml (else SamplerConfig's), read
        # here; a diffusers pipeline's own scheduler and call defaults, filled in by fill_axes once it is loaded
        d = model_defaults(model)
        guidance = _maybe(_axis(axes, "guidance", d and [_one(d.guidance)]),
                          lambda v: _floats(v, "axes.guidance", 0.0, None))
        threshold = _maybe(_axis(axes, "threshold", d and [d.threshold]),
                           lambda v: normalize_threshold(v, "axes.threshold"))
        sampler = _maybe(_axis(axes, "sampler", d and [d.sampler]), lambda v: _sampler(v, kind))
        steps = _maybe(_axis(axes, "steps", d and [d.steps]), _steps)
        aug = _maybe(_axis(axes, "aug_level", d and [_one(d.aug_level)]),
                     lambda v: _floats(v, "axes.aug_level", 0.0, 1.0))
        # embedded guidance: left out is the model's own (FLUX.1-dev's 3.5), filled in once it is loaded
        distilled = _maybe(_axis(axes, "distilled_guidance", None), _distilled)
    negative = raw.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise UserError(f"{source}: negative_prompt must be a string (\"\" for the empty prompt), got {negative!r}")
    call = _call_table(raw.get("call"), source)
    if kind == "images" and (negative is not None or call):
        raise UserError(f"{source}: model {model!r} is a precomputed image set: negative_prompt and [call] do not "
                        f"reach it; remove them")
    metrics = _subtable(raw, "metrics", METRIC_KEYS, source)
    feat_defaults = {"extractor": "effnet-lite0", "reference": "shapes", "protocol": "clean"}
    fid = _feature_table(_metric_table(metrics.get("fid"), "fid", feat_defaults), "fid")
    clip = _clip_table(_metric_table(metrics.get("clip_score"), "clip_score", {"model": "shapes-clip"},
                                     ("pretrained",)), "clip_score")
    # KID and precision/recall: on the FID table's extractor, protocol and reference unless they name their own;
    # CMMD and FD-CLIP: on the CLIP score's model (else shapes-clip) and the same reference
    feat = {k: (fid or feat_defaults)[k] for k in ("extractor", "reference", "protocol")}
    clip_model = {k: v for k, v in (clip or {"model": "shapes-clip"}).items() if k in ("model", "pretrained")}
    kid = _feature_table(_metric_table(metrics.get("kid"), "kid", feat, ("subset_size",)), "kid")
    prc = _feature_table(_metric_table(metrics.get("prc"), "prc", feat), "prc")
    cmmd = _clip_table(_metric_table(metrics.get("cmmd"), "cmmd", {**clip_model, "reference": feat["reference"]},
                                     ("pretrained",)), "cmmd")
    fd_clip = _clip_table(_metric_table(metrics.get("fd_clip"), "fd_clip",
                                        {**clip_model, "reference": feat["reference"]}, ("pretrained",)), "fd_clip")
    if kid and "subset_size" in kid and (isinstance(kid["subset_size"], bool) or not isinstance(
            kid["subset_size"], int) or kid["subset_size"] < 2):
        raise UserError(f"metrics.kid.subset_size: {kid['subset_size']!r} must be an integer >= 2")
    align = metrics.get("alignment", False)
    if not isinstance(align, bool):
        raise UserError("metrics.alignment: use true or false")
    return GridSpec(
        name=raw["name"].strip(), model=model, suites=tuple(s.strip() for s in suites),
        samples_per_prompt=ints["samples_per_prompt"], seed=ints["seed"], batch_size=ints["batch_size"],
        guidance=guidance, threshold=threshold, sampler=sampler, steps=steps, aug_level=aug,
        metrics=MetricsSpec(fid=fid, clip_score=clip, alignment=align, kid=kid, prc=prc, cmmd=cmmd, fd_clip=fd_clip),
        distilled_guidance=distilled, negative_prompt=negative, call=canonical_call(call),
    )


def _distilled(v) -> float:
    """One embedded guidance value (one per model, not per stage)."""
    if isinstance(v, list):
        raise UserError(f"axes.distilled_guidance: {v!r} is a list inside the axis; give one number per cell, e.g. "
                        f"distilled_guidance = [2.0, 3.5]")
    return _floats(v, "axes.distilled_guidance", 0.0, None)[0]


def _call_table(table, source: str) -> dict:
    """The [call] table: other arguments of a diffusers pipeline's call, TOML values; names the harness sets itself
    are refused here, names the pipeline does not take once it is loaded."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise UserError(f"{source}: [call] must be a table of a pipeline's call arguments, e.g. [call] "
                        f"max_sequence_length = 256")
    from bench.generators.diffusers_calls import RESERVED

    def plain(v) -> bool:
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return isinstance(v, (bool, int, float, str))

    for key, value in table.items():
        if not key.isidentifier():
            raise UserError(f"{source}: call.{key!r} is not an argument name; [call] keys are a pipeline's "
                            f"argument names, e.g. max_sequence_length")
        if key in RESERVED:
            raise UserError(f"{source}: call.{key} is set by the harness (prompt, seeds, axes, size as "
                            f"?height=&width=, negative_prompt as its own key); remove it from [call]")
        if not plain(value):
            raise UserError(f"{source}: call.{key} = {value!r}: give a number, string, boolean or a list of them")
    return dict(table)


def _feature_table(table: dict | None, key: str) -> dict | None:
    """A metric table on an image-feature network: a known extractor, a protocol in its canonical spelling."""
    if not table:
        return table
    from bench.metrics.features import parse_protocol

    if table["extractor"] not in ("effnet-lite0", "inception"):
        raise UserError(f"metrics.{key}.extractor: {table['extractor']!r}; choose effnet-lite0 or inception")
    if not isinstance(table["protocol"], str):
        raise UserError(f"metrics.{key}.protocol: {table['protocol']!r}; use clean, torch-fidelity, crop256+clean, "
                        f"crop256+torch-fidelity or coco")
    try:
        table["protocol"] = parse_protocol(table["protocol"]).id
    except UserError as exc:
        raise UserError(f"metrics.{key}.protocol: {exc}") from None
    return table


def _clip_table(table: dict | None, key: str) -> dict | None:
    """A metric table on a CLIP model: strings, and weights (a bare architecture would be a random network)."""
    if not table:
        return table
    for k in ("model", "pretrained"):
        if k in table and (not isinstance(table[k], str) or not table[k].strip()):
            raise UserError(f"metrics.{key}.{k}: {table[k]!r} must be a non-empty string")
    from bench.metrics.clip_score import needs_weights

    why = needs_weights(table["model"], table.get("pretrained"))
    if why:
        raise UserError(f"metrics.{key}: {why}, e.g. {key} = {{ model = \"{table['model']}\", "
                        f"pretrained = \"openai\" }}")
    return table


def _maybe(values: list | None, fn) -> tuple | None:
    return None if values is None else tuple(fn(v) for v in values)


def _sampler(name, kind: str) -> str:
    samplers = _known_samplers()
    if isinstance(name, (list, tuple)) or (isinstance(name, str) and "," in name):  # one per stage
        from imagen.config import normalize_sampler

        value = normalize_sampler(name, "axes.sampler")
        for part in value.split(","):
            _sampler(part, kind)
        return value
    if kind == "diffusers":
        from bench.generators.schedulers import NAMES

        samplers = NAMES
    if isinstance(name, str) and (name in samplers or (kind == "diffusers" and name.endswith("Scheduler"))):
        return name
    extra = " or a diffusers scheduler class name (e.g. EulerDiscreteScheduler)" if kind == "diffusers" else ""
    raise UserError(f"axes.sampler: unknown sampler {name!r}; choose from {', '.join(samplers)}{extra}")


def _steps(s) -> int:
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise UserError(f"axes.steps: {s!r} must be a positive integer")
    return s


def fill_axes(spec: GridSpec, defaults: SamplerConfig | None) -> GridSpec:
    """The spec with every axis it left out (None) set to the loaded model's own setting. A default that is itself
    None (a diffusers cascade's sampler, threshold and steps: each stage's own) leaves the axis None."""
    missing = [k for k in ("guidance", "threshold", "sampler", "steps", "aug_level", "distilled_guidance")
               if getattr(spec, k) is None]
    if not missing or not spec.has_axes:
        return spec
    d = defaults or SamplerConfig()
    dg = getattr(d, "distilled_guidance", None)
    own = {"guidance": d.guidance and (tuple(d.guidance),), "threshold": d.threshold and (d.threshold,),
           "sampler": d.sampler and (d.sampler,), "steps": d.steps and (int(d.steps),),
           "aug_level": d.aug_level and (tuple(d.aug_level),), "distilled_guidance": dg is not None and (dg,)}
    return dataclasses.replace(spec, **{k: own[k] or None for k in missing})


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
    if isinstance(v, str):  # a TOML basic string: JSON's escapes, but no surrogate pairs and no raw DEL
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
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
             f"seed = {spec.seed}", f"batch_size = {spec.batch_size}"]
    if spec.negative_prompt is not None:
        lines.append(f"negative_prompt = {_toml_value(spec.negative_prompt)}")
    lines += ["", "[axes]"]
    if spec.has_axes:  # an axis that is None is the model's own setting, and is left out as the user left it
        for key, value in (("guidance", spec.guidance and stage_list(spec.guidance)),
                           ("threshold", spec.threshold and list(spec.threshold)),
                           ("sampler", spec.sampler and list(spec.sampler)), ("steps", spec.steps and list(spec.steps)),
                           ("aug_level", spec.aug_level and stage_list(spec.aug_level)),
                           ("distilled_guidance", spec.distilled_guidance and list(spec.distilled_guidance))):
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
    lines += ["", "[metrics]"]
    m = spec.metrics
    lines.append(f"fid = {_toml_value(m.fid) if m.fid else 'false'}")
    lines.append(f"clip_score = {_toml_value(m.clip_score) if m.clip_score else 'false'}")
    lines.append(f"alignment = {_toml_value(m.alignment)}")
    for key, table in m.distribution().items():
        lines.append(f"{key} = {_toml_value(table)}")
    if spec.call:
        lines += ["", "[call]"] + [f"{k} = {_toml_value(v)}" for k, v in json.loads(spec.call).items()]
    return "\n".join(lines) + "\n"


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
    planned: dict = {}  # every run's cells (a study may have been run, or extended, with several specs)
    if store.COL_PLAN in runs:
        for text in runs[store.COL_PLAN].dropna():
            planned.update(json.loads(text))
    done = samples.groupby(store.COL_CELL_ID).size().to_dict() if len(samples) else {}
    nmet = metrics.groupby(store.COL_CELL_ID).size().to_dict() if len(metrics) else {}
    cells = []
    for cid in list(planned) + [c for c in done if c not in planned]:
        p = planned.get(cid, {})
        cells.append({"cell_id": cid, "guidance": p.get(store.COL_GUIDANCE_STAGES),
                      "threshold": p.get(store.COL_THRESHOLD), "sampler": p.get(store.COL_SAMPLER),
                      "steps": p.get(store.COL_STEPS), "aug_level": p.get(store.COL_AUG_LEVEL),
                      "distilled_guidance": p.get(store.COL_DISTILLED_GUIDANCE),
                      "planned": p.get("items"), "done": int(done.get(cid, 0)), "metric_rows": int(nmet.get(cid, 0))})
    total = sum(c["planned"] or 0 for c in cells)
    n_done = sum(min(c["done"], c["planned"] or c["done"]) for c in cells)
    return {"study": str(study), "name": runs[store.COL_NAME].iloc[-1] if len(runs) else None,
            "runs": int(len(runs)), "planned": total, "done": n_done, "complete": bool(total) and n_done >= total,
            "metric_rows": int(len(metrics)), "cells": cells}


def format_status(st: dict) -> str:
    lines = [f"study {st['study']} ({st['name']}): {st['done']}/{st['planned']} images, "
             f"{st['metric_rows']} metric rows, {st['runs']} run(s)" + (" - complete" if st["complete"] else "")]
    distilled = any(c.get("distilled_guidance") is not None for c in st["cells"])  # FLUX.1-dev's embedded guidance
    lines.append(f"{'cell':12}  {'guidance':>8}  " + (f"{'distilled':>9}  " if distilled else "")
                 + f"{'threshold':14} {'sampler':9} {'steps':>5}  {'done':>9}  metrics")
    for c in st["cells"]:
        dg = f"{str(c.get('distilled_guidance')):>9}  " if distilled else ""
        lines.append(f"{c['cell_id']:12}  {str(c['guidance']):>8}  {dg}{str(c['threshold']):14} {str(c['sampler']):9} "
                     f"{str(c['steps']):>5}  {c['done']:>4}/{str(c['planned']):<4}  {c['metric_rows']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the runner


def environment(device: str) -> tuple[dict, dict]:
    """(package versions, hardware) recorded with every run."""
    import platform

    import torch

    from bench.filehash import package_versions

    versions = package_versions()
    hardware = {"device": device, "machine": platform.machine(), "processor": platform.processor(),
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda"
                else None}
    return versions, hardware


def provenance(spec: GridSpec) -> dict:
    """What made the study's metrics besides the images: each feature extractor's weights sha256 (None: not on this
    machine yet) and protocol, each CLIP model's weights."""
    m = spec.metrics
    feats = [t for t in (m.fid, m.kid, m.prc) if t]
    clips = [t for t in (m.clip_score, m.cmmd, m.fd_clip) if t]
    out: dict = {}
    if feats:
        from bench.metrics.features import weights_sha256

        out["extractors"] = {t["extractor"]: weights_sha256(t["extractor"]) for t in feats}
        out["protocols"] = sorted({t.get("protocol", "clean") for t in feats})
    if clips:
        out["clip"] = sorted({f"{t['model']}:{t.get('pretrained') or 'shipped'}" for t in clips})
    return out


def check_metric_inputs(spec: GridSpec, prompts: list[Prompt], metrics: bool = True) -> None:
    """What the spec alone cannot check about its metrics: the references and the number of images per cell."""
    if not metrics:
        return
    for key, table in spec.metrics.distribution().items():
        check_reference(spec, prompts, table["reference"], f"metrics.{key}", need_images=True)
    if spec.metrics.fid:
        check_reference(spec, prompts, spec.metrics.fid["reference"], "metrics.fid")


def check_reference(spec: GridSpec, prompts: list[Prompt], ref, key: str, need_images: bool = False) -> None:
    """A metric's reference exists and the grid makes at least 2 images per cell to compare with it."""
    if need_images and isinstance(ref, str) and ref.endswith(".npz"):
        raise UserError(f"{key}.reference: {ref} is a statistics file; this metric needs the reference images "
                        f"(\"shapes\", a folder of images or a study folder)")
    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"{key}.reference: {ref!r}; use \"shapes\", a folder of images, a study folder or a "
                        f"statistics .npz file")
    if ref == "shapes":
        if world_suite(spec.suites) is None:
            raise UserError(f"{key}.reference = \"shapes\" needs the shapes suite in suites, e.g. "
                            "\"shapes:64\" (or \"shapes-hard:64\"); or give a folder of reference images")
        n_images = sum(p.suite in WORLD_SUITES for p in prompts) * spec.samples_per_prompt
    else:
        if not Path(ref).exists():
            raise UserError(f"{key}.reference: {ref} not found; give \"shapes\", a folder of images, a study "
                            f"folder or a statistics .npz file")
        n_images = len(prompts) * spec.samples_per_prompt
    if n_images < 2:
        raise UserError(f"{key}: needs at least 2 images per cell, this grid makes {n_images}; add prompts "
                        f"or raise samples_per_prompt")


def study_identity(spec: GridSpec, prompts: list[Prompt], model_hash: str | None = None) -> dict:
    """What a study folder is of: the spec seed, the suites' prompt ids (a hash), the model's checkpoint hash
    (None: not known yet, not checked)."""
    ids = sorted(p.prompt_id for p in prompts)
    out = {store.COL_SEED: int(spec.seed), store.COL_PROMPTS_HASH: hashlib.sha256("\n".join(ids).encode()).hexdigest(),
           store.COL_OPTIONS_HASH: hashlib.sha256(json.dumps([spec.negative_prompt, spec.call]).encode()).hexdigest()}
    if model_hash is not None:
        out[store.COL_CHECKPOINT_HASH] = model_hash
    return out


def check_same_study(out: Path, identity: dict, extend: bool) -> None:
    """A study is exactly its spec: a rerun into a folder made with another seed, prompt set or model is refused
    (its images would be reused or mixed into the metrics). `extend` adds other prompts or another model to it on
    purpose; never another seed, since an image is keyed by (cell, prompt, sample index) and would be reused."""
    if not (out / "tables" / store.STUDY).is_dir():
        return
    runs = store.read_table(out, store.STUDY)
    if not len(runs):
        return
    stored = {store.COL_SEED: _stored_seeds(runs),
              store.COL_PROMPTS_HASH: set(runs[store.COL_PROMPTS_HASH].dropna()) if store.COL_PROMPTS_HASH in runs
              else set(),
              store.COL_CHECKPOINT_HASH: set(runs[store.COL_CHECKPOINT_HASH].dropna())
              if store.COL_CHECKPOINT_HASH in runs else set(),
              store.COL_OPTIONS_HASH: set(runs[store.COL_OPTIONS_HASH].dropna()) if store.COL_OPTIONS_HASH in runs
              else set()}
    names = {store.COL_SEED: "seed", store.COL_PROMPTS_HASH: "prompt set (suites)",
             store.COL_CHECKPOINT_HASH: "model (checkpoint hash)",
             store.COL_OPTIONS_HASH: "negative prompt or [call] options"}
    for col, what in names.items():
        if col not in identity or (extend and col != store.COL_SEED):
            continue
        now_value = str(identity[col])
        before = sorted(str(v) for v in stored[col])
        if before and now_value not in before:  # a spec the study ran (or was extended with) resumes as before
            fix = "" if col == store.COL_SEED else ", or pass --extend to add it to that study on purpose"
            raise UserError(f"{out} is a study of another {what} ({before[-1][:16]}, now {now_value[:16]}); give "
                            f"another --out for this spec{fix}")


def _stored_seeds(runs) -> set[str]:
    """The spec seeds a study ran: its seed column, or, for rows written before that column, the stored spec's."""
    seeds = set()
    for k in range(len(runs)):
        v = runs[store.COL_SEED].iloc[k] if store.COL_SEED in runs else None
        if v is not None and v == v:  # not null / NaN
            seeds.add(str(int(v)))
        elif store.COL_SPEC in runs and isinstance(runs[store.COL_SPEC].iloc[k], str):
            try:
                seeds.add(str(int(tomllib.loads(runs[store.COL_SPEC].iloc[k]).get("seed", 0))))
            except (tomllib.TOMLDecodeError, TypeError, ValueError):
                pass
    return seeds


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
        with store.writer(out, prefix, wait=wait):  # one writer per study and shard
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
    done = generate.done_ids(out)
    complete = all(it.sample_id in done for it in items)
    summary = {"study": str(out), "cells": len(cells), "images": len(items), "generated": made,
               "complete": complete, "metric_rows": 0}
    if metrics and complete:
        summary["metric_rows"] = cell_metrics.compute_metrics(out, spec, prompts, items=items,
                                                              metric_fns=metric_fns, device=device,
                                                              progress=progress, prefix=prefix, log=log)
    elif metrics:
        log("other shards are still generating: metrics run when the last shard finishes "
            "(or rerun this command without --shard)")
    return summary


__all__ = ["GridSpec", "MetricsSpec", "Cell", "WorkItem", "parse_spec", "load_spec", "spec_to_toml", "expand",
           "work_items", "item_seed", "parse_shard", "in_shard", "plan", "status", "format_status", "fill_axes",
           "normalize_threshold", "check_metric_inputs", "run_grid", "study_identity"]
