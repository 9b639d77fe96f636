"""The grid spec: TOML text <-> a typed, frozen GridSpec (bench.work), every key checked in one line before any work.

An axis the spec leaves out is the model's own setting: an Imagen folder's sampler.toml, read here; a diffusers
pipeline's own scheduler and call defaults, filled in by fill_axes once it is loaded. `spec_to_toml` writes a spec
that `parse_spec` reads back to an equal one (stored with every study).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from bench.generators import kind_of, model_defaults
from bench.generators.base import canonical_call
from bench.suites import parse_name
from bench.work import (ClipTable, DiversityTable, FeatureTable, GenevalTable, GridSpec, HpsTable, ImageRewardTable,
                        MetricsSpec, PickscoreTable, VqaTable)
from imagen.config import SamplerConfig, normalize_threshold, toml_table
from imagen.errors import UserError

KNOWN_SAMPLERS = ("ddpm", "ddim", "dpmpp-2m")
TOP_KEYS = {"name", "model", "suites", "samples_per_prompt", "seed", "batch_size", "negative_prompt", "axes", "call",
            "metrics"}
AXIS_KEYS = {"guidance", "threshold", "sampler", "steps", "aug_level", "distilled_guidance"}
METRIC_KEYS = {"fid", "clip_score", "alignment", "kid", "prc", "cmmd", "fd_clip", "geneval", "vqascore",
               "fd_dinov2", "diversity", "pickscore", "hpsv2", "imagereward"}


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
    raw = toml_table(text, source)
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
    dinov2 = {**feat, "extractor": "dinov2-vit-l-14", "protocol": "clean"}
    fd_dinov2 = _feature_table(_metric_table(metrics.get("fd_dinov2"), "fd_dinov2", dinov2), "fd_dinov2")
    kid = _feature_table(_metric_table(metrics.get("kid"), "kid", feat, ("subset_size",)), "kid")
    prc = _feature_table(_metric_table(metrics.get("prc"), "prc", feat), "prc")
    cmmd = _clip_table(_metric_table(metrics.get("cmmd"), "cmmd", {**clip_model, "reference": feat["reference"]},
                                     ("pretrained",)), "cmmd")
    fd_clip = _clip_table(_metric_table(metrics.get("fd_clip"), "fd_clip",
                                        {**clip_model, "reference": feat["reference"]}, ("pretrained",)), "fd_clip")
    if kid and "subset_size" in kid and (isinstance(kid["subset_size"], bool) or not isinstance(
            kid["subset_size"], int) or kid["subset_size"] < 2):
        raise UserError(f"metrics.kid.subset_size: {kid['subset_size']!r} must be an integer >= 2")
    from bench.metrics.detectors import DEFAULT_DETECTOR

    geneval = _metric_table(metrics.get("geneval"), "geneval", {"detector": DEFAULT_DETECTOR, "clip": "ViT-L-14"},
                            ("pretrained",))
    if geneval and geneval["clip"] == "ViT-L-14" and "pretrained" not in geneval:
        geneval["pretrained"] = "openai"  # GenEval's colour classifier: CLIP ViT-L-14 with OpenAI's weights
    for k, v in (geneval or {}).items():
        if not isinstance(v, str) or not v.strip():
            raise UserError(f"metrics.geneval.{k}: {v!r} must be a non-empty string")
    vqascore = _vqascore_table(metrics.get("vqascore"))
    diversity = _diversity_table(metrics.get("diversity"), clip_model)
    pickscore, hpsv2, imagereward = _preference_tables(metrics)
    align = metrics.get("alignment", False)
    if not isinstance(align, bool):
        raise UserError("metrics.alignment: use true or false")
    return GridSpec(
        name=raw["name"].strip(), model=model, suites=tuple(s.strip() for s in suites),
        samples_per_prompt=ints["samples_per_prompt"], seed=ints["seed"], batch_size=ints["batch_size"],
        guidance=guidance, threshold=threshold, sampler=sampler, steps=steps, aug_level=aug,
        metrics=MetricsSpec(fid=_typed(FeatureTable, fid), clip_score=_typed(ClipTable, clip), alignment=align,
                            kid=_typed(FeatureTable, kid), prc=_typed(FeatureTable, prc), cmmd=_typed(ClipTable, cmmd),
                            fd_clip=_typed(ClipTable, fd_clip), geneval=_typed(GenevalTable, geneval),
                            vqascore=_typed(VqaTable, vqascore), fd_dinov2=_typed(FeatureTable, fd_dinov2),
                            diversity=_typed(DiversityTable, diversity), pickscore=_typed(PickscoreTable, pickscore),
                            hpsv2=_typed(HpsTable, hpsv2), imagereward=_typed(ImageRewardTable, imagereward)),
        distilled_guidance=distilled, negative_prompt=negative, call=canonical_call(call),
    )


def _preference_tables(metrics: dict) -> tuple:
    """[metrics] pickscore, hpsv2, imagereward: the learned human-preference scores, each with its weights."""
    from bench.metrics import hpsv2 as H
    from bench.metrics import pickscore as P

    pick = _metric_table(metrics.get("pickscore"), "pickscore",
                         {"model": P.DEFAULT_MODEL, "processor": P.DEFAULT_PROCESSOR}, ("dtype", "batch_size"))
    hps = _metric_table(metrics.get("hpsv2"), "hpsv2", {"version": H.DEFAULT_VERSION},
                        ("weights", "architecture", "dtype", "batch_size"))
    reward = _metric_table(metrics.get("imagereward"), "imagereward",
                           {"dtype": "auto", "tokenizer": "bert-base-uncased"}, ("weights", "med_config", "batch_size"))
    for key, table in (("pickscore", pick), ("hpsv2", hps), ("imagereward", reward)):
        for k, v in (table or {}).items():
            if k == "batch_size":
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise UserError(f"metrics.{key}.batch_size: {v!r} must be an integer >= 1")
            elif not isinstance(v, str) or not v.strip():
                raise UserError(f"metrics.{key}.{k}: {v!r} must be a non-empty string")
        if table and table.get("dtype", "auto") not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"metrics.{key}.dtype: {table['dtype']!r}; use auto, float32, bfloat16 or float16")
    if hps:
        H.release(hps["version"])
    return pick, hps, reward


def _diversity_table(value, clip_model: dict) -> dict | None:
    """[metrics] diversity: an embedding (default DINOv2 ViT-L/14); "clip" takes the CLIP score's model unless the
    table names its own."""
    from bench.metrics.diversity import EMBEDDINGS

    table = _metric_table(value, "diversity", {"embedding": "dinov2-vit-l-14"}, ("model", "pretrained"))
    if table is None:
        return None
    if table["embedding"] not in EMBEDDINGS:
        raise UserError(f"metrics.diversity.embedding: {table['embedding']!r}; choose one of {', '.join(EMBEDDINGS)}")
    if table["embedding"] == "clip":
        if "model" not in table:
            table.update(clip_model)
        _clip_table(table, "diversity")
    elif {"model", "pretrained"} & set(table):
        raise UserError("metrics.diversity: model and pretrained go with embedding = \"clip\"")
    return table


def _vqascore_table(value) -> dict | None:
    """[metrics] vqascore: the model (default Qwen2.5-VL-7B-Instruct), the paper's question, "Yes", dtype, batch."""
    from bench.metrics import vqascore as V

    table = _metric_table(value, "vqascore", {"model": V.DEFAULT_MODEL, "template": V.DEFAULT_TEMPLATE,
                                              "answer": V.DEFAULT_ANSWER}, ("dtype", "batch_size"))
    if table is None:
        return None
    for k in ("model", "template", "answer", "dtype"):
        if k in table and (not isinstance(table[k], str) or not table[k].strip()):
            raise UserError(f"metrics.vqascore.{k}: {table[k]!r} must be a non-empty string")
    V.check_template(table["template"])
    if table.get("dtype", "auto") not in V.DTYPES:
        raise UserError(f"metrics.vqascore.dtype: {table['dtype']!r}; use one of {', '.join(V.DTYPES)}")
    size = table.get("batch_size", 8)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(f"metrics.vqascore.batch_size: {size!r} must be an integer >= 1")
    return table


