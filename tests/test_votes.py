"""The vote store: many processes at once lose nothing, unknown comparisons and raters are refused, export."""

import sqlite3
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from drawbench.pairs import load_session
from drawbench.votes import VoteRefused, VoteStore, export, votes_table
from drawbench_fixtures import make_session
from imagen_bench import main

WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from drawbench.votes import VoteStore
    db, rater, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    ids = sys.argv[4].split(",")
    vs = VoteStore(db)
    vs.register_rater(rater)
    while not go.exists():  # all processes start voting at the same moment
        time.sleep(0.01)
    for i in range(100):
        vs.submit(rater, ids[i % len(ids)], ("left", "same", "right")[i % 3], ("right", "left", "same")[i % 3], 0.1)
""")


@pytest.fixture()
def session(tmp_path, data_dir):
    s, codes = make_session(tmp_path, data_dir, n_prompts=8, n_codes=0, attention_rate=0.2)
    return s


def test_eight_processes_hundred_votes_each(session, tmp_path):
    store = VoteStore.of_session(session)
    ids = ",".join(c.id for c in session.comparisons)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(store.path), f"r{k}", str(go), ids],
                              stderr=subprocess.PIPE) for k in range(8)]
    deadline = time.time() + 120
    while len(store.raters()) < 8 and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.1)
    go.touch()
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, errs
    assert store.count() == 800
    hist = store.all_votes()
    assert len(hist) == 800 and hist.groupby("rater").size().tolist() == [100] * 8
    # revisions of each (rater, comparison) are exactly 1..k: no lost or duplicated update under contention
    for _, g in hist.groupby(["rater", "comparison"]):
        assert sorted(g.revision) == list(range(1, len(g) + 1))
    n = len(session.comparisons)
    assert len(store.current_votes()) == 8 * min(n, 100)
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_refuses_unknown_comparison_rater_and_answer(session):
    store = VoteStore.of_session(session)
    cid = session.comparisons[0].id
    with pytest.raises(VoteRefused, match="unknown rater"):
        store.submit("ghost", cid, "left", "left")
    store.register_rater("ann")
    with pytest.raises(VoteRefused, match="unknown comparison"):
        store.submit("ann", "c99999", "left", "left")
    with pytest.raises(VoteRefused, match="not one of"):
        store.submit("ann", cid, "up", "left")
    assert store.count() == 0
    # the database itself refuses such rows too (foreign keys, CHECK), whoever writes them
    con = sqlite3.connect(store.path)
    con.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO votes (comparison, rater, revision, quality, alignment, left_system, right_system,"
                    " created) VALUES ('c99999', 'ann', 1, 'left', 'left', 'a', 'b', 0)")
    with pytest.raises(sqlite3.IntegrityError):
        con.execute(f"INSERT INTO votes (comparison, rater, revision, quality, alignment, left_system, right_system,"
                    f" created) VALUES ('{cid}', 'ann', 1, 'maybe', 'left', 'a', 'b', 0)")
    con.close()
    assert store.count() == 0


def test_history_current_and_side_mapping(session):
    store = VoteStore.of_session(session)
    store.register_rater("ann")
    c = next(c for c in session.comparisons if c.attention is None)
    assert store.submit("ann", c.id, "left", "right") == 1
    assert store.submit("ann", c.id, "same", "left") == 2
    hist = store.all_votes()
    assert hist.revision.tolist() == [1, 2] and hist.current.tolist() == [False, True]
    cur = store.current_votes().iloc[0]
    assert pd.isna(cur.quality_system) and cur.alignment_system == c.left  # indifferent maps to no system
    assert store.answers("ann") == {c.id: ("same", "left")}
    first = hist.iloc[0]
    assert (first.quality_system, first.alignment_system) == (c.left, c.right)


def test_export_parquet_and_csv(session, tmp_path, capsys):
    store = VoteStore.of_session(session)
    store.register_rater("ann", "Ann A.")
    store.register_rater("bo")
    comps = session.comparisons[:3]
    store.submit("ann", comps[0].id, "left", "left", 2.5)
    store.submit("ann", comps[0].id, "right", "left", 1.0)
    store.submit("bo", comps[1].id, "same", "right")
    store.submit("bo", comps[2].id, "right", "right")
    assert main(["drawbench", "export", str(session.path), "--out", str(tmp_path / "ex"), "--json"]) == 0
    paths = pd.read_json(__import__("io").StringIO(capsys.readouterr().out), typ="series")
    pq = pd.read_parquet(paths["parquet"])
    csv = pd.read_csv(paths["csv"])
    assert len(pq) == 4 and len(csv) == 4
    row = pq[(pq.rater == "ann") & pq.current].iloc[0]
    c0 = comps[0]
    assert (row.prompt, row.category, row.prompt_id) == (c0.prompt, c0.category, c0.prompt_id)
    assert (row.left_system, row.right_system, row.quality_system) == (c0.left, c0.right, c0.right)
    assert row.rater_name == "Ann A." and row.revision == 2
    assert pq.is_attention_check.tolist() == [c.attention is not None for c in
                                              (comps[0], comps[0], comps[1], comps[2])]
    assert list(csv.columns) == list(pq.columns)
    cur = votes_table(load_session(session.path))
    assert len(cur) == 3 and "current" not in cur.columns
    p2, _ = export(session, tmp_path / "ex2", history=False)
    assert len(pd.read_parquet(p2)) == 3
    assert not list((tmp_path / "ex").glob(".*.tmp"))
