"""End to end in a real headless Chromium: start `streamlit run` on the app, sign in with a code, vote twice
(once with the mouse, once with the keyboard shortcuts), and find both votes in the store; and a crowd-platform
participant who arrives by the study link, rates their quota and is given the completion code.

Set DRAWBENCH_SCREENSHOTS=DIR to keep screenshots of the sign-in, rating and organiser pages.
"""

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from drawbench.app import SESSION_ENV, streamlit_command
from drawbench.pairs import rater_order
from drawbench.votes import VoteStore
from drawbench_fixtures import make_session

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: install Debian's chromium (.ci/run does)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); CI runs this test")


@contextlib.contextmanager
def serve(session, cwd):
    """`streamlit run` the app on a session at a free port; yields its URL once healthy."""
    port = free_port()
    env = {**os.environ, SESSION_ENV: str(session.path)}
    proc = subprocess.Popen(
        streamlit_command(port, "127.0.0.1"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                pytest.fail(f"streamlit did not start on {url}: {out[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def server(tmp_path, data_dir):
    _need_chromium()
    session, codes = make_session(tmp_path, data_dir, n_prompts=5, n_codes=2, attention_rate=0.2)
    with serve(session, tmp_path) as url:
        yield url, session, codes


def settle(page) -> None:
    """Wait until the app has finished its rerun (Streamlit's "Running..." status widget is gone)."""
    page.wait_for_timeout(200)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')")


def test_rate_two_comparisons_in_chromium(server):
    from playwright.sync_api import expect, sync_playwright

    url, session, codes = server
    shots = os.environ.get("DRAWBENCH_SCREENSHOTS")
    order = rater_order(session, "rater-01")
    n = len(session.comparisons)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_label("Your name").fill("Ann")
            page.get_by_label("Access code").fill(codes[0])
            if shots:
                page.screenshot(path=f"{shots}/signin.png")
            page.get_by_role("button", name="Start rating").click()

            # first comparison: the prompt as text, 2 x per_set images; vote with the mouse
            expect(page.locator(".st-key-prompt")).to_contain_text(session.comparison(order[0]).prompt)
            expect(page.locator(".st-key-side-left img")).to_have_count(session.per_set)
            expect(page.locator(".st-key-side-right img")).to_have_count(session.per_set)
            page.wait_for_timeout(500)
            if shots:
                page.screenshot(path=f"{shots}/rating.png", full_page=True)
            page.locator(".st-key-btn-quality-left button").click()
            page.locator(".st-key-btn-alignment-same button").click()
            expect(page.locator(".st-key-submit button")).to_be_enabled()
            page.locator(".st-key-submit button").click()

            # second comparison: vote with the keyboard shortcuts (D = right set, J = left set, Enter)
            expect(page.locator(".st-key-prompt")).to_contain_text(session.comparison(order[1]).prompt)
            expect(page.get_by_text(f"1 of {n} comparisons done")).to_be_visible()
            settle(page)  # a key pressed while the app reruns is lost: wait for each rerun to finish
            page.keyboard.press("d")
            expect(page.locator(".st-key-btn-quality-right button")).to_have_attribute("kind", "primary")
            settle(page)
            page.keyboard.press("j")
            expect(page.locator(".st-key-btn-alignment-left button")).to_have_attribute("kind", "primary")
            expect(page.locator(".st-key-submit button")).to_be_enabled()
            settle(page)
            page.keyboard.press("Enter")
            expect(page.get_by_text(f"2 of {n} comparisons done")).to_be_visible()

            if shots:  # the organiser view, for a look
                org = browser.new_page(viewport={"width": 1440, "height": 1000})
                org.goto(f"{url}/?view=organiser")
                org.get_by_label("Organiser password").fill("org-pass")
                org.get_by_role("button", name="Open").click()
                expect(org.get_by_text("Progress per rater")).to_be_visible()
                org.wait_for_timeout(1500)
                org.screenshot(path=f"{shots}/organiser.png", full_page=True)
        finally:
            browser.close()

    votes = VoteStore.of_session(session).current_votes().set_index("comparison")
    assert len(votes) == 2
    assert votes.loc[order[0], ["quality", "alignment"]].tolist() == ["left", "same"]
    assert votes.loc[order[1], ["quality", "alignment"]].tolist() == ["right", "left"]
    assert set(votes.rater) == {"rater-01"}
    c1 = session.comparison(order[1])
    from drawbench.pairs import swapped_for

    shown_left, shown_right = (c1.right, c1.left) if swapped_for(session, "rater-01", order[1]) else (c1.left, c1.right)
    assert votes.loc[order[1], "quality_system"] == shown_right and votes.loc[order[1], "alignment_system"] == shown_left


def test_crowd_participant_signs_in_by_the_link_and_gets_the_completion_code(tmp_path, data_dir):
    """A Prolific participant opens the study link, rates their quota and is shown the completion code and the way
    back to the platform, in a real browser."""
    from playwright.sync_api import expect, sync_playwright

    from drawbench.pairs import build_session, crowd_settings
    from drawbench_fixtures import drawbench_prompts, make_study

    _need_chromium()
    prompts = drawbench_prompts(data_dir, 4)
    studies = [str(make_study(tmp_path / f"study{i}", prompts, hue=1.7 * i, n_samples=1)) for i in range(2)]
    back = "https://app.prolific.com/submissions/complete?cc=C1A2B3"
    session, _ = build_session(studies, tmp_path / "crowd", names=["sys0", "sys1"], per_set=1, quota=2,
                               crowd=crowd_settings("prolific", "C1A2B3", back))
    with serve(session, tmp_path) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/?PROLIFIC_PID=60a1b2c3&STUDY_ID=st9&SESSION_ID=se4")
            for k in range(2):
                expect(page.get_by_text(f"{k} of 2 comparisons done")).to_be_visible()
                settle(page)
                page.locator(".st-key-btn-quality-left button").click()
                page.locator(".st-key-btn-alignment-right button").click()
                expect(page.locator(".st-key-submit button")).to_be_enabled()
                page.locator(".st-key-submit button").click()
            expect(page.get_by_text("All 2 comparisons are done")).to_be_visible()
            expect(page.get_by_text("C1A2B3").first).to_be_visible()
            expect(page.get_by_role("link", name="Return to prolific to finish")).to_have_attribute("href", back)
        finally:
            browser.close()
    votes = VoteStore.of_session(session).current_votes()
    assert len(votes) == 2 and set(votes.rater) == {"prolific:60a1b2c3"}
    raters = VoteStore.of_session(session).raters()
    assert raters.name.tolist() == ["STUDY_ID=st9, SESSION_ID=se4"]
