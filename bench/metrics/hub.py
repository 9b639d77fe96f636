"""Judges' weights from a folder or the Hugging Face cache: where a detector, a vision-language model or a reward
model is found, and the metric-name part that says which one it is.

Nothing is downloaded while a study runs unless the hub is reachable and HF_HUB_OFFLINE is off; a judge that is not
here is one line naming the hub id to download and where to put it (the Hugging Face cache, HF_HOME, or a folder).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from imagen.errors import UserError


def slug(source: str) -> str:
    """A metric-name part for a judge: its hub repository's or folder's name, lower-case, [a-z0-9_]
    ("Qwen/Qwen2.5-VL-7B-Instruct" -> "qwen2_5_vl_7b_instruct")."""
    return re.sub(r"[^a-z0-9]+", "_", Path(source.rstrip("/")).name.lower()).strip("_")


def hub_folder(source: str, what: str, example: str, marker: str | tuple[str, ...] = "config.json") -> str:
    """A folder holding the judge (`marker`, config.json, beside its weights), or the hub id's snapshot in the
    Hugging Face cache; anything else is one line that says what to download and where. `what` names the judge
    ("GenEval's detector"), `example` is the spec line that points at a folder instead; a processor or tokenizer
    folder is known by its own marker files (any one of them: preprocessor_config.json, tokenizer_config.json)."""
    path = Path(source).expanduser()
    if path.is_dir():
        markers = (marker,) if isinstance(marker, str) else marker
        if not any((path / m).is_file() for m in markers):
            raise UserError(f"{what} folder {path} has no {' or '.join(markers)}; give a folder written by "
                            "save_pretrained")
        return str(path)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(source, local_files_only=offline())
    except Exception as exc:  # not found, gated, offline: huggingface_hub's own errors
        raise UserError(f"{what} {source!r} is not here ({type(exc).__name__}): run `huggingface-cli download "
                        f"{source}` on a machine with network and copy the Hugging Face cache here (or set HF_HOME), "
                        f"or give a folder: {example}") from None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_file(source: str, filename: str, what: str, example: str) -> str:
    """A weights file: `source` is the file itself, a folder holding `filename`, or a hub repository id whose
    `filename` is in the Hugging Face cache; anything else is one line that says what to download and where."""
    path = Path(source).expanduser()
    if path.is_file():
        return str(path)
    if path.is_dir():
        if not (path / filename).is_file():
            raise UserError(f"{what}: folder {path} has no {filename}; give the file itself: {example}")
        return str(path / filename)
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or source.startswith(("/", ".", "~")):
        raise UserError(f"{what}: no such file {path}; give the downloaded file: {example}")
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(source, filename, local_files_only=offline())
    except Exception as exc:  # not found, gated, offline: huggingface_hub's own errors
        raise UserError(f"{what} ({filename} of {source!r}) is not here ({type(exc).__name__}): run `huggingface-cli "
                        f"download {source} {filename}` on a machine with network and copy the Hugging Face cache "
                        f"here (or set HF_HOME), or give the file: {example}") from None


def file_sha256(path: str) -> str:
    """A weights file's sha256, remembered by path, size and mtime (a 2 GB checkpoint is read once)."""
    from bench.filehash import HashMemo

    memo = HashMemo()
    digest = memo.sha256(path)
    memo.save()
    return digest


def load_checkpoint(path: str, sha256: str, known: bool, what: str) -> dict:
    """A torch checkpoint's state_dict ({'state_dict': ...} or a bare one; a DDP 'module.' prefix dropped). Tensors
    only, unless the file is a published one (known: its sha256 is the published file's), whose other pickled
    entries are then allowed as its authors' own loader allows them."""
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not known:
            raise UserError(f"{what} weights {path} (sha256 {sha256[:8]}) hold more than tensors and are not the "
                            "published file: re-save its state_dict with torch.save, or use the published "
                            "file") from None
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise UserError(f"{what} weights {path}: not a torch checkpoint ({type(exc).__name__}: {exc})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise UserError(f"{what} weights {path}: no state_dict in it")
    return {k.removeprefix("module."): v for k, v in state.items()}


def fingerprint(source: str) -> str | None:
    """What a judge's files are, for the hash that keys its scores: its config's sha256 and each weights file's
    content hash (a hub snapshot's link names its blob, the file's LFS sha256; a folder's files are hashed, remembered
    by path, size and mtime). None when the judge is not here (its scorer is injected)."""
    try:
        folder = Path(hub_folder(source, "judge", ""))
    except UserError:
        return None
    parts = [hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()]
    for p in sorted(folder.iterdir()):
        if p.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            blob = Path(os.readlink(p)).name if p.is_symlink() and folder.parent.name == "snapshots" else None
            parts.append(f"{p.name}:{blob or file_sha256(str(p))}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


__all__ = ["slug", "hub_folder", "hub_file", "offline", "file_sha256", "load_checkpoint", "fingerprint"]
