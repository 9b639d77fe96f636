"""The vote store: SQLite in WAL mode by default, or a PostgreSQL database when one study outgrows one server.

One vote per (rater, comparison, question) by construction. A vote row answers both questions of one comparison;
its first answer is revision 1, and the key (comparison, rater, revision) is unique in the database, so a second
"first answer" (a click submitted twice, a stale page, two tabs) cannot be stored: `submit` raises AlreadyAnswered.
A rater who asks to change an earlier answer adds the next revision, flagged `revised` (the database refuses a
revision above 1 that is not flagged, and a flagged first answer). Nothing is updated or deleted, so the whole
history is kept; the current vote of a rater on a comparison is its highest revision. Foreign keys make the database
itself refuse a vote for an unknown comparison or from an unknown rater.

Where the votes live: SESSION/votes.sqlite, unless SESSION/votes.postgres names a PostgreSQL database (written by
`python -m drawbench.postgres SESSION CONNINFO`); then every server, export and `drawbench stats` of that
session use the database. The password never goes into that file: libpq reads it from ~/.pgpass or $PGPASSWORD.

A session here is any object with `path` and `comparisons` (a `drawbench.pairs.Session`); the answers' vocabulary
comes from `drawbench.choices`, so this module and `pairs` never import each other.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from drawbench.choices import CHOICES, LEFT, QUESTIONS, RIGHT, VOTES_FILE
from imagen.errors import UserError
from imagen.fileio import atomic_write

QUESTION_IDS = tuple(q for q, _ in QUESTIONS)
POSTGRES_FILE = "votes.postgres"  # {"conninfo": ..., "schema": ...}: the session's votes are in that database

_VOTES_COLUMNS = """
  comparison TEXT NOT NULL REFERENCES comparisons(id),
  rater TEXT NOT NULL REFERENCES raters(rater),
  revision INTEGER NOT NULL CHECK (revision >= 1),
  revised INTEGER NOT NULL DEFAULT 0 CHECK ((revision = 1 AND revised = 0) OR (revision > 1 AND revised = 1)),
  quality TEXT NOT NULL CHECK (quality IN ('left', 'same', 'right')),
  alignment TEXT NOT NULL CHECK (alignment IN ('left', 'same', 'right')),
  left_system TEXT NOT NULL,
  right_system TEXT NOT NULL,
  quality_system TEXT,
  alignment_system TEXT,
  seconds {real},
  created {real} NOT NULL,
  UNIQUE (comparison, rater, revision)
"""
_TABLES = """
CREATE TABLE IF NOT EXISTS comparisons (id TEXT PRIMARY KEY, left_system TEXT NOT NULL, right_system TEXT NOT NULL,
  attention TEXT);
