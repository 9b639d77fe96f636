"""The generator contract: what the harness needs from anything that turns prompts into images.

A generator has
  kind             "imagen" | "diffusers" | "images" (or any name of a user's own)
  model_id         the model spec string the user gave (stored in every row)
  checkpoint_hash  a content hash of the weights (of the images, for a precomputed set): two generators with the
                   same hash make the same images from the same prompts, seeds and settings
  axes             the grid axes it honours, a subset of AXES; a spec that sets another is refused before any work
  options          the call options it honours, a subset of OPTIONS (negative_prompt, call); others are refused
  n_stages         stages of a cascade (per-stage guidance has one weight per stage, aug level one per SR stage)
  sampler_defaults the SamplerConfig it samples at where the user gives no setting (None: it has no settings)
  uses_seeds       False when the seed does not reach the images (a precomputed set)
  check(settings: list[SamplerConfig | None], requests: list[Request]) -> None
                   every setting and request it cannot honour is a one-line UserError, before any image is made
  describe(settings) -> dict
                   what it actually uses for one cell (e.g. the scheduler class and config, the call's arguments),
                   stored with the cell
  generate(prompts, seeds, settings, *, keys=None) -> Generated | uint8 array [B, H, W, 3] | list of [H, W, 3]
                   images[i] for prompts[i] from seeds[i], the same whatever batch it is made in; `keys` are the
                   (prompt_id, sample_index) of each image (a precomputed set looks images up by them)

Only `model_id`, `checkpoint_hash` and `generate` are required: `contract(g)` fills the rest with their defaults,
so a user's own object with those three benchmarks like any other (all axes, no checks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from imagen.config import SamplerConfig
from imagen.errors import UserError

AXES = frozenset({"guidance", "threshold", "sampler", "steps", "aug_level", "distilled_guidance"})
OPTIONS = frozenset({"negative_prompt", "call"})


@dataclass(frozen=True)
class Settings(SamplerConfig):
    """A cell's settings as the harness hands them to a generator: the sampling axes of SamplerConfig, plus what only
    some generators take (None: not set, the model's own):
      distilled_guidance  an embedded, distilled guidance value the denoiser is conditioned on (FLUX.1-dev's 3.5);
                          not classifier-free guidance, which stays `guidance`
      negative_prompt     the text the unconditional branch of classifier-free guidance is conditioned on
      call                other arguments of the model's call, as canonical JSON of a table (see call_options)"""

    distilled_guidance: float | None = None
    negative_prompt: str | None = None
    call: str | None = None

    def call_options(self) -> dict:
        return json.loads(self.call) if self.call else {}


def canonical_call(table: dict | None) -> str | None:
    """A [call] table as the canonical JSON a cell carries (None for none or an empty table)."""
    return json.dumps(table, sort_keys=True, separators=(",", ":")) if table else None


def as_settings(settings: SamplerConfig) -> "Settings":
    """A SamplerConfig (a model's own defaults) as Settings, so the options can be put over it with given()."""
    import dataclasses

    if isinstance(settings, Settings):
        return settings
    return Settings(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(SamplerConfig)})


def extras(settings) -> dict:
    """What a settings object sets beyond SamplerConfig's axes: {name: value} of the Settings fields that are set."""
    return {k: getattr(settings, k) for k in ("distilled_guidance", "negative_prompt", "call")
            if getattr(settings, k, None) is not None}


@dataclass(frozen=True)
class Request:
    """One image to make: the prompt, its noise seed, and which (prompt id, sample index) of the suite it is."""

    prompt: str
    seed: int
    prompt_id: str | None = None
    sample_index: int = 0


@dataclass
class Generated:
    """A batch of images and, per image, whether a safety checker replaced it (a blacked-out image)."""

    images: list  # uint8 [H, W, 3] each (sizes may differ in a precomputed set)
    flagged: list[bool] = field(default_factory=list)

    def __post_init__(self):
        if not self.flagged:
            self.flagged = [False] * len(self.images)


@dataclass
class Contract:
    """A generator seen through the contract: every optional member present."""

    impl: object
    kind: str
    model_id: str
    checkpoint_hash: str
    axes: frozenset
    options: frozenset
    n_stages: int | None
    sampler_defaults: SamplerConfig | None
    uses_seeds: bool
    takes_keys: bool = True  # generate() accepts keys=
    takes_batch_size: bool = True  # generate() accepts batch_size=

    def check(self, settings: list, requests: list[Request]) -> None:
        for s in settings:  # an option or axis this generator does not take would be stored but never honoured
            for key in extras(s):
                known = self.axes if key == "distilled_guidance" else self.options
                if key not in known:
                    what = f"axes.{key}" if key == "distilled_guidance" else key
                    raise UserError(f"{what}: model {self.model_id!r} ({self.kind}) does not take it; remove it "
                                    f"from the spec (it is honoured by diffusers pipelines that have it)")
        fn = getattr(self.impl, "check", None)
        if fn is not None:
            fn(settings, requests)
        elif self.n_stages:  # the default check: per-stage lists fit the stages
            for s in settings:
                check_stage_lists(s, self.n_stages, self.model_id)

    def describe(self, settings) -> dict:
        fn = getattr(self.impl, "describe", None)
        return fn(settings) if fn is not None else {}

    def generate(self, requests: list[Request], settings, batch_size: int = 8) -> Generated:
        prompts, seeds = [r.prompt for r in requests], [r.seed for r in requests]
        kw = {}  # a minimal generate(prompts, seeds, settings) gets neither
        if self.takes_keys:
            kw["keys"] = [(r.prompt_id, r.sample_index) for r in requests]
        if self.takes_batch_size:
            kw["batch_size"] = batch_size
        out = self.impl.generate(prompts, seeds, settings, **kw)
        return as_generated(out, len(requests))


def contract(generator) -> Contract:
    """The generator with every optional member of the contract filled in (a Contract passes through)."""
    if isinstance(generator, Contract):
        return generator
    for name in ("model_id", "checkpoint_hash", "generate"):
        if not hasattr(generator, name):
            raise TypeError(f"{type(generator).__name__} is not a generator: it has no {name!r}")
    return Contract(
        impl=generator, kind=str(getattr(generator, "kind", type(generator).__name__)),
        model_id=str(generator.model_id), checkpoint_hash=str(generator.checkpoint_hash),
        axes=frozenset(getattr(generator, "axes", AXES - {"distilled_guidance"})),
        options=frozenset(getattr(generator, "options", ())), n_stages=_n_stages(generator),
        sampler_defaults=getattr(generator, "sampler_defaults", SamplerConfig()),
        uses_seeds=bool(getattr(generator, "uses_seeds", True)), takes_keys=_takes(generator.generate, "keys"),
        takes_batch_size=_takes(generator.generate, "batch_size"))


def check_stage_lists(settings: SamplerConfig | None, n_stages: int, model_id: str) -> None:
    """Per-stage guidance, thresholding and sampler have one value or one per stage; the aug level one or one per
    SR stage."""
    if settings is None:
        return
    for key, values, n, what in (("axes.guidance", settings.guidance, n_stages, "stage"),
                                 ("axes.aug_level", settings.aug_level, n_stages - 1, "SR stage")):
        if len(values) > 1 and n > 0 and len(values) != n:
            raise UserError(f"{key}: {list(values)} has {len(values)} values but model {model_id!r} needs one value "
                            f"or {n} (one per {what})")
    for key, value in (("axes.threshold", settings.threshold), ("axes.sampler", settings.sampler)):
        parts = str(value).split(",") if value is not None else [None]
        if len(parts) > 1 and len(parts) != n_stages:
            raise UserError(f"{key}: {value!r} has {len(parts)} values but model {model_id!r} needs one value or "
                            f"{n_stages} (one per stage)")


def _n_stages(generator) -> int | None:
    n = getattr(generator, "n_stages", None)
    if n is None:  # an imagen.pipeline.Pipeline given as it is
        stages = getattr(getattr(getattr(generator, "cascade", None), "cfg", None), "stages", None)
        n = len(stages) if stages is not None else None
    return n


def _takes(fn, name: str) -> bool:
    import inspect

    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def as_generated(out, n: int) -> Generated:
    """Whatever a generator returned -> Generated, checked: n uint8 RGB images."""
    if not isinstance(out, Generated):
        out = Generated(list(out) if not isinstance(out, np.ndarray) else list(out))
    images = [np.asarray(im) for im in out.images]
    if len(images) != n or len(out.flagged) != n:
        raise RuntimeError(f"generator returned {len(images)} images ({len(out.flagged)} flags) for {n} prompts")
    for im in images:
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise RuntimeError(f"generator returned {im.dtype} {im.shape}; expected uint8 [H, W, 3]")
    return Generated(images, [bool(f) for f in out.flagged])


__all__ = ["AXES", "OPTIONS", "Settings", "as_settings", "canonical_call", "extras", "Request", "Generated",
           "Contract", "contract", "as_generated"]
