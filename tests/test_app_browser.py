"""End to end in a real headless Chromium against `python -m drawbench.server` (what `drawbench app` runs): sign-in,
instructions and the practice, voting with the mouse and the keys, a reload, a change; the stale click; a key pressed
right after another; the images' pixels against their PNG files; the organiser view; a crowd participant.

Set DRAWBENCH_SCREENSHOTS=DIR to keep screenshots of the sign-in, rating, zoom and organiser pages.
"""

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drawbench.pairs import build_session, rater_order
from drawbench.server import command
from drawbench.votes import VoteStore
from drawbench_fixtures import make_session

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1366, "height": 900}


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
def serve(session):
    """Serve a session at a free port the way `drawbench app` does; yields its URL once it answers."""
    port = free_port()
    proc = subprocess.Popen(command(port, "127.0.0.1", session.path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/session", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                pytest.fail(f"the rating server did not start on {url}: {out[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_dir):
    _need_chromium()
    session, codes = make_session(tmp_path_factory.mktemp("rating"), data_dir, n_prompts=5, n_codes=4,
                                  attention_rate=0.2)
    with serve(session) as url:
        yield url, session, codes


def new_page(browser):
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.set_default_timeout(60_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def practise_and_begin(page):
    """Answer the practice comparison by keys (a, j, Enter), then begin the study."""
    page.click("#practice")
    page.wait_for_selector("#comparison[data-ready]")
    page.keyboard.press("a")
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    page.click("#begin")


def sign_in(page, url, code, practise=True):
    page.goto(url)
    page.fill("#name", "Ann")
    page.fill("#code", code)
    page.click("#sign-in button")
    if practise:  # the instructions, one practice comparison, then the study
        practise_and_begin(page)
    page.wait_for_selector("#comparison[data-ready]")


def shown(page) -> str:
    return page.get_attribute("#comparison", "data-comparison")


def button(q: str, choice: str) -> str:
    return f'#comparison button[data-q="{q}"][data-choice="{choice}"]'


def test_rate_in_chromium(browser, served):
    """Sign-in (a one-time code field, no organiser switch), instructions with the length and time, the practice,
    a vote with the mouse, one with the keys, the zoom, a reload that keeps the rater signed in, and a change."""
    from playwright.sync_api import expect

    url, session, codes = served
    shots = os.environ.get("DRAWBENCH_SCREENSHOTS")
    order = rater_order(session, "rater-01")
    n = len(session.comparisons)
    page, errors = new_page(browser)
    page.goto(url)
    code = page.locator("#code")
    assert code.get_attribute("type") == "text" and code.get_attribute("autocomplete") == "one-time-code"
    assert page.locator("input[type=password]").count() == 0  # nothing a browser offers to save as a password
    assert "organiser" not in page.content().lower()
    if shots:
        page.screenshot(path=f"{shots}/signin.png")
    page.fill("#name", "Ann")
    page.fill("#code", "wrong-code")
    page.click("#sign-in button")
    expect(page.locator("#sign-in-error")).to_contain_text("not valid")
    page.fill("#code", codes[0])
    page.click("#sign-in button")
    expect(page.locator("#instructions")).to_contain_text(f"You will compare {n} pairs")
    expect(page.locator("#instructions")).to_contain_text("minutes")
    page.click("#practice")
    expect(page.locator("#prompt")).to_contain_text("Practice")
    page.wait_for_selector("#comparison[data-ready]")
    page.click(button("quality", "left"))
    page.click(button("alignment", "left"))
    page.click("#submit")
    page.click("#begin")
    assert len(VoteStore.of_session(session).all_votes()) == 0  # the practice is not recorded

    # first comparison: the prompt as text, 2 x per_set images; vote with the mouse
    page.wait_for_selector("#comparison[data-ready]")
    assert shown(page) == order[0]
    expect(page.locator("#prompt .text")).to_have_text(session.comparison(order[0]).prompt)
    expect(page.locator('.set[data-side="left"] img')).to_have_count(session.per_set)
    expect(page.locator('.set[data-side="right"] img')).to_have_count(session.per_set)
    box = page.locator('.set[data-side="left"] img').first.bounding_box()
    assert box["height"] > 300  # as large as the screen allows (about 205 px before)
    if shots:
        page.screenshot(path=f"{shots}/rating.png")
    page.keyboard.press("z")  # the side-by-side zoom: image 1 of each set
    expect(page.locator("#zoom img")).to_have_count(2)
    assert page.locator("#zoom img").first.bounding_box()["height"] > 600
    if shots:
        page.screenshot(path=f"{shots}/zoom.png")
    page.keyboard.press("Escape")
    expect(page.locator("#zoom")).to_have_count(0)
    page.click(button("quality", "left"))
    page.click(button("alignment", "same"))
    page.click("#submit")

    # second comparison: the keys (D = right set, J = left set, Enter)
    page.wait_for_function(f"document.querySelector('#comparison')?.dataset.comparison === '{order[1]}'")
    page.keyboard.press("d")
    page.keyboard.press("j")
    expect(page.locator(button("quality", "right"))).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('#comparison')?.dataset.comparison === '{order[2]}'")
    expect(page.locator("#progress")).to_contain_text(f"2 of {n} comparisons done")

    # a reload keeps the rater signed in, on the same comparison
    page.reload()
    page.wait_for_selector("#comparison[data-ready]")
    assert shown(page) == order[2]
    # Previous: change the second answer; stored as a flagged revision, then back to the third comparison
    page.click("#previous")
    page.wait_for_function(f"document.querySelector('#comparison')?.dataset.comparison === '{order[1]}'")
    expect(page.locator(button("quality", "right"))).to_have_attribute("aria-pressed", "true")  # stored answers
    page.click(button("quality", "same"))
    page.click("#submit")
    page.wait_for_function(f"document.querySelector('#comparison')?.dataset.comparison === '{order[2]}'")
    assert not errors, errors

    hist = VoteStore.of_session(session).all_votes()
    got = {(r.comparison, r.revision): (r.quality, r.alignment, r.revised) for r in hist.itertuples()}
    assert got == {(order[0], 1): ("left", "same", 0), (order[1], 1): ("right", "left", 0),
                   (order[1], 2): ("same", "left", 1)}

    if shots:  # the organiser view, for a look
        org, _ = new_page(browser)
        org.goto(f"{url}/?view=organiser")
        org.get_by_label("Organiser password").fill("org-pass")
        org.get_by_role("button", name="Open").click()
        expect(org.get_by_text("Progress per rater")).to_be_visible()
        expect(org.get_by_text("separate process")).to_be_visible(timeout=60_000)  # the next refresh
        org.wait_for_timeout(1000)
        org.screenshot(path=f"{shots}/organiser.png", full_page=True)


def test_a_click_right_after_the_next_comparison_appears_answers_it(browser, served):
    """The stale click: a quick rater submits, and clicks an answer the moment the next prompt is on screen. The
    click must answer that comparison (not the one before, whose buttons the old page still showed), and no
    comparison gets a second answer."""
    url, session, codes = served
    order = rater_order(session, "rater-02")
    page, errors = new_page(browser)
    sign_in(page, url, codes[1])
    stored = {}
    for k in range(3):
        first, second = ("left", "same") if k % 2 == 0 else ("right", "right")
        if k == 0:
            page.click(button("quality", first))
            page.click(button("alignment", second))
        page.click("#submit")
        nxt = session.comparison(order[k + 1]).prompt
        # the moment the next prompt is on screen, click where that comparison's answer is, without waiting for
        # anything else (a human's fast click)
        page.wait_for_function("(p) => document.querySelector('#prompt .text')?.textContent === p", arg=nxt,
                               polling="raf")
        q, a = ("right", "right") if k % 2 == 0 else ("left", "same")
        for question, choice in (("quality", q), ("alignment", a)):
            rect = page.evaluate("(s) => { const r = document.querySelector(s).getBoundingClientRect(); "
                                 "return [r.x + r.width / 2, r.y + r.height / 2]; }", button(question, choice))
            page.mouse.click(*rect)
        assert page.get_attribute(button("quality", q), "aria-pressed") == "true", \
            f"the click right after comparison {k + 2} appeared did not answer it"
        stored[order[k]] = (first, second)
        stored[order[k + 1]] = (q, a)
    page.click("#submit")
    page.wait_for_function(f"document.querySelector('#comparison')?.dataset.comparison === '{order[4]}'")
    assert not errors, errors
    hist = VoteStore.of_session(session).all_votes()
    hist = hist[hist.rater == "rater-02"]
    assert not hist.duplicated(["comparison"]).any() and (hist.revision == 1).all()
    assert {r.comparison: (r.quality, r.alignment) for r in hist.itertuples()} == stored


def test_a_key_pressed_right_after_another_counts(browser, served):
    """Keys pressed with no pause between them (and Enter right after) all count: the page keeps the answers itself
    instead of asking the server after each key."""
    url, session, codes = served
    order = rater_order(session, "rater-03")
    page, errors = new_page(browser)
    sign_in(page, url, codes[2])
    for k, keys in enumerate(("dj", "sl", "ak")):
        page.wait_for_function(f"document.querySelector('#comparison')?.dataset.comparison === '{order[k]}'")
        for key in keys:
            page.keyboard.press(key)  # no delay between presses
        page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('#comparison')?.dataset.comparison === '{order[3]}'")
    assert not errors, errors
    hist = VoteStore.of_session(session).all_votes()
    hist = hist[hist.rater == "rater-03"].set_index("comparison")
    assert [tuple(hist.loc[order[k], ["quality", "alignment"]]) for k in range(3)] == \
        [("right", "left"), ("same", "right"), ("left", "same")]


def test_shown_images_are_their_png_files_pixel_for_pixel(browser, tmp_path, data_dir):
    """Every image on screen, read back from the page (its natural size, drawn on a canvas), equals its PNG file
    pixel for pixel: no re-encoding. The prompt is shown as plain text, never as HTML."""
    from drawbench_fixtures import make_study
    import pandas as pd

    evil = '<img src=x onerror="window.pwned=1"> **bold** $x^2$'
    prompts = pd.DataFrame([{"prompt_id": "p-evil", "prompt": evil, "category": "Text"}])
    a = make_study(tmp_path / "a", prompts, n_samples=2, size=96)
    b = make_study(tmp_path / "b", prompts, n_samples=2, hue=2.0, size=96)
    s, _ = build_session([str(a), str(b)], tmp_path / "s", per_set=2, open_access=True)
    with serve(s) as url:
        page, errors = new_page(browser)
        page.goto(url)
        page.fill("#name", "Cy")
        page.click("#sign-in button")
        practise_and_begin(page)
        page.wait_for_selector("#comparison[data-ready]")
        assert page.locator("#prompt .text").text_content() == evil
        assert page.evaluate("window.pwned") is None and page.locator("#prompt img").count() == 0
        pixels = page.evaluate("""() => [...document.querySelectorAll('#comparison .set img')].map((img) => {
            const c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            const ctx = c.getContext('2d');
            ctx.drawImage(img, 0, 0);
            return {src: img.getAttribute('src'), w: c.width, h: c.height,
                    data: Array.from(ctx.getImageData(0, 0, c.width, c.height).data)};
        })""")
    assert len(pixels) == 4 and not errors
    for shot in pixels:
        with Image.open(s.path / shot["src"].lstrip("/")) as im:
            want = np.asarray(im.convert("RGBA"))
        got = np.array(shot["data"], dtype=np.uint8).reshape(shot["h"], shot["w"], 4)
        assert got.shape == want.shape == (96, 96, 4) and np.array_equal(got, want)


def test_crowd_participant_signs_in_by_the_link_and_gets_the_completion_code(browser, tmp_path, data_dir):
    """A Prolific participant opens the study link, rates their quota and is shown the completion code and the way
    back to the platform."""
    from playwright.sync_api import expect

    from drawbench.pairs import crowd_settings
    from drawbench_fixtures import drawbench_prompts, make_study

    prompts = drawbench_prompts(data_dir, 4)
    studies = [str(make_study(tmp_path / f"study{i}", prompts, hue=1.7 * i, n_samples=1)) for i in range(2)]
    back = "https://app.prolific.com/submissions/complete?cc=C1A2B3"
    session, _ = build_session(studies, tmp_path / "crowd", names=["sys0", "sys1"], per_set=1, quota=2,
                               crowd=crowd_settings("prolific", "C1A2B3", back))
    with serve(session) as url:
        page, errors = new_page(browser)
        page.goto(f"{url}/?PROLIFIC_PID=60a1b2c3&STUDY_ID=st9&SESSION_ID=se4")
        expect(page.locator("#instructions")).to_contain_text("You will compare 2 pairs")
        practise_and_begin(page)
        for k in range(2):
            expect(page.locator("#progress")).to_contain_text(f"{k} of 2 comparisons done")
            page.click(button("quality", "left"))
            page.click(button("alignment", "right"))
            page.click("#submit")
        expect(page.locator("#done")).to_contain_text("All 2 comparisons are done")
        expect(page.locator("#completion-code")).to_have_text("C1A2B3")
        expect(page.locator("#completion-link")).to_have_attribute("href", back)
        assert not errors, errors
    votes = VoteStore.of_session(session).current_votes()
    assert len(votes) == 2 and set(votes.rater) == {"prolific:60a1b2c3"}
    assert VoteStore.of_session(session).raters().name.tolist() == ["STUDY_ID=st9, SESSION_ID=se4"]
