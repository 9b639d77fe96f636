"""The organiser view's statistics, computed outside the rating server: `python -m drawbench.live SESSION` writes
SESSION/live/ (summary.json with the statistics and the store's change stamp they were computed from, figure.png,
votes.csv), each file atomically. The organiser view starts it when votes came in and reads what it wrote."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from imagen.fileio import atomic_write

LIVE_DIR = "live"
SUMMARY_FILE, FIGURE_FILE, VOTES_CSV = "summary.json", "figure.png", "votes.csv"


def compute(session_path: Path | str, n_boot: int = 300, n_boot_bt: int = 50) -> dict:
    """Statistics of the current votes, written to SESSION/live/; returns the summary record."""
    import pandas as pd

    from drawbench.pairs import load_session
    from drawbench.stats import attention_table, summarize
    from drawbench.votes import VoteStore, votes_table

    session = load_session(session_path)
    stamp = list(VoteStore.of_session(session).last_change())  # before reading: a vote meanwhile makes it stale
    votes = votes_table(session)
    folder = session.path / LIVE_DIR
    out = {"stamp": stamp, "computed": time.time(), "n_votes": int(len(votes)), "summary": None, "attention": []}
    if len(votes):
        s = summarize(votes, n_boot=n_boot, n_boot_bt=n_boot_bt, systems=[x.name for x in session.systems])
        out["summary"] = s
        out["attention"] = json.loads(attention_table(votes).to_json(orient="records"))
        pref = pd.DataFrame(s["preference"])
        if len(pref):
            from drawbench.report import figure_png

            a, b = pref.system_a.iloc[0], pref.system_b.iloc[0]
            png = figure_png(pref[(pref.system_a == a) & (pref.system_b == b)], a, b)
            atomic_write(folder / FIGURE_FILE, lambda p: p.write_bytes(png))
        atomic_write(folder / VOTES_CSV, lambda p: votes.to_csv(p, index=False))
    atomic_write(folder / SUMMARY_FILE, lambda p: p.write_text(json.dumps(out, default=str)))
    return out


if __name__ == "__main__":
    compute(sys.argv[1])
