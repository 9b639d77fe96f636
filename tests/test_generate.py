"""Generation: batched and seeded, crash-safe under SIGKILL, resumable, and sharded across processes."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import store
from bench.generate import batches, done_ids, generate_items, png_bytes
from bench.grid import expand, parse_spec, work_items
from bench.suites import Prompt

# A stand-in model, run in subprocesses too: images depend only on (seed, guidance, threshold), like the pipeline.
SCRIPT = textwrap.dedent('''
    import hashlib, sys, time
    import numpy as np
    from bench.grid import load_spec, parse_shard, run_grid

    class Gen:
        model_id, checkpoint_hash = "fake", "f" * 64

        def generate(self, prompts, seeds, sampler, batch_size=8, progress=False):
            time.sleep(float(sys.argv[4]))
            t = int(hashlib.sha256(sampler.threshold.encode()).hexdigest()[:6], 16)
            return np.stack([np.random.default_rng([s, int(sampler.guidance[0] * 10), t]).integers(0, 256, (16, 16, 3))
                             for s in seeds]).astype(np.uint8)

    run_grid(load_spec(sys.argv[1]), sys.argv[2], shard=parse_shard(sys.argv[3]), generator=Gen(), metrics=False,
             progress=False, log=lambda m: None)
''')

SPEC = '''
name = "gen"
model = "fake"
suites = ["PROMPTS"]
samples_per_prompt = 2
seed = 1
batch_size = 3
[axes]
guidance = [1.0, 3.0]
threshold = ["none", "dynamic:0.99"]
'''


def _setup(tmp_path, n_prompts=5):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\n" + "".join(f"prompt number {i}\n" for i in range(n_prompts)), encoding="utf-8")
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace("PROMPTS", str(csv)), encoding="utf-8")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT, encoding="utf-8")
    return spec, script


def _run(script, spec, out, shard="0/1", sleep=0.0):
    return subprocess.Popen([sys.executable, str(script), str(spec), str(out), shard, str(sleep)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _check_study(out: Path, expected: int) -> dict:
    """Exactly one row per work item, every image readable and matching its sha256; {sample_id: sha256}."""
    rows = store.read_table(out, store.SAMPLES)
    assert len(rows) == expected and rows[store.COL_SAMPLE_ID].is_unique
    for path, sha in zip(rows[store.COL_IMAGE_PATH], rows[store.COL_SHA256]):
        data = (out / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        Image.open(out / path).load()
    assert not list(out.rglob("*.tmp"))
    return dict(zip(rows[store.COL_SAMPLE_ID], rows[store.COL_SHA256]))


def test_batches_keep_one_cell_and_the_size():
    spec = parse_spec(SPEC.replace("PROMPTS", "x.csv"))
    items = work_items(expand(spec, "h"), [Prompt("s", f"s-{i}", str(i)) for i in range(4)], 2, 0)
    bs = batches(items, 3)
    assert all(len(b) <= 3 and len({it.cell.id for it in b}) == 1 for b in bs)
    assert [it.sample_id for b in bs for it in b] == [it.sample_id for it in items]
    assert len(bs) == 4 * 3  # 8 items per cell -> 3 + 3 + 2


def test_png_bytes_are_deterministic_and_lossless():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    a, b = png_bytes(img), png_bytes(img.copy())
    assert a == b
    import io

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(a))), img)


def test_sigkill_mid_run_then_resume(tmp_path):
    spec, script = _setup(tmp_path)
    out = tmp_path / "study"
    proc = _run(script, spec, out, sleep=0.4)
    parts = out / "tables" / store.SAMPLES
    deadline = time.time() + 60
    while time.time() < deadline and not (parts.is_dir() and any(parts.glob("*.parquet"))):
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere inside a later batch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(done_ids(out))
    assert 0 < partial < 40, partial
    assert _run(script, spec, out).wait() == 0
    shas = _check_study(out, 4 * 5 * 2)
    # the same images as an uninterrupted run
    clean = tmp_path / "clean"
    assert _run(script, spec, clean).wait() == 0
    assert _check_study(clean, 40) == shas


def test_orphan_images_are_regenerated_and_done_items_skipped(tmp_path):
    spec_path, _ = _setup(tmp_path, n_prompts=3)
    from bench.grid import load_spec
    from bench.suites import load_suite

    spec = load_spec(spec_path)
    prompts = load_suite(spec.suites[0])
    items = work_items(expand(spec, "h"), prompts, 2, 1)

    class Gen:
        calls = 0
        model_id, checkpoint_hash = "m", "h"

        def generate(self, prompts, seeds, sampler, batch_size=8, progress=False):
            Gen.calls += len(seeds)
            return np.stack([np.full((4, 4, 3), s % 256, np.uint8) for s in seeds])

    out = tmp_path / "s"
    assert generate_items(out, items, Gen(), study_name="s", model="m", batch_size=4, progress=False) == 24
    last = store.part_files(out, store.SAMPLES)[-1]
    import pyarrow.parquet as pq

    lost = pq.read_metadata(last).num_rows
    last.unlink()  # as if killed after the images but before the rows: orphan images
    (out / "images" / items[0].cell.id / ".s0of1-x.png.tmp").write_bytes(b"partial")
    Gen.calls = 0
    made = generate_items(out, items, Gen(), study_name="s", model="m", batch_size=4, progress=False)
    assert made == Gen.calls == lost > 0  # only the items whose rows were lost
    _check_study(out, 24)
    assert generate_items(out, items, Gen(), study_name="s", model="m", progress=False) == 0


def test_two_concurrent_shards_equal_one_process(tmp_path):
    spec, script = _setup(tmp_path, n_prompts=4)
    out = tmp_path / "sharded"
    procs = [_run(script, spec, out, shard=f"{i}/2", sleep=0.05) for i in range(2)]
    assert [p.wait() for p in procs] == [0, 0]
    names = {p.name.split("-")[0] for p in store.part_files(out, store.SAMPLES)}
    assert names == {"s0of2", "s1of2"}  # each shard wrote its own part files
    single = tmp_path / "single"
    assert _run(script, spec, single).wait() == 0
    assert _check_study(out, 32) == _check_study(single, 32)
