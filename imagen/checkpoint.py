"""Cascade checkpoints: a folder with config.json (the CascadeConfig) and <stage>.safetensors per trained stage.

The weights are the ones used for sampling (EMA weights when the trainer keeps them). Loading checks that every
file matches the config (keys and shapes); any problem is a UserError that says which file and what to do.
Shipped models live in imagen/weights/<name>/ and are read, never written, by this module.

A folder may also hold sampler.toml: the sampler settings the model is meant to be sampled with (the fields of
SamplerConfig). They replace the global SamplerConfig defaults for that model; a setting given on the command line
or in a grid spec replaces them in turn. They are not part of the checkpoint hash: results record the settings used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch

from imagen.cascade import Cascade
from imagen.config import PRESETS, CascadeConfig, SamplerConfig, cascade_from_json, cascade_to_json, normalize_threshold
from imagen.errors import UserError
from imagen.fileio import atomic_write

CONFIG_FILE = "config.json"
SAMPLER_FILE = "sampler.toml"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_models() -> list[str]:
    """Names of the models shipped in imagen/weights/ (folders with a config.json)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def resolve(path_or_name: str | os.PathLike) -> Path:
    """The checkpoint folder for a folder path or a shipped model name."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"{path} is not a checkpoint: it has no {CONFIG_FILE}; give a folder written by "
                            f"`imagen-bench train` (config.json + <stage>.safetensors)")
        return path
    name = str(path_or_name)
    if name in shipped_models():
        return WEIGHTS_DIR / name
    raise UserError(f"no checkpoint {name!r}: not a folder and not a shipped model; shipped models: "
                    f"{', '.join(shipped_models()) or '(none)'}; untrained presets: {', '.join(PRESETS)}")


def model_world_of(model: str | os.PathLike) -> str:
    """The world (imagen.worlds) a model was trained on: its folder's world.txt; `shapes` for presets, diffusers
    pipelines and folders without the file."""
    from imagen.worlds import DEFAULT_WORLD, model_world

    path = Path(model).expanduser()
    if path.is_dir():
        return model_world(path)
    if str(model) in shipped_models():
        return model_world(WEIGHTS_DIR / str(model))
    return DEFAULT_WORLD


def save_cascade(cascade: Cascade, folder: str | os.PathLike, stages: list[str] | None = None) -> Path:
    """Write config.json and <stage>.safetensors for `stages` (default: all) into `folder`; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [st.name for st in cascade.cfg.stages]
    for name in stages or names:
        if name not in names:
            raise UserError(f"cascade {cascade.cfg.name!r} has no stage {name!r}; stages: {names}")
    existing = folder / CONFIG_FILE
    text = cascade_to_json(cascade.cfg)
    if existing.is_file() and existing.read_text() != text:
        others = [n for n in names if n not in (stages or names) and (folder / f"{n}.safetensors").exists()]
        if others:
            raise UserError(f"{folder} holds a checkpoint of a different config with weights for {others}; "
                            f"save into an empty folder")
    atomic_write(existing, lambda tmp: Path(tmp).write_text(text))
    for name in stages or names:
        unet = cascade.unets[names.index(name)]
        sd = {k: v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}
        atomic_write(folder / f"{name}.safetensors",
                      lambda tmp, sd=sd, name=name: save_file(sd, tmp, metadata={"stage": name, "format": "pt"}))
    return folder


def read_config(folder: Path) -> CascadeConfig:
    """The CascadeConfig in folder/config.json; unreadable or invalid JSON is a UserError."""
    path = folder / CONFIG_FILE
    try:
        return cascade_from_json(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing; a checkpoint folder needs config.json next to its weights") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path} is not a valid cascade config ({type(exc).__name__}: {exc}); "
                        f"restore it from the training run or save the checkpoint again") from None


def parse_sampler_defaults(text: str, source: str) -> SamplerConfig:
    """SamplerConfig with the settings in a sampler.toml text; every mistake is a one-line UserError."""
    from imagen.config import toml_table
    from imagen.sampling import check_sampler

    raw = toml_table(text, source, "fix it or delete the file to use the global sampler defaults")
    known = [f.name for f in dataclasses.fields(SamplerConfig)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {unknown}; known: {known}")

    def floats(key: str, low: float, high: float | None) -> tuple[float, ...]:
        values = raw[key] if isinstance(raw[key], list) else [raw[key]]
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 for v in values):
            raise UserError(f"{source}: {key} must be a finite number or a list of them, got {raw[key]!r}")
        if any(v < low or (high is not None and v > high) for v in values):
            bounds = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
            raise UserError(f"{source}: {key} values must be {bounds}, got {raw[key]!r}")
        return tuple(float(v) for v in values)

    kwargs: dict = {}
    if "sampler" in raw:
        try:  # one name, or one per stage (a list)
            kwargs["sampler"] = check_sampler(raw["sampler"], "sampler")
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
    if "steps" in raw:
        if isinstance(raw["steps"], bool) or not isinstance(raw["steps"], int) or raw["steps"] < 1:
            raise UserError(f"{source}: steps must be a positive integer, got {raw['steps']!r}")
        kwargs["steps"] = raw["steps"]
    if "threshold" in raw:
        try:
            kwargs["threshold"] = normalize_threshold(raw["threshold"], "threshold")
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
    if "guidance" in raw:
        kwargs["guidance"] = floats("guidance", 0.0, None)
    if "aug_level" in raw:
        kwargs["aug_level"] = floats("aug_level", 0.0, 1.0)
    return SamplerConfig(**kwargs)


