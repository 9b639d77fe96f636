"""Small fake studies and sessions for the DrawBench tests: real PNG files, DrawBench prompts from the data dir."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench import store


def drawbench_prompts(data_dir: Path, n: int | None = None) -> pd.DataFrame:
    """The first n DrawBench prompts taken round-robin over categories (so every category appears)."""
    df = pd.read_csv(Path(data_dir) / "drawbench" / "prompts.csv")
    df["prompt_id"] = [f"drawbench-{i:03d}" for i in range(len(df))]
    df["rank"] = df.groupby("category").cumcount()
    df = df.sort_values(["rank", "prompt_id"]).drop(columns="rank")
    return (df if n is None else df.head(n)).reset_index(drop=True)


def gradient(size: int, hue: float, seed: int) -> np.ndarray:
    """A smooth two-colour gradient with a soft disc: uint8 [size, size, 3], a stand-in for a generated image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    c0 = np.array([np.cos(hue), np.cos(hue + 2.1), np.cos(hue + 4.2)]) * 0.4 + 0.5
    c1 = rng.uniform(0.1, 0.9, 3)
    t = (xx * rng.uniform(0.3, 1) + yy * rng.uniform(0.3, 1))[..., None] / 2
    img = c0 * (1 - t) + c1 * t
    cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.15, 0.3)]
    disc = (((xx - cx) ** 2 + (yy - cy) ** 2) < r**2)[..., None]
    img = np.where(disc, 1 - img * 0.8, img)
    return (img * 255).clip(0, 255).astype(np.uint8)


def make_study(root: Path, prompts: pd.DataFrame, *, cells=("cell-a",), n_samples=4, hue=0.0, size=64) -> Path:
    """A study folder with a samples table (written with bench.store.write_part) and real PNG images."""
    root = Path(root)
    rows = []
    for cell in cells:
        for _, p in prompts.iterrows():
            for k in range(n_samples):
                seed = int(hashlib.sha256(f"{cell}/{p.prompt_id}/{k}".encode()).hexdigest()[:8], 16)
                rel = f"images/{cell}/{p.prompt_id}-{k}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(gradient(size, hue, seed)).save(root / rel)
                rows.append({store.COL_STUDY: root.name, store.COL_CELL_ID: cell,
                             store.COL_SAMPLE_ID: f"{cell}/{p.prompt_id}/{k}", store.COL_PROMPT_ID: p.prompt_id,
                             store.COL_PROMPT: p.prompt, store.COL_CATEGORY: p.category,
                             store.COL_SAMPLE_INDEX: k, store.COL_SEED: seed, store.COL_IMAGE_PATH: rel,
                             store.COL_SHA256: hashlib.sha256((root / rel).read_bytes()).hexdigest(),
                             store.COL_GUIDANCE: 1.0 + hue, store.COL_THRESHOLD: "dynamic:0.995"})
    store.write_part(root, store.SAMPLES, rows)
    return root


def make_session(tmp: Path, data_dir: Path, *, n_prompts=6, n_codes=2, attention_rate=0.0, password="org-pass",
                 n_systems=2, seed=0, per_set=4):
    """Two (or more) fake studies and a session built from them; returns (session, codes)."""
    from drawbench.pairs import build_session

    prompts = drawbench_prompts(data_dir, n_prompts)
    studies = [str(make_study(tmp / f"study{i}", prompts, hue=1.7 * i, n_samples=per_set)) for i in range(n_systems)]
    return build_session(studies, tmp / "session", names=[f"sys{i}" for i in range(n_systems)], per_set=per_set,
                         attention_rate=attention_rate, n_codes=n_codes, organiser_password=password, seed=seed,
                         open_access=not n_codes)


# ----------------------------------------------------------------------------- vote stores
POSTGRES_ENV = "DRAWBENCH_TEST_POSTGRES"  # a libpq connection string; the tests make and drop their own schemas


def postgres_conninfo() -> str:
    """The test PostgreSQL server, or a skip that says why (a failure in CI, where .ci/run starts one)."""
    import os

    import pytest

    conninfo = os.environ.get(POSTGRES_ENV)
    why = None
    if not conninfo:
        why = f"no PostgreSQL server for the vote-store tests: set {POSTGRES_ENV} (e.g. 'dbname=drawbench_test')"
    else:
        try:
            import psycopg

            with psycopg.connect(conninfo, connect_timeout=5):
                pass
        except Exception as exc:  # noqa: BLE001  (any reason the server cannot be used is a reason to skip)
            why = f"PostgreSQL at {POSTGRES_ENV}={conninfo!r} is not usable: {str(exc).splitlines()[0]}"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}; .ci/run starts one in CI")
        pytest.skip(f"{why}; .ci/run starts one in CI")
    return conninfo


def use_store(session, kind: str):
    """Put a fresh session's votes in the store of `kind` ("sqlite": as built; "postgres": a schema of its own);
    returns a function that removes the PostgreSQL schema again."""
    if kind == "sqlite":
        return lambda: None
    import psycopg

    from drawbench.postgres import use_postgres

    conninfo = postgres_conninfo()
    store = use_postgres(session, conninfo)

    def drop() -> None:
        with psycopg.connect(conninfo, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{store.db.schema}" CASCADE')

    return drop
