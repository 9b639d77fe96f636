"""Raters at once on one rating server: N real browser raters (headless Chromium, one browser context each) on
127.0.0.1 against a session made by `imagen-bench drawbench pairs` and served by `imagen-bench drawbench app` (the
documented commands, run as commands), all starting together, each signing in with an access code, doing
the practice comparison and casting V votes as fast as the page allows (keys, then Enter the moment the comparison is
on screen). The browsers run on the same machine, so the figures include their own load.

Measured per rater count: opening the page (-> the sign-in form), sign-in (Start -> signed in, the instructions on
screen), Submit -> the next comparison on screen with its inputs enabled (every vote; seen by this script, and in the
page from the Enter key to the comparison's inputs enabled), votes cast against votes stored, page errors; afterwards
the store is checked for a second answer to any (rater, comparison), and the CPU per vote of each kind of process.
Bounded: at most 60 browser raters (400 with --http) and 50 votes each, and a time limit per rater count.

    python bench/perf/rating_load.py --raters 5 10 20 40 [--votes 10] [--size 256] [--together] [--json out.json]
    python bench/perf/rating_load.py --http --raters 40 200      # the server alone, raters without browsers
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's fake studies (real PNG files, DrawBench prompts)

MAX_RATERS, MAX_VOTES = 60, 50
IMAGEN_BENCH = (sys.executable, "-m", "imagen_bench")  # the `imagen-bench` command of this interpreter
MAX_HTTP_RATERS = 400  # --http raters cost a thread each, not a browser
CHOICES = ("left", "same", "right")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sec(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else None


# In the page: the time of the last Enter key (capturing, before the page's own handler), and a promise that the
# next comparison is on screen with its inputs enabled (or the study is done), watched by a MutationObserver rather
# than polled every frame, so the measuring costs the browsers next to nothing.
INIT = ("document.addEventListener('keydown', (e) => { if (e.key === 'Enter') window.__enter = performance.now(); }, "
        "true);")
NEXT = """(c) => new Promise((ok) => {
  const done = () => { const v = document.querySelector('#comparison[data-ready]');
                       return (v && v.dataset.comparison !== c) || document.querySelector('#done'); };
  const finish = () => { const v = document.querySelector('#comparison[data-ready]');
                         ok([performance.now() - window.__enter, v && !document.querySelector('#done') ?
                             v.dataset.comparison : null]); };
  if (done()) return finish();
  new MutationObserver((_, obs) => { if (done()) { obs.disconnect(); finish(); } })
    .observe(document.getElementById('app'), {subtree: true, childList: true, attributes: true});
})"""


async def one_rater(browser, url: str, code: str, votes: int, think: float, rng: random.Random,
                    out: dict, ready=None) -> None:
    ctx = await browser.new_context(viewport={"width": 1366, "height": 900})
    await ctx.add_init_script(INIT)
    page = await ctx.new_page()
    page.set_default_timeout(120_000)
    page.on("pageerror", lambda e: out["errors"].append(str(e)))
    t0 = time.perf_counter()
    await page.goto(url)
    await page.wait_for_selector("#code")
    t1 = time.perf_counter()
    out["open"].append(t1 - t0)
    await page.fill("#name", "rater")
    await page.fill("#code", code)
    t1 = time.perf_counter()
    await page.click("#sign-in button")
    await page.wait_for_selector("#instructions")
    out["sign_in"].append(time.perf_counter() - t1)
    out["open_to_signed_in"].append(time.perf_counter() - t0)
    await page.click("#practice")
    await page.wait_for_selector("#comparison[data-ready]")
    await page.keyboard.press("a")
    await page.keyboard.press("j")
    await page.keyboard.press("Enter")
    await page.click("#begin")
    await page.wait_for_selector("#comparison[data-ready]")
    cid = await page.get_attribute("#comparison", "data-comparison")
    if ready is not None:  # every rater on their first comparison: all vote at once
        await ready()
    for _ in range(votes):
        if think:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think)  # looking at the images
        await page.keyboard.press(rng.choice("asd"))
        await page.keyboard.press(rng.choice("jkl"))
        t = time.perf_counter()
        await page.keyboard.press("Enter")
        out["cast"] += 1
        in_page_ms, cid = await page.evaluate(NEXT, cid)
        out["submit"].append(time.perf_counter() - t)
        out["submit_in_page"].append(in_page_ms / 1000)
        if cid is None:
            break
    await ctx.close()


def new_figures() -> dict:
    """One rater count's figures: seconds per rater or vote, votes cast, page errors, failed raters."""
    return {"open": [], "sign_in": [], "open_to_signed_in": [], "submit": [], "submit_in_page": [], "errors": [],
            "cast": 0, "failed": []}


