"""The rater's service without a browser: sign-in, the comparison on screen, votes that name their comparison (stale
ones ignored, changes only when asked for), the signed cookie, images byte for byte; over HTTP, and a server killed
mid-run on both vote stores."""

import hashlib
import http.client
import http.cookiejar
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from drawbench.pairs import build_session, crowd_settings, rater_order, swapped_for
from drawbench.rating import MAX_TRIES, Desk, SignInRefused
from drawbench.server import build, command
from drawbench.votes import VoteRefused, VoteStore
from drawbench_fixtures import drawbench_prompts, make_session, make_study, use_store


@pytest.fixture()
def coded(tmp_path, data_dir):
    s, codes = make_session(tmp_path, data_dir, n_prompts=4, n_codes=2, attention_rate=0.2)
    return Desk(s, VoteStore.of_session(s)), codes


def test_sign_in_by_code_and_its_limit(coded):
    desk, codes = coded
    assert desk.sign_in({"name": "Ann", "code": codes[0]}, "b1") == "rater-01"
    for k in range(MAX_TRIES):
        with pytest.raises(SignInRefused, match="not valid"):
            desk.sign_in({"name": "Bo", "code": f"wrong-{k}"}, "b2")
    with pytest.raises(SignInRefused, match="Too many wrong tries"):  # even the right code waits
        desk.sign_in({"name": "Bo", "code": codes[1]}, "b2")
    assert desk.sign_in({"name": "Bo", "code": codes[1]}, "b3") == "rater-02"  # another browser
    assert desk.store.raters().rater.tolist() == ["rater-01", "rater-02"]  # wrong codes registered nobody


def test_the_cookie_is_signed_by_the_session(coded, tmp_path, data_dir):
    desk, codes = coded
    token = desk.token("rater-01")
    assert desk.rater_of(token) == "rater-01"
    raw, mac = token.rsplit(".", 1)
    forged = desk.token("rater-02").split(".")[0] + "." + mac
    assert desk.rater_of(forged) is None and desk.rater_of("rater-01") is None and desk.rater_of(None) is None
    other, _ = make_session(tmp_path / "other", data_dir, n_prompts=2, n_codes=1)
    assert Desk(other, VoteStore.of_session(other)).rater_of(token) is None  # another session's cookie


def test_votes_name_their_comparison_and_stale_ones_are_ignored(coded):
    desk, codes = coded
    s = desk.session
    rater = desk.sign_in({"code": codes[0]}, "b")
    order = rater_order(s, rater)
    st = desk.state(rater)
    assert st["comparison"]["id"] == order[0] and st["upcoming"]["id"] == order[1] and st["done"] == 0
    assert st["practice"]["images"] and st["previous"] is None
    c0 = s.comparison(order[0])
    shown_left = c0.right_images if swapped_for(s, rater, order[0]) else c0.left_images
    assert st["comparison"]["left"] == ["/" + p for p in shown_left]  # this rater's own sides
    out = desk.vote(rater, {"comparison": order[0], "quality": "left", "alignment": "same", "seconds": 3.2})
    assert out["status"] == "stored" and out["state"]["comparison"]["id"] == order[1]
    # the same click again, and a click on the previous comparison's buttons: not on screen any more
    for answer in ("left", "right"):
        stale = desk.vote(rater, {"comparison": order[0], "quality": answer, "alignment": answer})
        assert stale["status"] == "ignored" and stale["state"]["comparison"]["id"] == order[1]
    # a comparison further on is not on screen yet either
    assert desk.vote(rater, {"comparison": order[2], "quality": "left", "alignment": "left"})["status"] == "ignored"
    with pytest.raises(VoteRefused, match="not one of yours"):
        desk.vote(rater, {"comparison": "c99999", "quality": "left", "alignment": "left"})
    with pytest.raises(VoteRefused, match="both questions"):
        desk.vote(rater, {"comparison": order[1], "quality": "left"})
    hist = desk.store.all_votes()
    assert len(hist) == 1 and hist.iloc[0].seconds == 3.2
    # a change the rater asks for: the earlier comparison with its answers, stored as a flagged revision
    rv = desk.review(rater, order[0])
    assert rv["answers"] == {"quality": "left", "alignment": "same"} and rv["previous"] is None
    assert desk.vote(rater, {"comparison": order[0], "quality": "right", "alignment": "same",
                             "revise": True})["status"] == "stored"
    hist = desk.store.all_votes()
    assert hist.revision.tolist() == [1, 2] and hist.revised.tolist() == [0, 1]
    with pytest.raises(VoteRefused, match="no answer"):
        desk.review(rater, order[1])


