"""The rating app's flow in Streamlit's own test harness (AppTest): sign-in, voting, resuming, changing, organiser."""

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from drawbench.app import SESSION_ENV
from drawbench.pairs import build_session, rater_order, swapped_for
from drawbench.votes import VoteStore
from drawbench_fixtures import make_session, make_study

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


def sign_in(at: AppTest, name: str, code: str | None) -> AppTest:
    at.text_input(key="name").input(name)
    if code is not None:
        at.text_input(key="code").input(code)
    at.button[0].click().run()  # the form's submit button
    assert not at.exception, at.exception
    return at


def vote(at: AppTest, quality: str, alignment: str) -> AppTest:
    at.button(key=f"btn-quality-{quality}").click().run()
    at.button(key=f"btn-alignment-{alignment}").click().run()
    assert not at.button(key="submit").disabled
    at.button(key="submit").click().run()
    assert not at.exception, at.exception
    return at


def shown_prompt(at: AppTest) -> str:
    return at.text[0].value


def test_nothing_without_a_valid_code(session):
    s, codes = session
    at = start()
    assert len(at.get("image")) == 0 and len(at.text) == 0
    sign_in(at, "Ann", "not-a-code")
    assert "not valid" in at.error[0].value
    assert len(at.get("image")) == 0 and len(at.text) == 0
    assert "rater" not in at.session_state
    assert len(VoteStore.of_session(s).raters()) == 0  # a wrong code registers nobody


def test_vote_flow_resume_and_change(session):
    s, codes = session
    order = rater_order(s, "rater-01")
    at = sign_in(start(), "Ann", codes[0])
    # the first comparison of this rater's own order, with both sets of images (4 per side)
    first = s.comparison(order[0])
    assert shown_prompt(at) == first.prompt
    assert len(at.get("image")) == 2 * s.per_set
    assert f"0 of {len(s.comparisons)}" in at.get("progress")[0].proto.text
    assert at.button(key="submit").disabled  # not before both questions are answered

    vote(at, "left", "same")
    assert shown_prompt(at) == s.comparison(order[1]).prompt
    assert f"1 of {len(s.comparisons)}" in at.get("progress")[0].proto.text
    votes = VoteStore.of_session(s).current_votes()
    assert len(votes) == 1
    v = votes.iloc[0]
    assert (v.comparison, v.rater, v.quality, v.alignment) == (order[0], "rater-01", "left", "same")
    shown_left = first.right if swapped_for(s, "rater-01", order[0]) else first.left  # this rater's own sides
    assert v.quality_system == shown_left and v.left_system == shown_left and v.alignment_system is None

    # a rater who leaves and returns (a new browser session) continues where they stopped
    at2 = sign_in(start(), "Ann", codes[0])
    assert shown_prompt(at2) == s.comparison(order[1]).prompt
    assert f"1 of {len(s.comparisons)}" in at2.get("progress")[0].proto.text

    # change the first vote: Previous shows it with the stored answers, a new submission adds a revision
    at2.button(key="back").click().run()
    assert shown_prompt(at2) == first.prompt
    assert at2.button(key="btn-quality-left").proto.type == "primary"  # the stored answer is preselected
    vote(at2, "right", "right")
    hist = VoteStore.of_session(s).all_votes()
    assert len(hist) == 2 and hist.revision.tolist() == [1, 2]
    cur = VoteStore.of_session(s).current_votes()
    shown_right = first.left if swapped_for(s, "rater-01", order[0]) else first.right
    assert len(cur) == 1 and cur.iloc[0].quality == "right" and cur.iloc[0].quality_system == shown_right
    assert shown_prompt(at2) == s.comparison(order[1]).prompt  # back to the next unanswered comparison


def test_each_comparison_once_then_done(session):
    s, codes = session
    at = sign_in(start(), "Bo", codes[1])
    seen = []
    for _ in range(len(s.comparisons)):
        seen.append(shown_prompt(at))
        vote(at, "same", "left")
    assert sorted(seen) == sorted(c.prompt for c in s.comparisons)
    assert "done" in at.success[0].value
    assert len(VoteStore.of_session(s).current_votes()) == len(s.comparisons)
    # another rater sees a different order of the same comparisons
    assert rater_order(s, "rater-01") != rater_order(s, "rater-02")


def test_prompt_is_plain_text(tmp_path, data_dir, monkeypatch):
    evil = '<img src=x onerror="alert(1)"> **bold** :red[x] $x^2$'
    prompts = pd.DataFrame([{"prompt_id": "p-evil", "prompt": evil, "category": "Text"}])
    a = make_study(tmp_path / "a", prompts, n_samples=2)
    b = make_study(tmp_path / "b", prompts, n_samples=2, hue=2.0)
    s, _ = build_session([str(a), str(b)], tmp_path / "s", per_set=2, open_access=True)
    monkeypatch.setenv(SESSION_ENV, str(s.path))
    at = sign_in(start(), "Cy", None)  # no codes: a name is enough
    assert shown_prompt(at) == evil
    assert all(evil not in m.value and "onerror" not in m.value for m in at.markdown)
    assert all("onerror" not in h.proto.body for h in at.get("html"))
    assert VoteStore.of_session(s).raters().rater.tolist() == ["Cy"]