async def run_level(url: str, codes: list[str], n: int, votes: int, think: float, limit_s: float,
                    together: bool = False) -> dict:
    from playwright.async_api import async_playwright

    out = new_figures()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            t0 = time.perf_counter()
            arrived, go = [0, 0], asyncio.Event()  # raters past the barrier point: all, and those signed in

            def arrive(signed_in: bool) -> None:  # a rater on their first comparison, or one that failed before it
                arrived[0] += 1
                arrived[1] += signed_in
                if arrived[0] == n:
                    if arrived[1] == n:  # only a figure when every rater got there
                        out["all_signed_in_s"] = time.perf_counter() - t0
                    go.set()

            async def rater(k: int) -> None:
                reached = []

                async def ready() -> None:
                    reached.append(True)
                    arrive(True)
                    await go.wait()

                try:
                    await one_rater(browser, url, codes[k], votes, think, random.Random(k), out,
                                    ready if together else None)
                finally:
                    if together and not reached:
                        arrive(False)

            tasks = [asyncio.ensure_future(rater(k)) for k in range(n)]
            done, pending = await asyncio.wait(tasks, timeout=limit_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            out["wall_s"] = time.perf_counter() - t0
            out["failed"] = [repr(t.exception())[:200] for t in done if not t.cancelled() and t.exception()]
            out["failed"] += [f"timed out after {limit_s:g} s"] * len(pending)
        finally:
            await browser.close()
    return out


def http_rater(port: int, code: str, votes: int, rng: random.Random, out: dict, lock, start) -> None:
    """A rater without a browser: the requests the page makes, in order, on one kept-alive connection (the page,
    its assets, the session, sign-in, then per vote the vote and the next comparison's 8 images), so the server's
    own latency shows apart from the browsers' CPU."""
    import http.client
    from http.cookies import SimpleCookie

    con = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    jar: dict[str, str] = {}

    def call(method: str, path: str, body: dict | None = None):
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        con.request(method, path, body=data, headers=headers)
        resp = con.getresponse()
        raw = resp.read()
        for header in resp.headers.get_all("Set-Cookie") or []:
            jar.update({k: m.value for k, m in SimpleCookie(header).items()})
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw[:200]!r}")
        return json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw

    def record(**figures) -> None:  # each figure as it is measured, so a rater cut off keeps what it did
        with lock:
            for key, value in figures.items():
                if key == "cast":
                    out["cast"] += value
                else:
                    out[key].append(value)

    start.wait()
    t0 = time.perf_counter()
    try:
        for path in ("/", "/assets/rate.js", "/assets/rate.css"):
            call("GET", path)
        call("GET", "/api/session")
        t1 = time.perf_counter()
        record(open=t1 - t0)
        state = call("POST", "/api/sign-in", {"name": "rater", "code": code})["state"]
        shown = state["comparison"]["left"] + state["comparison"]["right"] + state["practice"]["images"]
        ahead = state["upcoming"]["left"] + state["upcoming"]["right"] if state["upcoming"] else []
        for url in shown + ahead:  # the practice and first comparison, and the next one fetched ahead
            call("GET", url)
        t2 = time.perf_counter()
        record(sign_in=t2 - t1, open_to_signed_in=t2 - t0)
        for _ in range(votes):
            t = time.perf_counter()
            record(cast=1)  # cast when sent, as a browser rater's vote is cast at the Enter key
            got = call("POST", "/api/vote", {"comparison": state["comparison"]["id"], "quality": rng.choice(CHOICES),
                                             "alignment": rng.choice(CHOICES), "revise": False, "seconds": 0.1})
            state = got["state"]
            if state["upcoming"]:  # what the page fetches ahead, as it shows the new comparison
                for url in state["upcoming"]["left"] + state["upcoming"]["right"]:
                    call("GET", url)
            record(submit=time.perf_counter() - t)
            if got["status"] != "stored" or not state["comparison"]:
                break
    finally:
        con.close()