def sampler_defaults(model: str | os.PathLike) -> SamplerConfig:
    """The sampler settings a model is sampled with when none are given: the folder's sampler.toml over the global
    SamplerConfig defaults. A preset, or a folder without the file, gets the global defaults. Reads no weights."""
    path = Path(model).expanduser()
    if path.is_dir():
        folder = path
    elif str(model) in shipped_models():
        folder = WEIGHTS_DIR / str(model)
    else:
        return SamplerConfig()
    file = folder / SAMPLER_FILE
    if not file.is_file():
        return SamplerConfig()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read it ({exc}); fix or delete the file") from None
    cfg = parse_sampler_defaults(text, str(file))
    if (folder / CONFIG_FILE).is_file():  # per-stage lists must fit the model they belong to
        n = len(read_config(folder).stages)
        for key, values, want in (("guidance", cfg.guidance, n), ("aug_level", cfg.aug_level, n - 1)):
            if want and len(values) != 1 and len(values) != want:
                raise UserError(f"{file}: {key} has {len(values)} values but this model needs one value or {want} "
                                f"(one per {'stage' if key == 'guidance' else 'SR stage'})")
        from imagen.config import toml_table

        raw = toml_table(text, str(file))  # the lists as written: equal values collapse in cfg, their count must fit
        for key in ("threshold", "sampler"):
            value = raw.get(key, getattr(cfg, key))
            parts = value if isinstance(value, list) else str(value).split(",")
            if len(parts) not in (1, n):
                raise UserError(f"{file}: {key} has {len(parts)} values but this model needs one value or {n} "
                                f"(one per stage)")
    return cfg


def load_stage(unet: torch.nn.Module, path: Path, device="cpu") -> None:
    """Load one stage's <stage>.safetensors into `unet`, checking keys and shapes; problems are UserErrors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path} is corrupt or not a safetensors file ({exc}); copy it again or retrain "
                        f"that stage") from None
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        raise UserError(f"{path} does not match config.json: missing keys {missing[:5]}, unexpected keys "
                        f"{extra[:5]}; the weights were saved for another config")
    for key, value in expected.items():
        if sd[key].shape != value.shape:
            raise UserError(f"{path} does not match config.json: {key} has shape {tuple(sd[key].shape)}, the "
                            f"config needs {tuple(value.shape)}; the weights were saved for another config")
    unet.load_state_dict(sd)


def load_cascade(path_or_name: str | os.PathLike, device: torch.device | str = "cpu", *,
                 allow_missing: bool = False, make_unet=None) -> Cascade:
    """The cascade in a checkpoint folder (or shipped model name) with its weights, in eval mode on `device`.

    A stage without a weights file is an error unless allow_missing (the trainer resuming a partial cascade);
    such stages keep the deterministic seed-0 initialisation.
    """
    folder = resolve(path_or_name)
    cfg = read_config(folder)
    cascade = build_untrained(cfg, make_unet=make_unet)
    for st, unet in zip(cfg.stages, cascade.unets):
        path = folder / f"{st.name}.safetensors"
        if not path.is_file():
            if allow_missing:
                continue
            raise UserError(f"{folder} has no weights for stage {st.name!r} (expected {path.name}); train that "
                            f"stage with `imagen-bench train` or copy the file into the folder")
        load_stage(unet, path, "cpu")
    return cascade.to(device).eval()


def build_untrained(cfg: CascadeConfig, make_unet=None) -> Cascade:
    """A cascade with deterministic initial weights (CPU generator seeded 0); the global RNG state is restored.

    Only the CPU generator is seeded (the weights are built on the CPU): torch.manual_seed would also reseed every
    CUDA generator, and those are not restored here.
    """
    state = torch.random.get_rng_state()
    try:
        torch.random.default_generator.manual_seed(0)
        return Cascade(cfg, make_unet=make_unet).eval()
    finally:
        torch.random.set_rng_state(state)


def checkpoint_hash(folder: str | os.PathLike) -> str:
    """sha256 (hex) of config.json and every stage's weights file, in stage order."""
    folder = resolve(folder)
    cfg = read_config(folder)
    h = hashlib.sha256()
    h.update((folder / CONFIG_FILE).read_bytes())
    for st in cfg.stages:
        path = folder / f"{st.name}.safetensors"
        if path.is_file():
            h.update(st.name.encode() + b"\x00")
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def config_hash(cfg: CascadeConfig) -> str:
    """sha256 of an untrained preset's identity: its config and the seed-0 initialisation."""
    return hashlib.sha256(("untrained-seed-0\x00" + cascade_to_json(cfg)).encode()).hexdigest()


__all__ = ["save_cascade", "load_cascade", "checkpoint_hash", "config_hash", "build_untrained", "shipped_models",
           "load_stage", "resolve", "read_config", "sampler_defaults", "model_world_of", "parse_sampler_defaults", "CONFIG_FILE",
           "SAMPLER_FILE", "WEIGHTS_DIR"]
