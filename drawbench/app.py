"""The organiser's view of a rating session (Streamlit), at /organiser/ of the session's server (drawbench/server.py;
raters use the plain page at /, drawbench/rating.py).

- Sign-in by the organiser password (5 wrong tries per browser session, then a doubling wait).
- Refreshes on its own every few seconds: raters, votes and progress per rater from one query to the store; the
  statistics (preference shares, the DrawBench figure, agreement, order effect, attention checks) are computed by
  another process (`python -m drawbench.live SESSION`, started when the votes changed) and read from SESSION/live/,
  so watching a study never slows the raters' server.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import streamlit as st

from drawbench.live import LIVE_DIR, SUMMARY_FILE, FIGURE_FILE, VOTES_CSV
from drawbench.pairs import Session, check_password, load_session
from drawbench.server import SESSION_ENV, command
from drawbench.votes import VoteStore
from imagen.errors import UserError

CSS_FILE = Path(__file__).with_name("app.css")
REFRESH_S = 5  # the live part reruns on its own this often


def streamlit_command(port: int, address: str = "localhost") -> list[str]:
    """The command line that serves the session in $DRAWBENCH_SESSION: rater page and this organiser view."""
    return command(port, address)


def session_path() -> Path | None:
    path = os.environ.get(SESSION_ENV) or (sys.argv[1] if len(sys.argv) > 1 else None)
    return Path(path) if path else None


@st.cache_resource(show_spinner=False)
def _load(path: str, mtime: float) -> Session:
    return load_session(path)


@st.cache_resource(show_spinner=False)
def _jobs() -> dict:
    """{session path: the running statistics process}: at most one per session and server."""
    return {}


# ----------------------------------------------------------------------------- sign-in
MAX_TRIES = 5  # wrong passwords allowed per browser session before a wait
LOCK_BASE_S, LOCK_MAX_S = 2.0, 300.0  # the wait doubles with each further wrong try, up to five minutes


def _wait_left(kind: str) -> float:
    return max(0.0, st.session_state.get(f"lock::{kind}", 0.0) - time.time())


def _failed(kind: str) -> None:
    n = st.session_state.get(f"fails::{kind}", 0) + 1
    st.session_state[f"fails::{kind}"] = n
    if n >= MAX_TRIES:
        st.session_state[f"lock::{kind}"] = time.time() + min(LOCK_MAX_S, LOCK_BASE_S * 2 ** (n - MAX_TRIES))


def _too_many(kind: str) -> bool:
    left = _wait_left(kind)
    if left > 0:
        st.error(f"Too many wrong tries. Wait {math.ceil(left)} s before the next one.")
    return left > 0


def sign_in(session: Session) -> bool:
    if st.session_state.get("organiser_ok"):
        return True
    with st.form("organiser-sign-in"):
        pw = st.text_input("Organiser password", type="password", key="organiser_password")
        ok = st.form_submit_button("Open", type="primary")
    if ok and not _too_many("password"):
        if check_password(session, pw):
            st.session_state["organiser_ok"] = True
            st.rerun()
        _failed("password")
        st.error("Wrong password.")
    return False


# ----------------------------------------------------------------------------- statistics, elsewhere
def live_stats(session: Session, store: VoteStore) -> dict | None:
    """The last statistics computed for this session (None before any); starts a new computation in another
    process when votes came in since, unless one is running."""
    folder = session.path / LIVE_DIR
    summary = folder / SUMMARY_FILE
    data = json.loads(summary.read_text()) if summary.is_file() else None
    stamp = list(store.last_change())
    jobs = _jobs()
    key = str(session.path.resolve())
    job = jobs.get(key)
    if (data is None or data.get("stamp") != stamp) and (job is None or job.poll() is not None):
        jobs[key] = subprocess.Popen([sys.executable, "-m", "drawbench.live", key], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    return data


def organiser(session: Session, store: VoteStore) -> None:
    import pandas as pd

    total = min(session.quota, len(session.comparisons)) if session.quota else len(session.comparisons)
    prog = store.progress()
    m = st.columns(4)
    m[0].metric("Raters", len(prog))
    m[1].metric("Comparisons answered", int(prog["done"].sum()) if len(prog) else 0)
    m[2].metric("Comparisons per rater", total)
    m[3].metric("Systems", ", ".join(s.name for s in session.systems))
    st.subheader("Progress per rater")
    if len(prog) == 0:
        st.write("No rater has signed in yet.")
        return
    prog["progress"] = prog["done"] / total
    prog["last_vote"] = pd.to_datetime(prog["last"], unit="s", utc=True)
    live = live_stats(session, store)
    shown = prog[["rater", "name", "done", "progress", "last_vote", "median_seconds"]]
    if live and live.get("attention"):
        shown = shown.merge(pd.DataFrame(live["attention"]), on="rater", how="left")
    st.dataframe(shown, hide_index=True, width="stretch", column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent")})

    st.subheader("Live results")
    if live is None:
        st.write("Computing the first statistics…")
        return
    when = time.strftime("%H:%M:%S", time.localtime(live["computed"]))
    newer = " (newer votes are being added)" if live["stamp"] != list(store.last_change()) else ""
    st.caption(f"From {live['n_votes']} votes, computed {when} in a separate process{newer}.")
    s = live.get("summary")
    if not s:
        st.write("No votes yet.")
        return
    figure = session.path / LIVE_DIR / FIGURE_FILE
    if figure.is_file():
        st.image(figure.read_bytes(), caption="Preference per category (95% intervals over prompts and raters)")
    pref = pd.DataFrame(s["preference"])
    if len(pref):
        ov = pref[pref.category == "overall"]
        st.dataframe(ov[["system_a", "system_b", "question", "n", "prefer_a", "prefer_a_low", "prefer_a_high",
                         "indifferent", "prefer_b", "prefer_b_low", "prefer_b_high"]].round(3), hide_index=True,
                     width="stretch")
        with st.expander("Per category"):
            st.dataframe(pref.round(3), hide_index=True, width="stretch")
    if s["bradley_terry"]:
        st.caption("Bradley-Terry-Davidson strengths (log scale, 95% bootstrap intervals)")
        st.dataframe(pd.DataFrame(s["bradley_terry"]).round(3), hide_index=True, width="stretch")
    cols = st.columns(2)
    cols[0].caption("Agreement between raters (Krippendorff's alpha; 1 = perfect, 0 = chance)")
    cols[1].caption("Order effect (Davidson-Beaver log theta; 0 = none) and the plain left share")
    cols[0].dataframe(pd.DataFrame(s["agreement"]), hide_index=True, width="stretch")
    cols[1].dataframe(pd.DataFrame(s["order_effect"]).round(3), hide_index=True, width="stretch")
    cols[1].dataframe(pd.DataFrame(s["position_bias"]).round(3), hide_index=True, width="stretch")
    csv = session.path / LIVE_DIR / VOTES_CSV
    if csv.is_file():
        st.download_button("Download votes (CSV)", csv.read_bytes(), "votes.csv", "text/csv")


# ----------------------------------------------------------------------------- page
def main() -> None:
    st.set_page_config(page_title="DrawBench organiser", page_icon="🖼️", layout="wide")
    if CSS_FILE.is_file():
        st.html(f"<style>{CSS_FILE.read_text()}</style>")  # our own static stylesheet, no user content
    path = session_path()
    if path is None:
        st.error(f"No session given: run `imagen-bench drawbench app SESSION` (or set ${SESSION_ENV}).")
        return
    try:
        session = _load(str(path), (path / "session.json").stat().st_mtime if (path / "session.json").exists()
                        else 0.0)
        store = VoteStore.of_session(session)
    except UserError as exc:
        st.error(str(exc))
        return
    st.title("Organiser view")
    if not session.organiser:
        st.info("This session has no organiser password. Recreate it with DRAWBENCH_ORGANISER_PASSWORD set (or "
                "answer the password prompt of `drawbench pairs`) to use this view, "
                "or run `imagen-bench drawbench stats SESSION`.")
        return
    if sign_in(session):
        st.fragment(run_every=REFRESH_S)(organiser)(session, store)


if __name__ == "__main__":  # streamlit runs the script as __main__; importing it runs nothing
    main()
