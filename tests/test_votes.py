"""The vote store, on SQLite and on PostgreSQL alike: many processes at once lose nothing, one first answer per
(rater, comparison) by construction, writers killed mid-vote lose and duplicate nothing, unknown comparisons and
raters are refused, export."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from drawbench.pairs import load_session
from drawbench.votes import AlreadyAnswered, VoteRefused, VoteStore, export, votes_table
from drawbench_fixtures import make_session, use_store
from imagen_bench import main

# One rater's votes from their own process; prints "ack I" once vote I is stored (the store answered), "dup I" when
# the store says it was already there. Plan "first": a first answer to each comparison; "cycle": 100 votes cycling
# through the comparisons, changes (revisions) after the first round; "same": one first answer to the first one.
WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from drawbench.pairs import load_session
    from drawbench.votes import AlreadyAnswered, VoteStore
    session, rater, go, plan = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    vs = VoteStore.of_session(load_session(session))
    ids = [c.id for c in load_session(session).comparisons]
    vs.register_rater(rater)
    print("ready", flush=True)
    while not go.exists():  # all processes start voting at the same moment
        time.sleep(0.01)
    n = {"first": len(ids), "cycle": 100, "same": 1}[plan]
    for i in range(n):
        answer = ("left", "same", "right")[(i + len(rater)) % 3]
        try:
            vs.submit(rater, ids[i % len(ids)], answer, answer, 0.1, revise=plan == "cycle" and i >= len(ids))
            print("ack", i, answer, flush=True)
        except AlreadyAnswered:
            print("dup", i, flush=True)
""")

STORES = ["sqlite", "postgres"]


@pytest.fixture(params=STORES)
def session(request, tmp_path, data_dir):
    s, _ = make_session(tmp_path, data_dir, n_prompts=8, n_codes=0, attention_rate=0.2)
    drop = use_store(s, request.param)
    yield s
    drop()