CREATE TABLE IF NOT EXISTS raters (rater TEXT PRIMARY KEY, name TEXT, created {real} NOT NULL);
CREATE TABLE IF NOT EXISTS votes (id {id}, {votes});
CREATE INDEX IF NOT EXISTS votes_by_rater ON votes (rater, comparison);
"""
SQLITE_SCHEMA = _TABLES.format(real="REAL", id="INTEGER PRIMARY KEY AUTOINCREMENT",
                               votes=_VOTES_COLUMNS.format(real="REAL"))
POSTGRES_SCHEMA = _TABLES.format(real="DOUBLE PRECISION", id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                                 votes=_VOTES_COLUMNS.format(real="DOUBLE PRECISION"))


class VoteRefused(UserError):
    """A vote the store will not take: unknown comparison or rater, or an answer that is not a choice."""


class AlreadyAnswered(VoteRefused):
    """A first answer for a (rater, comparison) that already has one: a stale or repeated submission, ignored."""


def chosen_system(choice: str, left_system: str, right_system: str) -> str | None:
    """The system a side maps to; None for 'indifferent'."""
    return left_system if choice == LEFT else right_system if choice == RIGHT else None


# ----------------------------------------------------------------------------- connections
class _SQLite:
    """Short connections to one SQLite file (WAL: readers never block the writer)."""

    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path):
        self.path = path
        self.where = str(path)

    @contextmanager
    def transaction(self, write: bool):
        con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA synchronous=FULL")  # a vote that was acknowledged survives a power cut
            con.execute("PRAGMA busy_timeout=60000")
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")  # a writer takes the lock before it reads
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    def upgrade(self) -> None:
        """A store made before revisions were flagged gets the column; its earlier rows say NULL (not recorded)."""
        with self.transaction(write=True) as con:
            cols = [r[1] for r in con.execute("PRAGMA table_info(votes)")]
            if "revised" not in cols:
                con.execute("ALTER TABLE votes ADD COLUMN revised INTEGER")


class _Postgres:
    """Connections to a PostgreSQL database, one per thread and kept open; the session's tables in its own schema."""

    def __init__(self, conninfo: str, schema: str):
        import psycopg

        self.psycopg = psycopg
        self.integrity_errors = (psycopg.errors.IntegrityError,)
        self.conninfo, self.schema = conninfo, schema
        self.where = f"PostgreSQL {redact(conninfo)} schema {schema}"
        self._local = threading.local()

    def _connection(self):
        con = getattr(self._local, "con", None)
        if con is None or con.closed:
            try:
                con = self.psycopg.connect(self.conninfo, connect_timeout=20)
            except self.psycopg.OperationalError as exc:
                raise UserError(f"cannot reach the vote store at {self.where}: {str(exc).splitlines()[0]}") from exc
            con.execute(f'SET search_path TO "{self.schema}"')
            con.commit()
            self._local.con = con
        return con

    @contextmanager
    def transaction(self, write: bool):
        con = self._connection()
        try:
            with con.transaction():
                yield _PgConnection(con)
        except self.psycopg.OperationalError:
            con.close()  # a broken connection is not reused; the next call opens a new one
            raise


class _PgConnection:
    """The few sqlite3.Connection methods the store uses, on a psycopg connection ('?' placeholders)."""

    def __init__(self, con):
        self.con = con

    def execute(self, sql: str, params=()):
        return self.con.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows) -> None:
        with self.con.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)


