"""Shared test setup: offline, the shared data folder, small thread counts, and common fixtures."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
_shared = Path(__file__).resolve().parents[2] / "shared" / "data"
if "IMAGEN_BENCH_DATA" not in os.environ and _shared.is_dir():
    os.environ["IMAGEN_BENCH_DATA"] = str(_shared)
# The suite's own cache (text embeddings, reference statistics, file hashes, eval studies), shared by its tests but
# never the user's ~/.cache/imagen-bench: what an earlier version left there must not decide a test.
if "IMAGEN_BENCH_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["IMAGEN_BENCH_CACHE"] = tempfile.mkdtemp(prefix="imagen-bench-test-cache-")
    atexit.register(shutil.rmtree, os.environ["IMAGEN_BENCH_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with drawbench/prompts.csv and coco/ (../shared/data in tests and CI)."""
    path = os.environ.get("IMAGEN_BENCH_DATA")
    if not path or not Path(path).is_dir():
        pytest.fail("IMAGEN_BENCH_DATA must point at the shared data folder (../shared/data)")
    return Path(path)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    import torch

    torch.manual_seed(0)
    yield