def start_workers(session, raters, plan, go):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return [subprocess.Popen([sys.executable, "-c", WORKER, str(session.path), r, str(go), plan], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in raters]


def wait_ready(procs):
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()


def test_eight_processes_hundred_votes_each(session, tmp_path):
    store = VoteStore.of_session(session)
    go = tmp_path / "go"
    procs = start_workers(session, [f"r{k}" for k in range(8)], "cycle", go)
    wait_ready(procs)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    assert all(o.count("ack") == 100 for o, _ in outs)
    assert store.count() == 800
    hist = store.all_votes()
    assert len(hist) == 800 and hist.groupby("rater").size().tolist() == [100] * 8
    # revisions of each (rater, comparison) are exactly 1..k, the first unflagged and every later one flagged
    for _, g in hist.groupby(["rater", "comparison"]):
        assert sorted(g.revision) == list(range(1, len(g) + 1))
        assert g.sort_values("revision").revised.tolist() == [0] + [1] * (len(g) - 1)
    n = len(session.comparisons)
    assert len(store.current_votes()) == 8 * min(n, 100)


def test_one_first_answer_per_key_under_contention(session, tmp_path):
    """Eight processes send the same rater's first answer to the same comparison at once: one is stored."""
    store = VoteStore.of_session(session)
    go = tmp_path / "go"
    procs = start_workers(session, ["ann"] * 8, "same", go)
    wait_ready(procs)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [e for _, e in outs]
    assert sum(o.count("ack") for o, _ in outs) == 1 and sum(o.count("dup") for o, _ in outs) == 7
    assert store.count() == 1


def test_writers_killed_mid_vote_lose_and_duplicate_nothing(session, tmp_path):
    """Four raters' processes are killed (SIGKILL) while voting, then run again from the start, as a server that
    died and a browser that sends its unanswered votes again: every vote acknowledged before the kill is there,
    and every comparison has exactly one first answer."""
    store = VoteStore.of_session(session)
    n = len(session.comparisons)
    go = tmp_path / "go"
    raters = [f"k{k}" for k in range(4)]
    procs = start_workers(session, raters, "first", go)
    wait_ready(procs)
    go.touch()
    deadline = time.time() + 60
    while store.count() < n and time.time() < deadline:  # about a quarter of the votes in, then kill all
        time.sleep(0.005)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
    acked = {}
    for r, p in zip(raters, procs):
        out, _ = p.communicate(timeout=60)
        acked[r] = [line.split() for line in out.splitlines() if line.startswith("ack")]
    stored_before = store.count()
    assert stored_before < 4 * n  # the kill came mid-run
    again = start_workers(session, raters, "first", go)
    outs = [p.communicate(timeout=300) for p in again]
    assert [p.returncode for p in again] == [0] * 4, [e for _, e in outs]
    assert sum(o.count("dup") for o, _ in outs) == stored_before  # the votes stored before were not stored twice
    hist = store.all_votes()
    assert len(hist) == 4 * n and (hist.revision == 1).all()
    assert not hist.duplicated(["rater", "comparison"]).any()
    ids = [c.id for c in session.comparisons]
    got = hist.set_index(["rater", "comparison"]).quality
    for r, lines in acked.items():
        for _, i, answer in lines:  # every acknowledged vote is there, as it was sent
            assert got[(r, ids[int(i)])] == answer


def test_first_answers_and_revisions(session):
    store = VoteStore.of_session(session)
    store.register_rater("ann")
    c = session.comparisons[0].id
    assert store.submit("ann", c, "left", "left") == 1
    with pytest.raises(AlreadyAnswered):  # a second first answer (a stale or repeated submission)
        store.submit("ann", c, "right", "right")
    with pytest.raises(VoteRefused, match="no answer"):  # a change needs an answer to change
        store.submit("ann", session.comparisons[1].id, "left", "left", revise=True)
    assert store.submit("ann", c, "right", "same", revise=True) == 2
    hist = store.all_votes()
    assert hist.revision.tolist() == [1, 2] and hist.revised.tolist() == [0, 1]
    assert store.answers("ann") == {c: ("right", "same")}


def _raw_insert(store, values: str):
    with store.db.transaction(write=True) as con:
        con.execute("INSERT INTO votes (comparison, rater, revision, revised, quality, alignment, left_system, "
                    f"right_system, created) VALUES ({values})")


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
    # the database itself refuses such rows too (foreign keys, CHECK, the key), whoever writes them
    bad = ["'c99999', 'ann', 1, 0, 'left', 'left', 'a', 'b', 0",  # unknown comparison
           f"'{cid}', 'ann', 1, 0, 'maybe', 'left', 'a', 'b', 0",  # not an answer
           f"'{cid}', 'ann', 2, 0, 'left', 'left', 'a', 'b', 0",  # a revision that is not flagged
           f"'{cid}', 'ann', 1, 1, 'left', 'left', 'a', 'b', 0"]  # a flagged first answer
    for values in bad:
        with pytest.raises(store.db.integrity_errors):
            _raw_insert(store, values)
    _raw_insert(store, f"'{cid}', 'ann', 1, 0, 'left', 'left', 'a', 'b', 0")
    with pytest.raises(store.db.integrity_errors):  # a second first answer for the same key
        _raw_insert(store, f"'{cid}', 'ann', 1, 0, 'right', 'right', 'a', 'b', 0")
    assert store.count() == 1


def test_history_current_and_side_mapping(session):
    store = VoteStore.of_session(session)
    store.register_rater("ann")
    c = next(c for c in session.comparisons if c.attention is None)
    assert store.submit("ann", c.id, "left", "right") == 1
    assert store.submit("ann", c.id, "same", "left", revise=True) == 2
    hist = store.all_votes()
    assert hist.revision.tolist() == [1, 2] and hist.current.tolist() == [False, True]
    cur = store.current_votes().iloc[0]
    assert pd.isna(cur.quality_system) and cur.alignment_system == c.left  # indifferent maps to no system
    assert store.answers("ann") == {c.id: ("same", "left")}
    first = hist.iloc[0]
    assert (first.quality_system, first.alignment_system) == (c.left, c.right)
    assert store.submit("ann", session.comparisons[1].id, "left", "left", swapped=True) == 1
    swapped = store.current_votes().set_index("comparison").loc[session.comparisons[1].id]
    assert (swapped.left_system, swapped.quality_system) == (session.comparisons[1].right,) * 2


def test_export_parquet_and_csv(session, tmp_path, capsys):
    store = VoteStore.of_session(session)
    store.register_rater("ann", "Ann A.")
    store.register_rater("bo")
    comps = session.comparisons[:3]
    store.submit("ann", comps[0].id, "left", "left", 2.5)
    store.submit("ann", comps[0].id, "right", "left", 1.0, revise=True)
    store.submit("bo", comps[1].id, "same", "right")
    store.submit("bo", comps[2].id, "right", "right")
    assert main(["drawbench", "export", str(session.path), "--out", str(tmp_path / "ex"), "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    pq = pd.read_parquet(paths["parquet"])
    csv = pd.read_csv(paths["csv"])
    assert len(pq) == 4 and len(csv) == 4
    row = pq[(pq.rater == "ann") & pq.current].iloc[0]
    c0 = comps[0]
    assert (row.prompt, row.category, row.prompt_id) == (c0.prompt, c0.category, c0.prompt_id)
    assert (row.left_system, row.right_system, row.quality_system) == (c0.left, c0.right, c0.right)
    assert row.rater_name == "Ann A." and row.revision == 2 and row.revised == 1
    assert pq.is_attention_check.tolist() == [c.attention is not None for c in
                                              (comps[0], comps[0], comps[1], comps[2])]
    assert list(csv.columns) == list(pq.columns)
    cur = votes_table(load_session(session.path))
    assert len(cur) == 3 and "current" not in cur.columns
    p2, _ = export(session, tmp_path / "ex2", history=False)
    assert len(pd.read_parquet(p2)) == 3
    assert not list((tmp_path / "ex").glob(".*.tmp"))


def test_stats_refuse_two_answers_for_one_key(session, capsys):
    """A vote table with two answers for one (rater, comparison) is refused, naming them: `drawbench stats` on a
    history export would otherwise count that rater twice."""
    from drawbench.stats import summarize
    from imagen.errors import UserError

    store = VoteStore.of_session(session)
    for r in ("ann", "bo"):
        store.register_rater(r)
    comps = [c for c in session.comparisons if c.attention is None][:3]
    for c in comps:
        store.submit("ann", c.id, "left", "left")
        store.submit("bo", c.id, "right", "left")
    store.submit("ann", comps[1].id, "right", "left", revise=True)
    assert summarize(votes_table(session), n_boot=50)["n_votes"] == 6  # the current votes: one per key
    with pytest.raises(UserError, match=f"1 \\(rater, comparison\\) key.*ann on {comps[1].id} \\(2 answers\\)"):
        summarize(votes_table(session, history=True), n_boot=50)
    assert main(["drawbench", "stats", str(session.path)]) == 0


def test_postgres_store_refuses_a_password_in_the_session_folder(tmp_path, data_dir):
    from drawbench.postgres import use_postgres
    from imagen.errors import UserError

    s, _ = make_session(tmp_path, data_dir, n_prompts=2, n_codes=0)
    for conninfo in ("dbname=x password=secret", "postgresql://ann:secret@db/x"):
        with pytest.raises(UserError, match="password"):
            use_postgres(s, conninfo)
    assert not (s.path / "votes.postgres").exists()
