"""The paper's findings, measured by the harness on its own offline model (`imagen-bench findings`).

Four findings of Saharia et al. 2022, each measured here and given a verdict (findings/report.py writes them up):

1. guidance trades fidelity against alignment (Figure A.11): a grid of w x {none, static, dynamic} on the model,
   alignment (the world's scorer, Wilson intervals) against FID;
2. dynamic thresholding beats static and none at large guidance (w >= 5), and its percentile p matters (a second
   grid over p at those weights);
3. noise-conditioning augmentation is critical for the SR stage: the SR stage trained with and without it
   (`--ablation no-aug`), sampled at aug levels 0 .. 0.5 on the base's own samples and on clean low-res renders
   (the oracle input: what the base costs);
4. a pretrained text encoder beats the same architecture randomly initialised (`--ablation random-text`), and
   cross-attention on the tokens beats the pooled vector alone (`--ablation pooled-text`): three bases trained by
   the same recipe and budget, scored at the base's resolution.

Every finding runs as grid studies (bench.grid, study folders under CACHE/studies, resumable, the seeds of every
study): 3-4 inject their generators (a cascade truncated to its base, SR stages on given low-res images, and the
inputs themselves as an image set), with FID against reference renders written once under CACHE/references.
Ablation models are trained by imagen.train with the same config and a flag, into CACHE/<name>, and reused when their
recipe (config, overrides, ablation, steps) is unchanged. Every part records its wall and CPU minutes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagen.errors import UserError

FINDINGS = (1, 2, 3, 4)


@dataclass(frozen=True)
class FindingsConfig:
    model: str = "shapes-hard2"  # the reference cascade of findings 1-3 (its base makes finding 3's low-res inputs)
    cache: str = "runs/findings-cache"
    n: int = 50  # held-out captions per cell
    seed: int = 0
    sampler: str | None = None  # None: the model's sampler.toml
    steps: int | None = None
    guidance: tuple[float, ...] = (1.0, 3.0, 5.0, 8.0)
    percentiles: tuple[float, ...] = (0.9, 0.99)  # finding 2's p sweep, beside finding 1's dynamic:0.995
    large_guidance: float = 5.0  # finding 2 looks at w >= this
    aug_levels: tuple[float, ...] = (0.0, 0.2, 0.4)
    text_guidance: tuple[float, ...] = (1.0, 3.0)  # finding 4 samples each base at these weights
    base_config: str = "configs/hard_base.toml"
    sr_config: str = "configs/hard_sr.toml"
    base_steps: int = 400  # finding 4: each of the three bases
    sr_steps: int | None = None  # finding 3: each SR stage (None: the SR config's steps)
    train_n: int | None = None  # training scenes of the ablation runs (None: the configs' [data] n)
    findings: tuple[int, ...] = FINDINGS
    device: str = "cpu"
    batch_size: int = 25
    progress: bool = True


@dataclass
class Timer:
    """Wall and CPU minutes of one part (CPU: this process's threads, as time.process_time counts them)."""

    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)

    def minutes(self) -> dict:
        return {"wall_minutes": round((time.perf_counter() - self.wall) / 60, 2),
                "cpu_minutes": round((time.process_time() - self.cpu) / 60, 2)}


# ----------------------------------------------------------------------------- training (cached)