def _typed(cls, table: dict | None):
    """A checked [metrics] table as its frozen dataclass (None stays None)."""
    return cls(**table) if table else None


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

    allowed = {"fid": ("effnet-lite0", "inception"), "fd_dinov2": ("dinov2-vit-l-14",)}.get(
        key, ("effnet-lite0", "inception", "dinov2-vit-l-14"))
    if table["extractor"] not in allowed:
        raise UserError(f"metrics.{key}.extractor: {table['extractor']!r}; choose {' or '.join(allowed)}"
                        + (" (FD on DINOv2 features: fd_dinov2 = { reference = ... })" if key == "fid" else ""))
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
    if isinstance(v, Mapping):  # a dict, or a typed [metrics] table (bench.work.MetricTable)
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
    if m.geneval:
        lines.append(f"geneval = {_toml_value(m.geneval)}")
    if m.vqascore:
        lines.append(f"vqascore = {_toml_value(m.vqascore)}")
    if m.fd_dinov2:
        lines.append(f"fd_dinov2 = {_toml_value(m.fd_dinov2)}")
    if m.diversity:
        lines.append(f"diversity = {_toml_value(m.diversity)}")
    for key in ("pickscore", "hpsv2", "imagereward"):
        table = getattr(m, key)
        if table is not None:
            lines.append(f"{key} = {_toml_value(table)}")
    if spec.call:
        lines += ["", "[call]"] + [f"{k} = {_toml_value(v)}" for k, v in json.loads(spec.call).items()]
    return "\n".join(lines) + "\n"



__all__ = ["parse_spec", "load_spec", "spec_to_toml", "fill_axes", "TOP_KEYS", "AXIS_KEYS", "METRIC_KEYS"]
