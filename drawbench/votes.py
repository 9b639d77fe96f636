"""The vote store: SQLite in WAL mode, one transaction per vote, safe with many raters (processes) at once.

Nothing is ever updated or deleted: changing a vote appends a new row with the next revision number, so the full
history is kept and the current vote of a rater on a comparison is its highest revision. Foreign keys make the
database itself refuse a vote for an unknown comparison or from an unknown rater.

A session here is any object with `path` and `comparisons` (a `drawbench.pairs.Session`); the answers' vocabulary
comes from `drawbench.choices`, so this module and `pairs` never import each other.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from drawbench.choices import CHOICES, LEFT, QUESTIONS, RIGHT, VOTES_FILE
from imagen.errors import UserError
from imagen.fileio import atomic_write

QUESTION_IDS = tuple(q for q, _ in QUESTIONS)

SCHEMA = """
CREATE TABLE IF NOT EXISTS comparisons (
  id TEXT PRIMARY KEY,
  left_system TEXT NOT NULL,
  right_system TEXT NOT NULL,
  attention TEXT
);
CREATE TABLE IF NOT EXISTS raters (
  rater TEXT PRIMARY KEY,
  name TEXT,
  created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  comparison TEXT NOT NULL REFERENCES comparisons(id),
  rater TEXT NOT NULL REFERENCES raters(rater),
  revision INTEGER NOT NULL,
  quality TEXT NOT NULL CHECK (quality IN ('left', 'same', 'right')),
  alignment TEXT NOT NULL CHECK (alignment IN ('left', 'same', 'right')),
  left_system TEXT NOT NULL,
  right_system TEXT NOT NULL,
  quality_system TEXT,
  alignment_system TEXT,
  seconds REAL,
  created REAL NOT NULL,
  UNIQUE (comparison, rater, revision)
);
CREATE INDEX IF NOT EXISTS votes_by_rater ON votes (rater, comparison);
"""


class VoteRefused(UserError):
    """A vote the store will not take: unknown comparison or rater, or an answer that is not a choice."""


def chosen_system(choice: str, left_system: str, right_system: str) -> str | None:
    """The system a side maps to; None for 'indifferent'."""
    return left_system if choice == LEFT else right_system if choice == RIGHT else None


class VoteStore:
    """One SQLite file; every method opens its own short connection (Streamlit runs each rater in a thread)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"vote store {self.path} not found; is this a session made by `imagen-bench drawbench "
                            "pairs`?")

    @classmethod
    def create(cls, path: Path | str, session: "Session") -> "VoteStore":
        path = Path(path)
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            con.executescript(SCHEMA)
            con.execute("BEGIN")
            con.executemany("INSERT INTO comparisons VALUES (?, ?, ?, ?)",
                            [(c.id, c.left, c.right, c.attention) for c in session.comparisons])
            con.execute("COMMIT")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
        return cls(path)

    @classmethod
    def of_session(cls, session: "Session") -> "VoteStore":
        return cls(session.path / VOTES_FILE)

    @contextmanager
    def _connect(self):
        con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA synchronous=FULL")  # a vote that was acknowledged survives a power cut
            con.execute("PRAGMA busy_timeout=60000")
            yield con
        finally:
            con.close()

    # ------------------------------------------------------------------------- writing
    def register_rater(self, rater: str, name: str = "") -> None:
        """Add a rater (idempotent: a returning rater keeps their id and votes)."""
        if not rater or not rater.strip():
            raise VoteRefused("a rater needs a non-empty id")
        with self._connect() as con:
            con.execute("INSERT OR IGNORE INTO raters VALUES (?, ?, ?)", (rater.strip(), name, time.time()))

    def submit(self, rater: str, comparison: str, quality: str, alignment: str, seconds: float | None = None,
               swapped: bool = False) -> int:
        """Store one vote (both questions) in one transaction; returns its revision (1 = first, 2+ = changed).
        `swapped`: the rater saw the comparison's sets the other way round; the vote records the systems on the
        left and right as that rater saw them, and answers in those terms."""
        for q, v in (("quality", quality), ("alignment", alignment)):
            if v not in CHOICES:
                raise VoteRefused(f"answer {v!r} to {q} is not one of {CHOICES}")
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # take the write lock before reading the revision
            try:
                row = con.execute("SELECT left_system, right_system FROM comparisons WHERE id = ?",
                                  (comparison,)).fetchone()
                if row is None:
                    raise VoteRefused(f"unknown comparison {comparison!r}: not part of this session")
                if con.execute("SELECT 1 FROM raters WHERE rater = ?", (rater,)).fetchone() is None:
                    raise VoteRefused(f"unknown rater {rater!r}: a rater must sign in before voting")
                left, right = row[::-1] if swapped else row
                (rev,) = con.execute("SELECT COALESCE(MAX(revision), 0) + 1 FROM votes WHERE comparison = ? AND "
                                     "rater = ?", (comparison, rater)).fetchone()
                con.execute(
                    "INSERT INTO votes (comparison, rater, revision, quality, alignment, left_system, right_system, "
                    "quality_system, alignment_system, seconds, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (comparison, rater, rev, quality, alignment, left, right, chosen_system(quality, left, right),
                     chosen_system(alignment, left, right), seconds, time.time()))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return int(rev)

    # ------------------------------------------------------------------------- reading
    def raters(self) -> pd.DataFrame:
        with self._connect() as con:
            return pd.read_sql_query("SELECT * FROM raters ORDER BY created", con)

    def all_votes(self) -> pd.DataFrame:
        """Every vote ever cast, history included, with `current` True on each rater's latest revision."""
        with self._connect() as con:
            df = pd.read_sql_query("SELECT v.*, c.attention FROM votes v JOIN comparisons c ON c.id = v.comparison "
                                   "ORDER BY v.id", con)
        last = df.groupby(["rater", "comparison"])["revision"].transform("max") if len(df) else df["revision"]
        df["current"] = df["revision"] == last
        return df

    def current_votes(self) -> pd.DataFrame:
        df = self.all_votes()
        return df[df["current"]].drop(columns="current").reset_index(drop=True)

    def answers(self, rater: str) -> dict[str, tuple[str, str]]:
        """{comparison id: (quality, alignment)} of this rater's current votes."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT comparison, quality, alignment FROM votes v WHERE rater = ? AND revision = (SELECT MAX("
                "revision) FROM votes w WHERE w.rater = v.rater AND w.comparison = v.comparison)", (rater,)).fetchall()
        return {c: (q, a) for c, q, a in rows}

    def count(self) -> int:
        with self._connect() as con:
            return con.execute("SELECT COUNT(*) FROM votes").fetchone()[0]


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
            "revision", "left_system", "right_system", "quality", "quality_system", "alignment", "alignment_system",
            "is_attention_check", "attention", "seconds", "created", "created_utc"]
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