def test_open_and_crowd_sign_in(tmp_path, data_dir):
    s, _ = make_session(tmp_path, data_dir, n_prompts=3, n_codes=0)
    desk = Desk(s, VoteStore.of_session(s))
    assert desk.public()["open"]
    with pytest.raises(SignInRefused, match="enter your name"):
        desk.sign_in({"name": "  "}, "b")
    assert desk.sign_in({"name": "  Cy   Do "}, "b") == "Cy Do"

    prompts = drawbench_prompts(data_dir, 5)
    a = make_study(tmp_path / "a", prompts, hue=0.0, n_samples=2)
    b = make_study(tmp_path / "b", prompts, hue=1.7, n_samples=2)
    url = "https://app.prolific.com/submissions/complete?cc=C1A2B3"
    s, _ = build_session([str(a), str(b)], tmp_path / "crowd", per_set=2, quota=3,
                         crowd=crowd_settings("prolific", "C1A2B3", url))
    desk = Desk(s, VoteStore.of_session(s))
    with pytest.raises(SignInRefused, match="PROLIFIC_PID"):
        desk.sign_in({"params": {"STUDY_ID": "st1"}}, "b")
    rater = desk.sign_in({"params": {"PROLIFIC_PID": "5f3c<b>x", "STUDY_ID": "st1"}}, "b")
    assert rater == "prolific:5f3cbx"  # only letters, digits, - and _ are kept
    for _ in range(3):
        st = desk.state(rater)
        desk.vote(rater, {"comparison": st["comparison"]["id"], "quality": "left", "alignment": "right"})
    st = desk.state(rater)
    assert st["comparison"] is None and st["done"] == st["total"] == 3
    assert st["completion"] == {"code": "C1A2B3", "url": url, "platform": "prolific"}
    assert desk.store.raters().name.tolist() == ["STUDY_ID=st1"]


