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


def hub_folder(source: str, what: str, example: str) -> str:
    """A folder holding the judge (config.json beside its weights), or the hub id's snapshot in the Hugging Face
    cache; anything else is one line that says what to download and where. `what` names the judge ("GenEval's
    detector"), `example` is the spec line that points at a folder instead."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{what} folder {path} has no config.json; give a folder written by save_pretrained")
        return str(path)
    try:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        return snapshot_download(source, local_files_only=offline)
    except Exception as exc:  # not found, gated, offline: huggingface_hub's own errors
        raise UserError(f"{what} {source!r} is not here ({type(exc).__name__}): run `huggingface-cli download "
                        f"{source}` on a machine with network and copy the Hugging Face cache here (or set HF_HOME), "
                        f"or give a folder: {example}") from None


def fingerprint(source: str) -> str | None:
    """What a judge's files are, for the hash that keys its scores: its config's sha256 with each weights file's name
    and size (a hub snapshot: also its commit). None when the judge is not here (its scorer is injected)."""
    try:
        folder = Path(hub_folder(source, "judge", ""))
    except UserError:
        return None
    parts = [hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()]
    if folder.parent.name == "snapshots":
        parts.append(folder.name)
    parts += sorted(f"{p.name}:{p.stat().st_size}" for p in folder.iterdir()
                    if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


__all__ = ["slug", "hub_folder", "fingerprint"]