def run_level_http(port: int, codes: list[str], n: int, votes: int, limit_s: float) -> dict:
    import threading

    out = new_figures()
    lock, start = threading.Lock(), threading.Event()

    def run(k: int) -> None:
        try:
            http_rater(port, codes[k], votes, random.Random(k), out, lock, start)
        except Exception as exc:  # noqa: BLE001 - reported as a failed rater
            with lock:
                out["failed"].append(repr(exc)[:200])

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.set()
    for t in threads:
        t.join(max(0.0, limit_s - (time.perf_counter() - t0)))
    out["wall_s"] = time.perf_counter() - t0
    with lock:  # raters still running past the limit are reported, and the figures copied as they stand
        out["failed"] += [f"timed out after {limit_s:g} s"] * sum(t.is_alive() for t in threads)
        return json.loads(json.dumps(out))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy (every core), from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def process_kind(pid: int, server: int) -> str | None:
    """Which part of the load a process is: the server, this script, Playwright's driver, a Chromium process."""
    if pid == server:
        return "server"
    if pid == os.getpid():
        return "script"
    try:  # Chromium rewrites its title, the arguments joined by spaces
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
    except OSError:
        return None
    if cmd and ("chrom" in cmd[0] or "headless_shell" in cmd[0]):
        kind = next((c[7:] for c in cmd if c.startswith("--type=")), "browser")
        return "chromium " + next((c[19:] for c in cmd if c.startswith("--utility-sub-type=")), kind)
    if cmd and "node" in cmd[0] and any("playwright" in c for c in cmd):
        return "playwright driver"
    return None


