"""The result store: the ONLY code that reads and writes result tables.

A study is a folder:

    STUDY/
      tables/<table>/<prefix>-<time_ns>-<uuid>.parquet   one Parquet file per flush, written atomically (temp
                                         file + rename); the time in the name orders the parts by when they were
                                         written, whatever the writer's prefix
      images/<cell_id>/<prompt_id>-<sample_index>.png

A table is the union of its part files, read as one dataset. Rows are never updated in place: a writer appends a
new part; a reader that needs one row per key keeps the last. Column names are the constants below. Every part
records the result schema it was written with (SCHEMA_VERSION); a study of another schema is refused in one line
that says how to rerun it, never read half-understood.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from imagen.errors import UserError

SCHEMA_VERSION = 2  # 2: the result tables of imagen-bench 0.2 (studies of 0.1 are refused, with how to rerun)

# ----------------------------------------------------------------------------- table names
SAMPLES = "samples"  # one row per generated image
METRICS = "metrics"  # one row per (cell, metric, category) value
STUDY = "study"  # one row per run of the grid: spec, software versions, hardware
SCORES = "scores"  # one row per (image, per-image scorer): CLIP score, GenEval's verdict, VQAScore (bench.image_scores)
TABLES = (SAMPLES, METRICS, STUDY, SCORES)

# ----------------------------------------------------------------------------- column names (shared)
COL_STUDY = "study"
COL_CELL_ID = "cell_id"
COL_CATEGORY = "category"
COL_N = "n"

# samples
COL_SAMPLE_ID = "sample_id"  # "<cell_id>/<prompt_id>/<sample_index>": the key of a work item
COL_MODEL = "model"
COL_CHECKPOINT_HASH = "checkpoint_hash"
COL_SAMPLER = "sampler"
COL_STEPS = "steps"
COL_GUIDANCE = "guidance"  # base-stage weight (float), the figure's x axis
COL_GUIDANCE_STAGES = "guidance_stages"  # every stage's weight, e.g. "5,3"
COL_THRESHOLD = "threshold"  # "none" | "static" | "dynamic:0.995"
COL_AUG_LEVEL = "aug_level"  # SR augmentation level(s), e.g. "0" or "0,0.1"
COL_DISTILLED_GUIDANCE = "distilled_guidance"  # embedded guidance value (FLUX.1-dev), null where none
COL_SUITE = "suite"
COL_PROMPT_ID = "prompt_id"
COL_PROMPT = "prompt"
COL_SAMPLE_INDEX = "sample_index"
COL_SEED = "seed"
COL_IMAGE_PATH = "image_path"  # relative to the study folder
COL_SHA256 = "sha256"
COL_SECONDS = "seconds"
COL_CREATED = "created"

# metrics
COL_METRIC = "metric"  # name carries its extractor/model: fid_effnet_lite0, clip_score_shapes_clip, align_color
COL_VALUE = "value"
COL_LOW = "ci_low"  # 95% interval, null where none applies
COL_HIGH = "ci_high"

# study
COL_SPEC = "spec"  # the grid spec as TOML text
COL_VERSIONS = "versions"  # JSON: package versions
COL_HARDWARE = "hardware"  # JSON: device, cpu, torch threads


def table_dir(study: Path | str, table: str) -> Path:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    return Path(study) / "tables" / table


def write_part(study: Path | str, table: str, rows: list[dict] | pa.Table, prefix: str = "part") -> Path | None:
    """Append rows to a table as one new part file, atomically: a reader sees all of it or none of it."""
    tbl = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
    if tbl.num_rows == 0:
        return None
    tbl = tbl.replace_schema_metadata({b"imagen_bench_schema": str(SCHEMA_VERSION).encode()})
    folder = table_dir(study, table)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}-{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{name}.tmp"
    try:
        pq.write_table(tbl, tmp)
        with open(tmp, "rb") as fh:  # the data must be on disk before the rename makes it visible
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
    except BaseException:  # a full disk, a killed write: no half part, no temp file left behind
        tmp.unlink(missing_ok=True)
        raise
    return folder / name


_PART_TIME = re.compile(r"-(\d{20})-[0-9a-f]{32}\.parquet$")


def _write_order(part: Path) -> tuple[int, str]:
    """Sort key: the write time in the part's name (a part without one sorts first)."""
    m = _PART_TIME.search(part.name)
    return (int(m.group(1)) if m else 0), part.name


