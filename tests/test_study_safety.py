"""A study folder is safe against a second writer and a failing disk: one writer per study and shard (refused in one
line naming the holder, or --wait), a lock left by a killed process taken over, and a full disk, a read-only or a
vanished folder reported in one line with nothing half-written, the rerun resuming with every image exactly once."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import store
from bench.grid import parse_spec, run_grid
from imagen.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SPEC = 'name = "safe"\nmodel = "tiny"\nsuites = ["shapes:6"]\nbatch_size = 2\n[axes]\nguidance = [1.0, 3.0]\nsteps = 2\n'


class Gen:
    """A fast generator: an image is a function of its seed alone."""

    model_id, checkpoint_hash = "fake", "f" * 16

    def generate(self, prompts, seeds, settings):
        return np.stack([np.full((8, 8, 3), s % 251, np.uint8) for s in seeds])


def run(out, **kw):
    return run_grid(parse_spec(SPEC), out, generator=kw.pop("generator", Gen()), metrics=False, progress=False,
                    log=lambda *_: None, **kw)


def hold(study: Path, shard: str = "s0of1", seconds: float = 60.0) -> subprocess.Popen:
    """A child process that holds the study's writer lock for `seconds`; returns once it holds it."""
    code = ("import sys, time; from bench import store\n"
            f"with store.writer({str(study)!r}, {shard!r}):\n"
            "    print('held', flush=True)\n"
            f"    time.sleep({seconds})\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def rows(out) -> list[str]:
    return list(store.read_table(out, store.SAMPLES)[store.COL_SAMPLE_ID])


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "study"
    child = hold(out)
    try:
        with pytest.raises(UserError, match=f"being written by pid {child.pid} on .* since ") as exc:
            run(out)
        assert "\n" not in str(exc.value) and "--wait" in str(exc.value)
        assert not (out / "images").exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    summary = run(out)  # the dead holder's lock is taken over
    assert summary["complete"] and sorted(rows(out)) == sorted(set(rows(out))) and len(rows(out)) == 12


def test_wait_waits_for_the_holder(tmp_path):
    out = tmp_path / "study"
    child = hold(out, seconds=1.5)
    t0 = time.monotonic()
    assert run(out, wait=True)["complete"]
    assert time.monotonic() - t0 >= 1.0
    child.wait()


def test_another_shard_writes_beside_the_holder(tmp_path):
    out = tmp_path / "study"
    child = hold(out, shard="s0of2")
    try:
        summary = run(out, shard=(1, 2))
        assert summary["generated"] > 0 and not summary["complete"]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert run(out, shard=(0, 2))["complete"] and len(set(rows(out))) == len(rows(out)) == 12


def _temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.tmp")]


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"),
                                         (errno.EDQUOT, "quota")])
def test_a_failing_disk_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, code, words):
    """The disk gives out while the third batch's first image is written (its data is in the temp file, the
    fsync fails): the real write_atomic and the runner must leave nothing half-written."""
    out = tmp_path / "study"
    real = os.fsync
    calls = {"n": 0}

    def failing(fd):
        calls["n"] += 1  # 1: the study row; then per batch 2 images and 1 samples part
        if calls["n"] == 8:
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(UserError, match=words) as exc:
        run(out)
    msg = str(exc.value)
    assert "\n" not in msg and "MiB free on" in msg and "run the same command again" in msg
    assert not _temps(out)
    assert len(rows(out)) == 4  # two whole batches, nothing of the third
    monkeypatch.setattr(os, "fsync", real)
    assert run(out)["complete"]
    assert len(rows(out)) == len(set(rows(out))) == 12


def test_a_failing_table_write_leaves_no_part_and_no_temp(tmp_path, monkeypatch):
    """The real write_part: a full disk while the Parquet part is written leaves neither part nor temp file."""
    out = tmp_path / "study"
    real = store.pq.write_table
    calls = {"n": 0}

    def failing(table, where, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the study row, one samples part, then this one
            Path(where).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real(table, where, *a, **k)

    monkeypatch.setattr(store.pq, "write_table", failing)
    with pytest.raises(UserError, match="the disk is full"):
        run(out)
    assert not _temps(out) and len(rows(out)) == 2
    monkeypatch.setattr(store.pq, "write_table", real)
    assert run(out)["complete"] and len(rows(out)) == len(set(rows(out))) == 12


def test_a_vanished_study_folder_is_one_line_and_not_recreated(tmp_path):
    out = tmp_path / "study"

    class Vanishing(Gen):
        n = 0

        def generate(self, prompts, seeds, settings):
            Vanishing.n += 1
            if Vanishing.n == 2:
                shutil.rmtree(out)
            return super().generate(prompts, seeds, settings)

    with pytest.raises(UserError, match="vanished") as exc:
        run(out, generator=Vanishing())
    assert "\n" not in str(exc.value) and not out.exists()
    assert run(out)["complete"] and len(rows(out)) == 12


def test_cli_grid_run_refuses_a_second_writer_and_waits_with_wait(tmp_path, capsys):
    from imagen_bench import main

    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "study"
    child = hold(out)
    try:
        assert main(["grid", "run", str(spec), "--out", str(out), "--no-metrics"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {child.pid}" in err[0] and "--wait" in err[0]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_cli_reports_a_full_disk_in_one_line(tmp_path, capsys, monkeypatch):
    from imagen_bench import main

    out = tmp_path / "a.png"
    import imagen.fileio as fileio

    def full(dest, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))

    monkeypatch.setattr(fileio, "atomic_write", full)
    assert main(["sample", "--preset", "tiny", "--prompt", "a red circle", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the disk is full" in err[0] and "MiB free" in err[0] and not out.exists()


def test_a_study_of_an_earlier_schema_is_refused_with_how_to_rerun(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "study"
    run(out)
    old = out / "tables" / store.SAMPLES / ("s0of1-00000000000000000001-" + "0" * 32)
    table = pa.table({store.COL_SAMPLE_ID: ["x/y/0"]}).replace_schema_metadata({b"imagen_bench_schema": b"1"})
    pq.write_table(table, str(old) + ".parquet")
    with pytest.raises(UserError, match="result schema 1, this one reads 2.*grid run SPEC --out NEW"):
        store.read_table(out, store.SAMPLES)


def test_a_writer_with_another_number_of_shards_is_refused(tmp_path):
    """`--shard 0/1` beside a torchrun of two ranks would split the same work items twice."""
    out = tmp_path / "study"
    code = ("import sys, time; from bench import store\n"
            f"with store.writer({str(out)!r}, 's0of2', shards=2):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    try:
        with pytest.raises(UserError, match="being written in 2 shard"):
            run(out)
        assert run(out, shard=(1, 2))["generated"] > 0  # the same split, another shard: side by side
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert run(out)["complete"] and len(rows(out)) == len(set(rows(out))) == 12