def redact(conninfo: str) -> str:
    return re.sub(r"(password=)\S+", r"\1***", re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", conninfo))


def _frame(con, sql: str, params=()) -> pd.DataFrame:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return pd.DataFrame(cur.fetchall(), columns=cols)


# ----------------------------------------------------------------------------- the store
class VoteStore:
    """The votes of one session; every method is one short transaction (raters vote from many threads at once)."""

    def __init__(self, path: Path | str | None = None, *, postgres: tuple[str, str] | None = None):
        if postgres is not None:
            self.path = None
            self.db = _Postgres(*postgres)
            return
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"vote store {self.path} not found; is this a session made by `imagen-bench drawbench "
                            "pairs`?")
        self.db = _SQLite(self.path)

    @property
    def where(self) -> str:
        return self.db.where

    @classmethod
    def create(cls, path: Path | str, session: "Session") -> "VoteStore":
        """A new SQLite store listing the session's comparisons."""
        path = Path(path)
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            con.executescript(SQLITE_SCHEMA)
            con.execute("BEGIN")
            con.executemany("INSERT INTO comparisons VALUES (?, ?, ?, ?)", comparison_rows(session))
            con.execute("COMMIT")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        return cls(path)

    @classmethod
    def of_session(cls, session: "Session") -> "VoteStore":
        pg = Path(session.path) / POSTGRES_FILE
        if pg.is_file():
            spec = json.loads(pg.read_text())
            return cls(postgres=(spec["conninfo"], spec["schema"]))
        return cls(Path(session.path) / VOTES_FILE)

    def upgrade(self) -> None:
        """Bring an older store's schema up to this version (the rating server calls it once at start)."""
        if isinstance(self.db, _SQLite):
            self.db.upgrade()

    # ------------------------------------------------------------------------- writing
    def register_rater(self, rater: str, name: str = "") -> None:
        """Add a rater (idempotent: a returning rater keeps their id and votes)."""
        if not rater or not rater.strip():
            raise VoteRefused("a rater needs a non-empty id")
        with self.db.transaction(write=True) as con:
            con.execute("INSERT INTO raters VALUES (?, ?, ?) ON CONFLICT (rater) DO NOTHING",
                        (rater.strip(), name, time.time()))

    def submit(self, rater: str, comparison: str, quality: str, alignment: str, seconds: float | None = None,
               swapped: bool = False, revise: bool = False) -> int:
        """Store one vote (both questions) in one transaction; returns its revision.

        revise=False: the rater's first answer to this comparison (revision 1); AlreadyAnswered if there is one.
        revise=True: a change the rater asked for, stored as the next revision and flagged; VoteRefused if the
        comparison has no answer yet. `swapped`: the rater saw the comparison's sets the other way round; the vote
        records the systems on the left and right as that rater saw them, and answers in those terms."""
        for q, v in (("quality", quality), ("alignment", alignment)):
            if v not in CHOICES:
                raise VoteRefused(f"answer {v!r} to {q} is not one of {CHOICES}")
        try:
            with self.db.transaction(write=True) as con:
                row = con.execute("SELECT left_system, right_system FROM comparisons WHERE id = ?",
                                  (comparison,)).fetchone()
                if row is None:
                    raise VoteRefused(f"unknown comparison {comparison!r}: not part of this session")
                if con.execute("SELECT 1 FROM raters WHERE rater = ?", (rater,)).fetchone() is None:
                    raise VoteRefused(f"unknown rater {rater!r}: a rater must sign in before voting")
                left, right = tuple(row)[::-1] if swapped else tuple(row)
                (last,) = con.execute("SELECT COALESCE(MAX(revision), 0) FROM votes WHERE comparison = ? AND "
                                      "rater = ?", (comparison, rater)).fetchone()
                if not revise and last:
                    raise AlreadyAnswered(f"rater {rater!r} has already answered comparison {comparison!r}")
                if revise and not last:
                    raise VoteRefused(f"rater {rater!r} has no answer to comparison {comparison!r} to change")
                rev = int(last) + 1
                con.execute(
                    "INSERT INTO votes (comparison, rater, revision, revised, quality, alignment, left_system, "
                    "right_system, quality_system, alignment_system, seconds, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (comparison, rater, rev, int(rev > 1), quality, alignment, left, right,
                     chosen_system(quality, left, right), chosen_system(alignment, left, right), seconds, time.time()))
        except self.db.integrity_errors as exc:  # another server stored this revision first: the key holds
            raise AlreadyAnswered(f"rater {rater!r} has already answered comparison {comparison!r} ({exc})") from exc
        return rev

    # ------------------------------------------------------------------------- reading
    def raters(self) -> pd.DataFrame:
        with self.db.transaction(write=False) as con:
            return _frame(con, "SELECT * FROM raters ORDER BY created")

    def all_votes(self) -> pd.DataFrame:
        """Every vote ever cast, history included, with `current` True on each rater's latest revision."""
        with self.db.transaction(write=False) as con:
            df = _frame(con, "SELECT v.*, c.attention FROM votes v JOIN comparisons c ON c.id = v.comparison "
                             "ORDER BY v.id")
        if "revised" not in df.columns:  # a store made before revisions were flagged, not yet served by this version
            df["revised"] = None
        last = df.groupby(["rater", "comparison"])["revision"].transform("max") if len(df) else df["revision"]
        df["current"] = df["revision"] == last
        return df

    def current_votes(self) -> pd.DataFrame:
        df = self.all_votes()
        return df[df["current"]].drop(columns="current").reset_index(drop=True)

    def answers(self, rater: str) -> dict[str, tuple[str, str]]:
        """{comparison id: (quality, alignment)} of this rater's current votes."""
        with self.db.transaction(write=False) as con:
            rows = con.execute(
                "SELECT comparison, quality, alignment FROM votes v WHERE rater = ? AND revision = (SELECT MAX("
                "revision) FROM votes w WHERE w.rater = v.rater AND w.comparison = v.comparison)", (rater,)).fetchall()
        return {c: (q, a) for c, q, a in rows}

    def progress(self) -> pd.DataFrame:
        """Per rater: comparisons answered, their last vote's time and median seconds per vote (one query)."""
        with self.db.transaction(write=False) as con:
            df = _frame(con, "SELECT r.rater, r.name, COUNT(DISTINCT v.comparison) AS done, MAX(v.created) AS last, "
                             "COUNT(v.id) AS rows FROM raters r LEFT JOIN votes v ON v.rater = r.rater "
                             "GROUP BY r.rater, r.name, r.created ORDER BY r.created")
            secs = _frame(con, "SELECT rater, seconds FROM votes WHERE revision = 1 AND seconds IS NOT NULL")
        med = secs.groupby("rater")["seconds"].median().rename("median_seconds")
        return df.merge(med, left_on="rater", right_index=True, how="left")

    def count(self) -> int:
        with self.db.transaction(write=False) as con:
            return con.execute("SELECT COUNT(*) FROM votes").fetchone()[0]

    def last_change(self) -> tuple[int, float]:
        """(number of rows, time of the newest): changes whenever a vote or rater is added."""
        with self.db.transaction(write=False) as con:
            n, t = con.execute("SELECT COUNT(*), MAX(created) FROM votes").fetchone()
            r, u = con.execute("SELECT COUNT(*), MAX(created) FROM raters").fetchone()
        return int(n) + int(r), float(max(t or 0.0, u or 0.0))


