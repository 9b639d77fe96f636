"""Cascade checkpoints: a folder with config.json (the CascadeConfig) and <stage>.safetensors per trained stage.

The weights are the ones used for sampling (EMA weights when the trainer keeps them). Loading checks that every
file matches the config (keys and shapes); any problem is a UserError that says which file and what to do.
Shipped models live in imagen/weights/<name>/ and are read, never written, by this module.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from imagen.cascade import Cascade
from imagen.config import PRESETS, CascadeConfig, cascade_from_json, cascade_to_json
from imagen.errors import UserError
from imagen.fileio import atomic_write

CONFIG_FILE = "config.json"
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
           "load_stage", "resolve", "read_config", "CONFIG_FILE", "WEIGHTS_DIR"]