def recipe_key(run) -> str:
    """A hash of everything a training run's weights depend on: its whole config after overrides and ablation
    (model, [train], [data]), not its out folder."""
    from imagen.train import config_to_toml_dict

    blob = {k: v for k, v in config_to_toml_dict(run).items() if k != "out"}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trained(config: str, name: str, cache: Path, steps: int, ablation: str | None, train_n: int | None,
            device: str, progress: bool, log=print) -> tuple[Path, dict]:
    """The run folder CACHE/NAME trained from `config` (+ ablation) for `steps`: reused when its recipe.json has this
    recipe's key, its state reached `steps` and its weights file has the recorded sha256; resumed when it stopped
    early (or trained afresh); a folder of another recipe is a UserError. Returns (folder, cost)."""
    from imagen.fileio import sha256_file
    from imagen.train import ablate, load_config, state_paths, train

    overrides: dict = {"train.steps": int(steps), "train.sample_every": 0}
    if train_n is not None:
        overrides["data.n"] = int(train_n)
    folder = cache / name
    recipe = folder / "recipe.json"
    run = load_config(config, {**overrides, "out": str(folder)})
    if ablation:
        run = ablate(run, ablation)
    key = recipe_key(run)
    _, jpath = state_paths(folder, run.train.stage)
    if recipe.is_file() and json.loads(recipe.read_text()).get("key") != key:
        raise UserError(f"{folder} holds a model of another recipe (its recipe.json differs); delete the folder or "
                        f"give another --cache")
    weights = folder / f"{run.train.stage}.safetensors"
    if jpath.is_file() and json.loads(jpath.read_text()).get("step") == steps and recipe.is_file():
        rec = json.loads(recipe.read_text())
        if rec.get("weights_sha256") not in (None, sha256_file(weights) if weights.is_file() else None):
            raise UserError(f"{weights} is not the file its recipe.json recorded (sha256 differs); delete {folder} "
                            f"to train it again")
        cost = rec.get("cost", {})
        log(f"findings: reusing {folder} ({run.train.stage}, {steps} steps{', ' + ablation if ablation else ''})")
        return folder, cost
    folder.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    log(f"findings: training {folder} ({run.train.stage}, {steps} steps{', ' + ablation if ablation else ''})")
    train(run, resume=True, device=device, progress=progress)
    cost = timer.minutes()
    from imagen.fileio import atomic_write

    atomic_write(recipe, lambda tmp: Path(tmp).write_text(json.dumps(
        {"key": key, "config": config, "overrides": overrides, "ablation": ablation, "cost": cost,
         "weights_sha256": sha256_file(weights)})))
    return folder, cost


# ----------------------------------------------------------------------------- pipelines


def _pipeline(folder_or_name: str, device: str, n_stages: int | None = None):
    """A Pipeline of a cascade folder whose stages may be partly trained (a missing stage keeps its seed-0 weights,
    and must not be sampled), truncated to its first n_stages."""
    import torch

    from imagen.checkpoint import checkpoint_hash, load_cascade, resolve, sampler_defaults
    from imagen.config import CascadeConfig
    from imagen.pipeline import Pipeline

    folder = resolve(folder_or_name)
    cascade = load_cascade(folder, "cpu", allow_missing=True)
    if n_stages is not None and n_stages < len(cascade.cfg.stages):
        from imagen.checkpoint import build_untrained

        cfg = CascadeConfig(cascade.cfg.name, cascade.cfg.text, cascade.cfg.stages[:n_stages])
        short = build_untrained(cfg)
        for k in range(n_stages):
            short.unets[k].load_state_dict(cascade.unets[k].state_dict())
        cascade = short
    cascade = cascade.to(torch.device(device)).eval()
    digest = checkpoint_hash(folder)
    if n_stages is not None:  # the first stages alone are another model: their images are not the cascade's
        digest = hashlib.sha256(f"{digest}/stages={n_stages}".encode()).hexdigest()
    return Pipeline(model_id=str(folder_or_name), checkpoint_hash=digest, cascade=cascade,
                    encoder=_encoder(cascade.cfg.text, device), sampler_defaults=sampler_defaults(folder))


@functools.cache
def _encoder(text_cfg, device: str):
    """One text encoder per config for the whole run (the pipelines of findings 3 and 4 share it)."""
    from imagen.text import EmbeddingCache, load_text_encoder

    return EmbeddingCache(load_text_encoder(text_cfg, device))


def _held_out(world_name: str, n: int, seed: int, size: int, base_res: int | None = None):
    """(captions, facts, categories, clean renders at `size`, the same box-filtered to base_res) of the held-out
    scenes."""
    from PIL import Image

    from imagen.worlds import get_world

    w = get_world(world_name)
    caps = w.held_out_captions(n, seed)
    data = w.dataset(seed, "heldout")
    full = [w.render(data.item(i)[0], size) for i in range(n)]
    low = None
    if base_res is not None:
        low = np.stack([np.asarray(Image.fromarray(im).resize((base_res, base_res), Image.BOX)) for im in full])
    return [c for c, _, _ in caps], [f for _, f, _ in caps], [c for _, _, c in caps], np.stack(full), low


def _reference_folder(cfg: FindingsConfig, name: str, images: np.ndarray) -> str:
    """Reference renders as a folder of PNGs under CACHE/references (written once, atomically per file): the FID
    reference of a findings study, read like any reference folder."""
    from PIL import Image

    from imagen.fileio import atomic_write

    folder = Path(cfg.cache) / "references" / name
    for k, im in enumerate(images):
        path = folder / f"{k:05d}.png"
        if not path.is_file():
            atomic_write(path, lambda tmp, im=im: Image.fromarray(im).save(tmp, format="PNG"))
    return str(folder)