def comparison_rows(session) -> list[tuple]:
    return [(c.id, c.left, c.right, c.attention) for c in session.comparisons]


# ----------------------------------------------------------------------------- PostgreSQL
def postgres_schema_name(session) -> str:
    """The schema that holds one session's tables in a shared database: named by the session's comparisons, so
    every server of the session finds the same one and two sessions never share one."""
    ids = json.dumps(sorted(comparison_rows(session)) + [getattr(session, "created", 0.0)])
    return "drawbench_" + hashlib.sha256(ids.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- export
def votes_table(session: "Session", history: bool = False) -> pd.DataFrame:
    """Votes joined to prompts, categories, systems, sides, raters and times: one row per vote."""
    vs = VoteStore.of_session(session)
    df = vs.all_votes() if history else vs.current_votes()
    comps = pd.DataFrame([{"comparison": c.id, "prompt_id": c.prompt_id, "prompt": c.prompt, "category": c.category,
                           "sample_indices": ",".join(map(str, c.sample_indices))} for c in session.comparisons])
    raters = vs.raters().rename(columns={"name": "rater_name", "created": "rater_created"})
    df = df.merge(comps, on="comparison", how="left").merge(raters, on="rater", how="left")
    df["is_attention_check"] = df["attention"].notna()
    df["created_utc"] = pd.to_datetime(df["created"], unit="s", utc=True)
    cols = ["id", "comparison", "prompt_id", "prompt", "category", "sample_indices", "rater", "rater_name",
            "revision", "revised", "left_system", "right_system", "quality", "quality_system", "alignment",
            "alignment_system", "is_attention_check", "attention", "seconds", "created", "created_utc"]
    if history:
        cols.append("current")
    return df.rename(columns={"id": "vote_id"})[["vote_id"] + cols[1:]]


def export(session: "Session", out_dir: Path | str | None = None, history: bool = True) -> tuple[Path, Path]:
    """Write votes.parquet and votes.csv (atomically: temp file + rename); returns their paths."""
    out_dir = Path(out_dir) if out_dir else session.path / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    df = votes_table(session, history=history)
    paths = []
    for name, write in (("votes.parquet", lambda p: df.to_parquet(p, index=False)),
                        ("votes.csv", lambda p: df.to_csv(p, index=False))):
        atomic_write(out_dir / name, write)
        paths.append(out_dir / name)
    return paths[0], paths[1]