def test_organiser_view(session):
    s, codes = session
    at = sign_in(start(), "Ann", codes[0])
    vote(at, "left", "left")
    org = start()
    org.sidebar.radio(key="view").set_value("Organiser").run()
    assert len(org.get("image")) == 0
    org.text_input(key="organiser_password").input("wrong").run()
    org.button[0].click().run()
    assert "Wrong password" in org.error[0].value and len(org.dataframe) == 0
    org.text_input(key="organiser_password").input("org-pass")
    org.button[0].click().run()
    assert not org.exception, org.exception
    assert [m.value for m in org.metric][:2] == ["1", "1"]
    progress = org.dataframe[0].value
    assert progress.set_index("rater").loc["rater-01", "done"] == 1
    assert len(org.dataframe) >= 2  # progress and live results
    assert len(org.get("image")) == 1  # the DrawBench figure, live


def test_wrong_codes_and_passwords_are_rate_limited_per_browser_session(session):
    """Five wrong codes, then a wait (2 s, doubling, up to 5 min) during which even the right code is not tried; the
    organiser password the same. A new browser session starts with a clean count."""
    from drawbench import app

    import time

    s, codes = session
    at = start()
    for k in range(app.MAX_TRIES):
        t0 = time.time()
        sign_in(at, "Ann", f"wrong-{k}")
        assert "not valid" in at.error[0].value
    lock = at.session_state["lock::code"]
    assert at.session_state["fails::code"] == app.MAX_TRIES and t0 + app.LOCK_BASE_S <= lock <= time.time() + 2.0
    at.session_state["lock::code"] = time.time() + 60  # the same wait, made long enough for a slow test machine
    sign_in(at, "Ann", codes[0])  # the right code, inside the wait: refused without being checked
    assert "Too many wrong tries" in at.error[0].value and "rater" not in at.session_state
    assert sign_in(start(), "Ann", codes[0]).session_state["rater"] == "rater-01"  # another browser session
    org = start()
    org.sidebar.radio(key="view").set_value("Organiser").run()
    for _ in range(app.MAX_TRIES):
        org.text_input(key="organiser_password").input("wrong")
        org.button[0].click().run()
    assert org.session_state["fails::password"] == app.MAX_TRIES
    org.session_state["lock::password"] = time.time() + 60  # as above: inside the wait whatever the machine's speed
    org.text_input(key="organiser_password").input("org-pass")
    org.button[0].click().run()
    assert "Too many wrong tries" in org.error[0].value and "organiser_ok" not in org.session_state


def test_an_open_session_says_so_on_its_sign_in_page(tmp_path, data_dir, monkeypatch):
    s, _ = make_session(tmp_path, data_dir, n_prompts=3, n_codes=0)
    monkeypatch.setenv(SESSION_ENV, str(s.path))
    at = start()
    assert s.open_access and "open session" in at.warning[0].value


def test_crowd_platform_sign_in_quota_and_completion(tmp_path, data_dir, monkeypatch):
    """A Prolific participant arrives by the study link (?PROLIFIC_PID=...&STUDY_ID=...&SESSION_ID=...), is a rater
    without any code, does the quota of comparisons and gets the completion code and the link back."""
    from drawbench.pairs import crowd_settings
    from drawbench_fixtures import drawbench_prompts

    prompts = drawbench_prompts(data_dir, 5)
    a = make_study(tmp_path / "a", prompts, hue=0.0, n_samples=2)
    b = make_study(tmp_path / "b", prompts, hue=1.7, n_samples=2)
    url = "https://app.prolific.com/submissions/complete?cc=C1A2B3"
    s, codes = build_session([str(a), str(b)], tmp_path / "s", per_set=2, quota=3,
                             crowd=crowd_settings("prolific", "C1A2B3", url))
    assert codes == [] and not s.open_access
    monkeypatch.setenv(SESSION_ENV, str(s.path))
    at = start()  # no participant id in the URL: nothing to rate
    assert "PROLIFIC_PID" in at.error[0].value and len(at.get("image")) == 0
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["PROLIFIC_PID"] = "5f3c<b>x"
    at.query_params["STUDY_ID"] = "st1"
    at.run()
    assert at.session_state["rater"] == "prolific:5f3cbx"  # only letters, digits, - and _ are kept
    order = rater_order(s, "prolific:5f3cbx")
    assert len(order) == 3 and "0 of 3" in at.get("progress")[0].proto.text
    for _ in range(3):
        vote(at, "left", "right")
    assert "All 3 comparisons are done" in at.success[0].value
    assert at.code[0].value == "C1A2B3"
    raters = VoteStore.of_session(s).raters()
    assert raters.loc[raters.rater == "prolific:5f3cbx", "name"].item() == "STUDY_ID=st1"
    votes = VoteStore.of_session(s).current_votes()
    assert len(votes) == 3 and votes.seconds.notna().all()  # time per vote kept