class _Given:
    """Images that are inputs, not samples (a base's samples or clean renders, upsampled): a generator over them, so
    they are scored as a study like every sample set. `images` maps a prompt text to its image."""

    kind, axes, n_stages, sampler_defaults, uses_seeds = "images", frozenset(), None, None, False

    def __init__(self, label: str, images: dict):
        self.model_id = f"images:{label}"
        self.images = images
        self.checkpoint_hash = hashlib.sha256(b"".join(
            k.encode() + hashlib.sha256(np.ascontiguousarray(v).tobytes()).digest()
            for k, v in sorted(images.items()))).hexdigest()

    def generate(self, prompts, seeds, settings, *, keys=None, batch_size: int = 8):
        return [self.images[p] for p in prompts]


class _OnLowres:
    """A cascade whose SR stages start from given low-res images (per prompt text): Pipeline.generate(lowres=)
    behind the generator contract; the low-res source is part of its identity."""

    kind = "imagen"

    def __init__(self, pipe, lowres: dict, source: str):
        self.pipe, self.lowres = pipe, lowres
        self.model_id = pipe.model_id
        self.n_stages = len(pipe.cascade.cfg.stages)
        self.sampler_defaults = pipe.sampler_defaults
        self.axes = frozenset({"guidance", "threshold", "sampler", "steps", "aug_level"})
        self.checkpoint_hash = hashlib.sha256(f"{pipe.checkpoint_hash}/lowres={source}".encode()).hexdigest()

    def generate(self, prompts, seeds, settings, *, keys=None, batch_size: int = 8):
        import torch

        low = np.stack([self.lowres[p] for p in prompts])
        with torch.no_grad():
            return list(self.pipe.generate(list(prompts), list(seeds), settings, batch_size=batch_size, lowres=low))


