"""Content hashes of files, remembered by (path, size, mtime) so a second pass over the same files reads none."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from imagen.fileio import atomic_write, sha256_file


def cache_file() -> Path:
    root = os.environ.get("IMAGEN_BENCH_CACHE") or Path.home() / ".cache" / "imagen-bench"
    return Path(root) / "file-hashes.json"


class HashMemo:
    """sha256 of files keyed by (resolved path, size, mtime_ns); `save()` writes the memo atomically."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else cache_file()
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self.entries = data
        except (OSError, ValueError):
            pass

    def sha256(self, path: Path | str, verify: bool = False) -> str:
        p = Path(path).resolve()
        st = p.stat()
        key = str(p)
        entry = self.entries.get(key)
        if not verify and entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return entry[2]
        digest = sha256_file(p)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(self.entries)))
            self.dirty = False
        except OSError:  # a read-only cache only costs speed
            pass


def digest_of(items) -> str:
    """sha256 of a canonical JSON of `items` (e.g. [(key, file sha256), ...])."""
    return hashlib.sha256(json.dumps(items, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


PACKAGES = ("imagen-bench", "torch", "numpy", "scipy", "pyarrow", "pillow", "transformers", "diffusers",
            "torch-fidelity", "clean-fid", "open-clip-torch")


def package_versions() -> dict:
    """The versions of the packages a number depends on (None: not installed), recorded with results."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out