class CpuByProcess:
    """Samples every process's CPU seconds twice a second while a level runs and sums the growth per kind
    (processes that end between samples lose at most their last half second)."""

    def __init__(self, server: int):
        import threading

        self.server, self.first, self.last, self.kind = server, {}, {}, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid not in self.kind:
                self.kind[pid] = process_kind(pid, self.server)
            if self.kind[pid] is None:
                continue
            try:
                cpu = cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                continue
            self.first.setdefault(pid, cpu if pid in (self.server, os.getpid()) else 0.0)
            self.last[pid] = cpu

    def loop(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()

    def __enter__(self):
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()

    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, cpu in self.last.items():
            k = self.kind[pid]
            out[k] = out.get(k, 0.0) + cpu - self.first[pid]
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def pairs(studies: list[str], out: Path, seed: int, codes: int = 60) -> list[str]:
    """A session of `codes` access codes (60 at least) by the documented command; returns the codes."""
    env = {**os.environ, "DRAWBENCH_ORGANISER_PASSWORD": "load-test"}
    got = subprocess.run([*IMAGEN_BENCH, "drawbench", "pairs", *[a for s in studies for a in ("--study", s)],
                          "--per-set", "4", "--codes", str(max(60, codes)), "--attention-rate", "0.05",
                          "--seed", str(seed), "--out", str(out), "--json"],
                         env=env, check=True, capture_output=True, text=True)
    return list(json.loads(got.stdout)["codes"].values())


def serve(session: Path, port: int) -> tuple[subprocess.Popen, int]:
    """`imagen-bench drawbench app SESSION` in its own process group; returns it and the server's own pid."""
    proc = subprocess.Popen([*IMAGEN_BENCH, "drawbench", "app", str(session), "--port", str(port), "--address",
                             "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/session", timeout=2)
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            return proc, int(children[0]) if children else proc.pid
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("the rating server did not start")


def check_store(session: Path) -> tuple[int, int]:
    """(votes stored, (rater, comparison) keys with more than one row) straight from the SQLite file."""
    with sqlite3.connect(session / "votes.sqlite") as con:
        (stored,) = con.execute("SELECT COUNT(*) FROM votes").fetchone()
        (twice,) = con.execute("SELECT COUNT(*) FROM (SELECT 1 FROM votes GROUP BY rater, comparison "
                               "HAVING COUNT(*) > 1)").fetchone()
    return stored, twice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raters", type=int, nargs="+", default=[5, 10, 20, 40])
    ap.add_argument("--votes", type=int, default=10, help="votes per rater")
    ap.add_argument("--prompts", type=int, default=30, help="DrawBench prompts in the session (one comparison each)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (PNG)")
    ap.add_argument("--think", type=float, default=0.0,
                    help="mean seconds a rater looks before answering (0: as fast as the page allows)")
    ap.add_argument("--http", action="store_true",
                    help="raters without browsers: the page's requests from threads of this script, to see the "
                         "server's own latency apart from the browsers' CPU")
    ap.add_argument("--together", action="store_true",
                    help="votes start when every rater is on their first comparison (not while others sign in)")
    ap.add_argument("--limit", type=float, default=420.0, help="seconds allowed per rater count")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.http and (args.think or args.together):
        raise SystemExit("--think and --together are for browser raters; --http raters vote as fast as they can")
    if max(args.raters) > (MAX_HTTP_RATERS if args.http else MAX_RATERS) or args.votes > MAX_VOTES:
        raise SystemExit(f"at most {MAX_RATERS} raters ({MAX_HTTP_RATERS} with --http) and {MAX_VOTES} votes each")

    from drawbench_fixtures import drawbench_prompts, make_study

    data = Path(os.environ.get("IMAGEN_BENCH_DATA", ROOT.parent / "shared" / "data"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="rating-load-") as tmp:
        tmp = Path(tmp)
        prompts = drawbench_prompts(data, args.prompts)
        studies = [str(make_study(tmp / f"study{i}", prompts, hue=1.7 * i, n_samples=4, size=args.size))
                   for i in range(2)]
        for n in args.raters:
            session = tmp / f"session-{n}"
            codes = pairs(studies, session, seed=n, codes=n)
            port = free_port()
            proc, server = serve(session, port)
            try:
                cpu0, machine0 = cpu_seconds(server), machine_cpu_seconds()
                with CpuByProcess(server) as by_process:
                    url = f"http://127.0.0.1:{port}"
                    got = run_level_http(port, codes, n, args.votes, args.limit) if args.http else \
                        asyncio.run(run_level(url, codes, n, args.votes, args.think, args.limit, args.together))
                got["server_cpu_s"] = cpu_seconds(server) - cpu0
                got["machine_cpu_s"] = machine_cpu_seconds() - machine0
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
            stored, twice = check_store(session)
            row = {"raters": n, "cast": got["cast"], "stored": stored, "second_answers": twice,
                   "server_cpu_ms_per_vote": 1000 * got["server_cpu_s"] / max(1, got["cast"]),
                   "machine_cpu_ms_per_vote": 1000 * got["machine_cpu_s"] / max(1, got["cast"]),
                   "cpu_ms_per_vote_by_process": {k: round(1000 * v / max(1, got["cast"]))
                                                  for k, v in by_process.seconds().items()},
                   "page_errors": len(got["errors"]), "failed_raters": got["failed"], "wall_s": got["wall_s"],
                   "all_signed_in_s": got.get("all_signed_in_s")}
            for key in ("submit", "submit_in_page", "open", "sign_in", "open_to_signed_in"):
                xs = got[key]
                row[key] = {"p50": pct(xs, 0.5), "p95": pct(xs, 0.95), "max": max(xs, default=None)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| raters at once | votes stored / cast | second answers | Submit -> next comparison p50 / p95 / max "
          "(in the page: p95) | page open, median | sign-in (Start -> signed in) median / max | server CPU per vote "
          "| machine CPU per vote | page errors |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, p, o, g = r["submit"], r["submit_in_page"], r["open"], r["sign_in"]
        in_page = "no page" if p["p95"] is None else f"{p['p95']:.2f} s"
        print(f"| {r['raters']} | {r['stored']} / {r['cast']} | {r['second_answers']} | {sec(s['p50'])} / "
              f"{sec(s['p95'])} / {sec(s['max'])} s ({in_page}) | {sec(o['p50'])} s | {sec(g['p50'])} / "
              f"{sec(g['max'])} s | {r['server_cpu_ms_per_vote']:.0f} ms | {r['machine_cpu_ms_per_vote']:.0f} ms | "
              f"{r['page_errors']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