def _study(cfg: FindingsConfig, name: str, world: str, gen, axes: dict | None, reference: str, log) -> str:
    """One findings study: the world's held-out captions through `gen` at `axes` (None: an image set), alignment and
    FID (effnet-lite0, clean) against the `reference` folder; CACHE/studies/NAME-<hash of spec and model>."""
    from bench.grid import parse_spec, run_grid
    from bench.spec import _toml_value

    lines = [f"name = {_toml_value('findings ' + name)}", f"model = {_toml_value(gen.model_id)}",
             f"suites = {_toml_value([f'{world}:{cfg.n}'])}", "samples_per_prompt = 1", f"seed = {int(cfg.seed)}",
             f"batch_size = {int(cfg.batch_size)}", "", "[axes]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in (axes or {}).items()]
    fid = {"extractor": "effnet-lite0", "reference": reference, "protocol": "clean"}
    text = "\n".join(lines + ["", "[metrics]", f"fid = {_toml_value(fid)}", "alignment = true", ""])
    key = hashlib.sha256((text + gen.checkpoint_hash).encode()).hexdigest()[:8]
    study = Path(cfg.cache) / "studies" / f"{name}-{key}"
    run_grid(parse_spec(text, f"findings {name}"), study, generator=gen, device=cfg.device, progress=cfg.progress,
             log=log)
    return str(study)


def _scores(study: str) -> dict:
    """{cell_id: {"alignment": {fact: {value, low, high, n}}, "fid": value, "settings": the cell's plan}} from the
    study's rows; the intervals are Wilson's from the share and n, as findings.report gives every cell's (a prompt
    bootstrap collapses to a point at 0 or 1)."""
    from bench import store
    from bench.metrics.alignment import wilson

    plan = json.loads(store.read_table(study, store.STUDY)[store.COL_PLAN].iloc[-1])
    metrics = store.read_table(study, store.METRICS)
    metrics = metrics[metrics[store.COL_CATEGORY].isna()].drop_duplicates(
        [store.COL_CELL_ID, store.COL_METRIC], keep="last")
    out = {}
    for cid, cell in plan.items():
        rows = metrics[metrics[store.COL_CELL_ID] == cid]
        align, fid = {}, None
        for _, r in rows.iterrows():
            name = r[store.COL_METRIC]
            if name.startswith("align_"):
                value, n = float(r[store.COL_VALUE]), int(r[store.COL_N])
                low, high = wilson(int(round(value * n)), n)
                align[name[len("align_"):]] = {"value": value, "low": low, "high": high, "n": n}
            elif name.startswith("fid_"):
                fid = float(r[store.COL_VALUE])
        out[cid] = {"alignment": align, "fid": fid, "settings": cell}
    return out


def _fid_name() -> str:
    from bench.metrics.features import parse_protocol
    from bench.metrics.fid import fid_metric_name

    return fid_metric_name("effnet-lite0", parse_protocol("clean"))


def _first(texts: list[str], images) -> dict:
    """{caption: its image}, the first image of a caption drawn twice (the suite keeps one prompt per caption)."""
    out: dict = {}
    for t, im in zip(texts, images):
        out.setdefault(t, im)
    return out


# ----------------------------------------------------------------------------- findings 1 and 2: grids


def spec_text(cfg: FindingsConfig, name: str, world: str, guidance, thresholds) -> str:
    """The TOML grid spec of one findings study."""
    axes = [f"guidance = [{', '.join(repr(float(g)) for g in guidance)}]",
            f"threshold = [{', '.join(json.dumps(t) for t in thresholds)}]"]
    if cfg.sampler:
        axes.append(f"sampler = [{json.dumps(cfg.sampler)}]")
    if cfg.steps:
        axes.append(f"steps = [{int(cfg.steps)}]")
    return "\n".join([
        f"name = {json.dumps('findings ' + name)}", f"model = {json.dumps(cfg.model)}",
        f"suites = [{json.dumps(f'{world}:{cfg.n}')}]", "samples_per_prompt = 1", f"seed = {int(cfg.seed)}",
        f"batch_size = {int(cfg.batch_size)}", "", "[axes]", *axes, "", "[metrics]",
        'fid = { extractor = "effnet-lite0", reference = "shapes", protocol = "clean" }', "alignment = true", ""])


def _grid(cfg: FindingsConfig, name: str, world: str, guidance, thresholds, log) -> str:
    """Run (or resume) one grid study CACHE/studies/NAME-<spec hash> (generation and metrics); returns its folder
    (its rows are read by findings.report through the store, like any report)."""
    from bench.grid import parse_spec, run_grid

    text = spec_text(cfg, name, world, guidance, thresholds)
    # one study per spec: a rerun with other settings (steps, weights, captions) gets its own folder, so a verdict
    # never mixes cells of two runs
    study = Path(cfg.cache) / "studies" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    spec = parse_spec(text, f"findings {name}")
    run_grid(spec, study, device=cfg.device, progress=cfg.progress, log=log)
    return str(study)


def finding_guidance(cfg: FindingsConfig, world: str, log=print) -> dict:
    timer = Timer()
    study = _grid(cfg, "guidance", world, cfg.guidance, ["none", "static", "dynamic:0.995"], log)
    return {"study": study, **timer.minutes()}


def finding_dynamic(cfg: FindingsConfig, world: str, log=print) -> dict:
    timer = Timer()
    large = [g for g in cfg.guidance if g >= cfg.large_guidance] or [max(cfg.guidance)]
    study = _grid(cfg, "percentile", world, large, [f"dynamic:{p!r}" for p in cfg.percentiles], log)
    return {"study": study, "large_guidance": large, **timer.minutes()}


# ----------------------------------------------------------------------------- finding 3: SR augmentation


def finding_sr_aug(cfg: FindingsConfig, world: str, log=print) -> dict:
    """SR with / without augmentation x aug levels x (the base's samples, clean low-res renders)."""
    timer = Timer()
    cache = Path(cfg.cache)
    steps = cfg.sr_steps
    if steps is None:
        from imagen.train import load_config

        steps = load_config(cfg.sr_config).train.steps
    costs = {}
    folders = {}
    for label, ablation in (("with augmentation", None), ("without augmentation", "no-aug")):
        folders[label], costs[label] = trained(cfg.sr_config, f"sr-{ablation or 'recipe'}-{steps}", cache, steps,
                                               ablation, cfg.train_n, cfg.device, cfg.progress, log)
    ref = _pipeline(cfg.model, cfg.device)
    base_res, res = ref.cascade.cfg.stages[0].resolution, ref.resolution
    prompts, _, _, clean, clean_low = _held_out(world, cfg.n, cfg.seed, res, base_res)
    reference = _reference_folder(cfg, f"{world}-{cfg.n}-{cfg.seed}-{res}", clean)
    settings = ref.sampler_defaults.given(sampler=cfg.sampler, steps=cfg.steps)
    first = _first_stage(settings)
    # the base's own samples: a study of the base alone (its images are the SR stages' inputs below)
    base = _pipeline(cfg.model, cfg.device, n_stages=1)
    base_study = _study(cfg, "sr-base", world, base, _axes(first), _reference_folder(
        cfg, f"{world}-{cfg.n}-{cfg.seed}-{res}-box{base_res}", clean_low), log)
    base_images = _images_by_prompt(base_study)
    lows = {"base samples": base_images, "oracle low-res": _first(prompts, clean_low)}
    out = {}
    for key, label in (("base_samples", "base samples"), ("oracle", "oracle low-res")):
        up = {p: _upsample(im[None], res)[0] for p, im in lows[label].items()}
        (scores,) = _scores(_study(cfg, f"sr-input-{key}", world, _Given(f"{key}-upsampled", up), None, reference,
                                   log)).values()
        out[key] = {"alignment": scores["alignment"], "fid": scores["fid"]}
    curves = []
    for label, folder in folders.items():
        pipe = _pipeline(str(folder), cfg.device)
        if pipe.resolution != res or pipe.cascade.cfg.stages[0].resolution != base_res:
            raise UserError(f"{folder} samples {pipe.resolution} px from {pipe.cascade.cfg.stages[0].resolution} px "
                            f"but {cfg.model} is {base_res} -> {res} px; give an --sr-config of the same cascade")
        for source, low in lows.items():
            source_hash = hashlib.sha256(b"".join(np.ascontiguousarray(low[p]).tobytes() for p in sorted(low)))
            gen = _OnLowres(pipe, low, f"{source}:{source_hash.hexdigest()}")
            axes = {**_axes(settings), "aug_level": [float(a) for a in cfg.aug_levels]}
            study = _study(cfg, f"sr-{'aug' if label.startswith('with ') else 'noaug'}-{source.split()[0]}", world,
                           gen, axes, reference, log)
            for cell in sorted(_scores(study).values(), key=lambda c: float(c["settings"]["aug_level"])):
                curves.append({"sr": label, "input": source, "aug_level": float(cell["settings"]["aug_level"]),
                               "alignment": cell["alignment"], "fid": cell["fid"], "study": study})
                log(f"findings 3: {label}, {source}, aug {curves[-1]['aug_level']:g}: overall "
                    f"{curves[-1]['alignment']['overall']['value']:.3f}, FID {curves[-1]['fid']:.2f}")
    return {"curves": curves, "reference_inputs": out, "fid_metric": _fid_name(), "sr_steps": steps,
            "base_study": base_study,
            "noise_aug_max": max(s.noise_aug_max for s in ref.cascade.cfg.stages[1:]),
            "training": costs, "settings": dataclasses.asdict(settings), **timer.minutes()}


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of uint8 images to `size` (the low-res input as a 64 px image: what the SR starts from)."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


# ----------------------------------------------------------------------------- finding 4: text conditioning


def finding_text(cfg: FindingsConfig, world: str, log=print) -> dict:
    """Three bases by one recipe and budget: pretrained MiniLM + cross-attention (the recipe), random-init MiniLM,
    pooled text only; sampled at the base's resolution at the weights cfg.text_guidance (the model's other settings)."""
    timer = Timer()
    cache = Path(cfg.cache)
    runs = {}
    costs = {}
    for label, ablation in (("pretrained MiniLM, cross-attention", None),
                            ("random-init MiniLM, cross-attention", "random-text"),
                            ("pretrained MiniLM, pooled vector only", "pooled-text")):
        runs[label], costs[label] = trained(cfg.base_config, f"base-{ablation or 'recipe'}-{cfg.base_steps}", cache,
                                            cfg.base_steps, ablation, cfg.train_n, cfg.device, cfg.progress, log)
    results = []
    settings = None
    # the scenes rendered at the cascade's last resolution and box-filtered to the base's, as the bases were trained
    from imagen.checkpoint import read_config

    stages = read_config(runs["pretrained MiniLM, cross-attention"]).stages
    _, _, _, _, clean = _held_out(world, cfg.n, cfg.seed, stages[-1].resolution, stages[0].resolution)
    reference = _reference_folder(cfg, f"{world}-{cfg.n}-{cfg.seed}-{stages[-1].resolution}-box"
                                       f"{stages[0].resolution}", clean)
    settings = _sampler_of(cfg)
    for label, folder in runs.items():
        pipe = _pipeline(str(folder), cfg.device, n_stages=1)
        axes = {**_axes(settings), "guidance": [float(w) for w in cfg.text_guidance]}
        study = _study(cfg, f"text-{label.split(',')[0].split()[0].lower()}-"
                            f"{'xattn' if 'cross' in label else 'pooled'}", world, pipe, axes, reference, log)
        for cell in sorted(_scores(study).values(), key=lambda c: float(c["settings"]["guidance"])):
            results.append({"base": label, "guidance": float(cell["settings"]["guidance"]),
                            "alignment": cell["alignment"], "fid": cell["fid"], "study": study})
            log(f"findings 4: {label}, w {results[-1]['guidance']:g}: overall "
                f"{results[-1]['alignment']['overall']['value']:.3f}")
    return {"results": results, "base_steps": cfg.base_steps, "training": costs, "fid_metric": _fid_name(),
            "settings": dataclasses.asdict(settings) if settings else None, **timer.minutes()}


def _axes(s) -> dict:
    """A SamplerConfig as a spec's [axes], one value each."""
    one = (lambda v: v[0] if len(v) == 1 else list(v))
    return {"sampler": [s.sampler], "steps": [int(s.steps)], "guidance": [one(tuple(s.guidance))],
            "threshold": [s.threshold], "aug_level": [one(tuple(s.aug_level))]}


def _images_by_prompt(study: str) -> dict:
    """{prompt text: its image} of a one-cell study."""
    from bench import store
    from bench.generate import load_images

    rows = store.read_table(study, store.SAMPLES, key=store.COL_SAMPLE_ID)
    images = load_images(study, list(rows[store.COL_IMAGE_PATH]))
    return dict(zip(rows[store.COL_PROMPT], images))


def _sampler_of(cfg: FindingsConfig):
    """The reference model's settings for its base stage alone (first per-stage values), --sampler / --steps over
    them."""
    from bench.generators import model_defaults

    return _first_stage(model_defaults(cfg.model).given(sampler=cfg.sampler, steps=cfg.steps))


def _first_stage(d):
    """A cascade's settings for its base stage alone (the first of each per-stage value)."""
    return dataclasses.replace(d, guidance=(d.guidance[0],), threshold=d.threshold.split(",")[0],
                               sampler=d.sampler.split(",")[0], aug_level=(0.0,))


# ----------------------------------------------------------------------------- all


def _check_world(config: str, world: str, model: str) -> None:
    """An ablation model must be trained on the reference model's world, or its scores would be of another world."""
    from imagen.train import load_config

    kind = load_config(config).data.kind
    if kind != world:
        raise UserError(f"{config} trains on [data] kind = {kind!r} but model {model!r} is of the {world!r} world; "
                        f"give --base-config / --sr-config of that world")



def run_findings(cfg: FindingsConfig, log=print) -> dict:
    """Measure the findings cfg.findings names; returns a JSON-ready dict (findings.report writes it up)."""
    from imagen.checkpoint import model_world_of

    bad = sorted(set(cfg.findings) - set(FINDINGS))
    if bad:
        raise UserError(f"--only: unknown finding(s) {bad}; choose from {list(FINDINGS)}")
    if cfg.n < 2:
        raise UserError(f"--n must be at least 2 (FID needs two images), got {cfg.n}")
    for path in (cfg.base_config, cfg.sr_config):
        if not Path(path).is_file():
            raise UserError(f"training config {path} not found (run from the repository root, or pass "
                            f"--base-config / --sr-config)")
    if 2 in cfg.findings and 1 not in cfg.findings:  # finding 2 compares against finding 1's none/static cells
        log("findings: finding 2 compares dynamic thresholding with finding 1's grid; measuring finding 1 too")
        cfg = dataclasses.replace(cfg, findings=tuple(sorted({1, *cfg.findings})))
    world = model_world_of(cfg.model)
    for path, stage in ((cfg.base_config, "base"), (cfg.sr_config, "SR")):
        if (3 in cfg.findings and stage == "SR") or (4 in cfg.findings and stage == "base"):
            _check_world(path, world, cfg.model)
    timer = Timer()
    out: dict = {"model": cfg.model, "world": world, "config": dataclasses.asdict(cfg)}
    parts = {1: ("guidance", finding_guidance), 2: ("dynamic", finding_dynamic), 3: ("sr_aug", finding_sr_aug),
             4: ("text", finding_text)}
    for k in cfg.findings:
        key, fn = parts[k]
        log(f"findings: measuring finding {k} ({key})")
        out[key] = fn(cfg, world, log)
    out["total"] = timer.minutes()
    return out


__all__ = ["FindingsConfig", "run_findings", "trained", "recipe_key", "FINDINGS"]