def part_files(study: Path | str, table: str) -> list[Path]:
    """A table's parts in the order they were written (so "keep the last" keeps the newest row)."""
    folder = table_dir(study, table)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.parquet") if not p.name.startswith(".")), key=_write_order)


def read_arrow(study: Path | str, table: str) -> pa.Table:
    """Every part of a table as one Arrow table; parts with fewer columns get nulls (schema growth)."""
    parts = part_files(study, table)
    if not parts:
        return pa.table({})
    tables = []
    for p in parts:
        try:
            t = pq.read_table(p)
        except (OSError, pa.ArrowInvalid) as exc:
            raise UserError(f"unreadable result file {p}: {exc}; delete it and rerun to regenerate its rows") from exc
        version = (t.schema.metadata or {}).get(b"imagen_bench_schema", b"0").decode()
        if version != str(SCHEMA_VERSION):
            raise UserError(f"{Path(study)} was written by another imagen-bench (result schema {version}, this one "
                            f"reads {SCHEMA_VERSION}); its rows are not read: run its spec again into a new folder "
                            f"(imagen-bench grid run SPEC --out NEW; the spec is in its tables/study rows)")
        tables.append(t)
    return pa.concat_tables(tables, promote_options="default")


def read_table(study: Path | str, table: str, key: str | None = None):
    """A table as a pandas DataFrame; with `key`, only the last row written for each key value."""
    df = read_arrow(study, table).to_pandas()
    if key is not None and len(df) and key in df.columns:
        df = df.drop_duplicates(subset=[key], keep="last").reset_index(drop=True)
    return df


def is_study(path: Path | str) -> bool:
    return (Path(path) / "tables" / SAMPLES).is_dir()


def clean_temp_files(study: Path | str) -> int:
    """Remove temp files left by a writer that was killed mid-write; returns how many."""
    n = 0
    for table in TABLES:
        for tmp in table_dir(study, table).glob(".*.tmp") if table_dir(study, table).is_dir() else []:
            tmp.unlink(missing_ok=True)
            n += 1
    return n


# ----------------------------------------------------------------------------- added for the grid runner (issue 5)
COL_FACTS = "facts"  # samples: JSON of the facts the shapes scorer checks (shapes suite), else null
COL_INPUTS_HASH = "inputs_hash"  # metrics: sha256 over the metric's settings and its images' sha256s
COL_PLAN = "plan"  # study: JSON {cell_id: {settings..., "items": n}} of this run's share of the grid
COL_SHARD = "shard"  # study: "I/N" of the process that wrote the row
COL_NAME = "name"  # study: the spec's name


def clean_temp_files_prefixed(study: Path | str, prefix: str) -> int:
    """Remove only the temp files a writer with this part prefix left behind (safe while other shards write)."""
    n = 0
    for table in TABLES:
        folder = table_dir(study, table)
        if folder.is_dir():
            for tmp in folder.glob(f".{prefix}-*.tmp"):
                tmp.unlink(missing_ok=True)
                n += 1
    return n


@contextmanager
def locked(study: Path | str, name: str):
    """Hold an exclusive lock on one job of a study (e.g. "metrics") while the block runs, so that concurrent
    shards do it one after the other; the OS drops the lock if its holder dies (flock), so a SIGKILL never leaves
    a stale lock behind."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (shards then may repeat work, never lose it)
        yield
        return
    folder = Path(study) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextmanager
def writer(study: Path | str, shard: str, wait: bool = False, shards: int | None = None):
    """Be the one writer of a study's shard while the block runs: a second process on the same study and shard is
    refused in one line naming the holder (pid, host, since when), or, with `wait`, waits for it. The lock is an
    flock, which the OS drops when its holder dies: a lock left by a killed process is simply taken over. `shards`
    (the N of --shard i/N): writers that split the study into another number of shards would share its work items
    between two splits, so they are refused (or waited for) too."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    folder = Path(study) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if shards is not None:
            _one_split(stack, folder, study, shards, wait, fcntl)
        stack.enter_context(_shard_lock(folder, study, shard, wait, fcntl))
        yield


