"""The organiser's view in Streamlit's own test harness (AppTest): the password and its limit, progress per rater from
the store, and statistics computed by another process (SESSION/live/), not by the server that serves raters."""

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from drawbench.live import LIVE_DIR, SUMMARY_FILE
from drawbench.server import SESSION_ENV
from drawbench.votes import VoteStore
from drawbench_fixtures import make_session

APP = str(Path(__file__).resolve().parents[1] / "drawbench" / "app.py")


@pytest.fixture()
def session(tmp_path, data_dir, monkeypatch):
    s, codes = make_session(tmp_path, data_dir, n_prompts=4, n_codes=2)
    monkeypatch.setenv(SESSION_ENV, str(s.path))
    return s, codes


def start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def open_view(at: AppTest, password: str) -> AppTest:
    at.text_input(key="organiser_password").input(password)
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def test_organiser_view_progress_and_statistics_from_another_process(session):
    s, _ = session
    store = VoteStore.of_session(s)
    org = start()
    assert len(org.get("image")) == 0 and len(org.dataframe) == 0
    open_view(org, "wrong")
    assert "Wrong password" in org.error[0].value and len(org.dataframe) == 0
    open_view(org, "org-pass")
    assert "No rater has signed in yet" in org.markdown[-1].value
    store.register_rater("rater-01", "Ann")
    for c in s.comparisons[:2]:
        store.submit("rater-01", c.id, "left", "left", seconds=4.0)
    org.run()
    assert [m.value for m in org.metric][:3] == ["1", "2", str(len(s.comparisons))]
    progress = org.dataframe[0].value.set_index("rater")
    assert progress.loc["rater-01", "done"] == 2 and progress.loc["rater-01", "median_seconds"] == 4.0
    summary = s.path / LIVE_DIR / SUMMARY_FILE
    deadline = time.time() + 120
    while not summary.is_file() and time.time() < deadline:  # `python -m drawbench.live` is running
        time.sleep(0.2)
    org.run()
    assert not org.exception, org.exception
    assert len(org.get("image")) == 1  # the DrawBench figure, made by the other process
    assert any("From 2 votes" in c.value and "separate process" in c.value for c in org.caption)
    assert "pass_rate" in org.dataframe[0].value.columns  # attention checks per rater, from the same process


def test_wrong_passwords_are_rate_limited_per_browser_session(session):
    """Five wrong passwords, then a wait (2 s, doubling, up to 5 min) during which even the right one is not tried."""
    from drawbench import app

    org = start()
    for _ in range(app.MAX_TRIES):
        open_view(org, "wrong")
    assert org.session_state["fails::password"] == app.MAX_TRIES
    org.session_state["lock::password"] = time.time() + 60  # inside the wait whatever the machine's speed
    open_view(org, "org-pass")
    assert "Too many wrong tries" in org.error[0].value and "organiser_ok" not in org.session_state
    assert "organiser_ok" in open_view(start(), "org-pass").session_state  # another browser session


def test_no_password_no_view(tmp_path, data_dir, monkeypatch):
    s, _ = make_session(tmp_path, data_dir, n_prompts=2, n_codes=1, password=None)
    monkeypatch.setenv(SESSION_ENV, str(s.path))
    at = start()
    assert "no organiser password" in at.info[0].value and len(at.text_input) == 0
