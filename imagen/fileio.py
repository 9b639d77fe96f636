"""The file helpers every layer uses: an atomic write (and an atomic .npy), a file's sha256, the image suffixes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what counts as an image file in a folder


def atomic_write(dest: str | os.PathLike, write) -> None:
    """`write(tmp_path)`, then rename over `dest`: a reader sees the old file or the whole new one, never half."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint or shipped model must be readable by others
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy(path: str | os.PathLike, array) -> None:
    """An array as a .npy file, atomically (a cache entry is there whole or not at all)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    atomic_write(path, write)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