def _one_split(stack, folder: Path, study, shards: int, wait: bool, fcntl) -> None:
    """A shared lock on this split (N shards), after checking that no writer holds another split's."""
    for other in sorted(folder.glob(".split-*.lock")):
        m = other.name[len(".split-"):-len(".lock")]
        if m == str(shards):
            continue
        with open(other, "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise UserError(f"{study} is being written in {m} shard(s) (--shard I/{m}, or torchrun with {m} "
                                    f"ranks); run this one with the same number, or wait for them (grid run --wait "
                                    f"waits)") from None
                print(f"waiting for the writers of {study} in {m} shard(s) to finish ...", flush=True)
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    fh = stack.enter_context(open(folder / f".split-{shards}.lock", "a+"))
    fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
    stack.callback(fcntl.flock, fh.fileno(), fcntl.LOCK_UN)


@contextmanager
def _shard_lock(folder: Path, study, shard: str, wait: bool, fcntl):
    path = folder / f".writer-{shard}.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                holder = json.loads(fh.read() or "{}")
            except ValueError:
                holder = {}
            who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
                   if holder else "another process")
            if not wait:
                raise UserError(f"{study} shard {shard} is being written by {who}; wait for it (grid run --wait "
                                f"waits), or give this run another --out (or --shard)") from None
            print(f"waiting for {who} to finish writing {study} shard {shard} ...", flush=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# What a failed write means, in words (the rest of an OSError is a bug, and keeps its traceback).
WRITE_FAILURES = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "no permission to write there",
                  errno.EPERM: "no permission to write there", errno.ENOENT: "the folder vanished while writing"}


def write_failure(exc: OSError, where: Path | str | None) -> UserError | None:
    """An OSError from writing results as one line: what failed, where, how much space is free there; None when it
    is not a failure of the disk or of the folder being written. A missing file or a refused permission counts only
    inside `where` (the study folder being written; None: only a full disk, a quota or a read-only file system)."""
    why = WRITE_FAILURES.get(exc.errno)
    if why is None:
        return None
    if exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM):
        if where is None or not exc.filename:
            return None
        inside = Path(os.path.abspath(exc.filename)).is_relative_to(Path(os.path.abspath(where)))
        if not inside:
            return None  # an input that is missing or unreadable: the caller's own error says which
    target = Path(exc.filename or where or ".")
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:,.0f} MiB free on {probe}"
    except OSError:
        free = "free space unknown"
    return UserError(f"cannot write {target}: {why} ({exc.strerror or exc}); {free}. Everything stored before is "
                     f"kept and nothing is half-written: fix it and run the same command again to resume")


# ----------------------------------------------------------------------------- added for other models (issue 12)
COL_FLAGGED = "flagged"  # samples: True when the generator's safety checker replaced the image (left out of metrics)
COL_GENERATION = "generation"  # samples: JSON of what the generator used for the cell (scheduler class and config...)
COL_PROVENANCE = "provenance"  # study: JSON of the metrics' extractor weights (sha256), protocols, CLIP weights
COL_PROMPTS_HASH = "prompts_hash"  # study: sha256 of the sorted prompt ids of the spec's suites
COL_OPTIONS_HASH = "options_hash"  # study: sha256 of the spec's negative prompt and [call] options
COL_META = "meta"  # samples: JSON of the prompt file's other columns for this prompt (null when none)
COL_DETAILS = "details"  # metrics: JSON of what else made a value (KID's std and subset size, k, sigma, ...)
COL_SCORER = "scorer"  # scores: the [metrics] key that made the value (clip_score, geneval, vqascore, ...)
COL_SETTINGS_HASH = "settings_hash"  # scores: sha256 of the scorer's key, code version and settings (weights' hashes)
COL_N_FLAGGED = "n_flagged"  # metrics: images of the cell left out because a safety checker flagged them