# ----------------------------------------------------------------------------- over HTTP
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def in_thread(app):
    """Serve an ASGI app with uvicorn in a thread of this process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class Client:
    """A browser without a screen: cookies kept, JSON in and out."""

    def __init__(self, url: str):
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str):
        try:
            with self.opener.open(self.url + path, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def post(self, path: str, body: dict):
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with self.opener.open(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def test_http_page_sign_in_reload_vote_and_images(coded):
    desk, codes = coded
    s = desk.session
    with in_thread(build(s.path, organiser=False)) as url:
        web = Client(url)
        status, headers, page = web.get("/")
        assert status == 200 and b"/assets/rate.js" in page and b"organiser" not in page.lower()
        assert web.get("/assets/rate.js")[0] == 200 and web.get("/assets/other.js")[0] == 404
        assert json.loads(web.get("/api/session")[2])["state"] is None
        assert web.post("/api/sign-in", {"name": "Ann", "code": "nope"})[0] == 403
        status, out = web.post("/api/sign-in", {"name": "Ann", "code": codes[0]})
        assert status == 200 and out["state"]["rater"] == "rater-01"
        again = json.loads(web.get("/api/session")[2])  # a reload: still signed in, by the cookie
        assert again["state"]["comparison"]["id"] == out["state"]["comparison"]["id"]
        first = out["state"]["comparison"]
        status, voted = web.post("/api/vote", {"comparison": first["id"], "quality": "left", "alignment": "left"})
        assert status == 200 and voted["status"] == "stored"
        status, stale = web.post("/api/vote", {"comparison": first["id"], "quality": "right", "alignment": "left"})
        assert stale["status"] == "ignored" and len(desk.store.all_votes()) == 1
        assert Client(url).post("/api/vote", {"comparison": first["id"]})[0] == 401  # not signed in
        # an image comes back byte for byte, kept by the browser for good; nothing outside images/ is served
        img = first["left"][0]
        status, headers, body = web.get(img)
        assert status == 200 and headers["content-type"] == "image/png" and "immutable" in headers["cache-control"]
        assert hashlib.sha256(body).hexdigest() == img.rsplit("/", 1)[1].split(".")[0]
        assert body == (s.path / img.lstrip("/")).read_bytes()
        for bad in ("/images/..%2Fsession.json", "/images/session.json", "/images/" + "0" * 64 + ".png"):
            assert web.get(bad)[0] == 404
        assert web.get("/?view=organiser")[0] in (200, 404)  # redirected to /organiser/ (not mounted here)
    display = json.loads((s.path / "display.json").read_text())
    assert display["formats"] == ["PNG"] and "byte for byte" in display["served"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_server_killed_mid_run_loses_and_duplicates_nothing(kind, tmp_path, data_dir):
    """Six raters vote over HTTP as fast as they can; the server is killed (SIGKILL) mid-run and started again, and
    each rater sends the vote that got no answer again, as the page does: every acknowledged vote is stored once,
    and no comparison has two first answers."""
    s, codes = make_session(tmp_path, data_dir, n_prompts=10, n_codes=6)
    drop = use_store(s, kind)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def start():
        proc = subprocess.Popen(command(port, "127.0.0.1", s.path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/api/session", timeout=2)
                return proc
            except OSError:
                time.sleep(0.2)
        proc.kill()
        pytest.fail(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")

    acked: dict[str, list] = {}
    errors: list = []

    def rater(code: str) -> None:
        try:
            vote_all(code)
        except Exception as exc:  # noqa: BLE001  (reported by the test below)
            errors.append(repr(exc))

    def post(web, path, body):
        for _ in range(300):  # until the server answers (it is down for a while)
            try:
                status, out = web.post(path, body)
                assert status == 200, out
                return out
            except (OSError, http.client.HTTPException):  # down, or killed while answering
                time.sleep(0.1)
        raise TimeoutError(path)

    def vote_all(code: str) -> None:
        web = Client(url)
        state = post(web, "/api/sign-in", {"code": code})["state"]
        acked[state["rater"]] = []
        while state["comparison"] is not None:
            vote = {"comparison": state["comparison"]["id"], "quality": "left", "alignment": "right"}
            state = post(web, "/api/vote", vote)["state"]
            acked[state["rater"]].append(vote["comparison"])

    proc = start()
    try:
        threads = [threading.Thread(target=rater, args=(c,)) for c in codes]
        for t in threads:
            t.start()
        store = VoteStore.of_session(s)
        while store.count() < len(s.comparisons):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = store.count()
        proc = start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        hist = store.all_votes()
        n = len(s.comparisons)
        assert killed_at < 6 * n and len(hist) == 6 * n and (hist.revision == 1).all()
        assert not hist.duplicated(["rater", "comparison"]).any()
        for name, cids in acked.items():
            assert sorted(cids) == sorted(rater_order(s, name))
            assert set(hist[hist.rater == name].comparison) == set(cids)
    finally:
        proc.kill()
        proc.wait()
        drop()


def test_the_load_script_drives_raters_without_browsers_and_checks_the_store(tmp_path, data_dir):
    """bench/perf/rating_load.py --http, small: every vote cast is stored once, no rater fails (so the benchmark
    that documents how many raters one server holds cannot rot)."""
    out = tmp_path / "load.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "perf" / "rating_load.py"
    got = subprocess.run([sys.executable, str(script), "--http", "--raters", "6", "--votes", "3", "--prompts", "10",
                          "--json", str(out)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "IMAGEN_BENCH_DATA": str(data_dir)})
    assert got.returncode == 0, got.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert (row["raters"], row["cast"], row["stored"], row["second_answers"]) == (6, 18, 18, 0)
    assert row["failed_raters"] == [] and row["page_errors"] == 0
    assert len([x for x in [row["submit"]["p50"], row["submit"]["p95"]] if x > 0]) == 2
    assert row["cpu_ms_per_vote_by_process"]["server"] > 0
