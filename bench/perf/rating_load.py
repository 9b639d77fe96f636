"""Raters at once on one rating server: N real browser raters (headless Chromium, one browser context each) on
127.0.0.1 against a session made by `imagen-bench drawbench pairs` and served by `imagen-bench drawbench app` (the
documented commands, run as commands), all starting together, each signing in with an access code, doing
the practice comparison and casting V votes as fast as the page allows (keys, then Enter the moment the comparison is
on screen). The browsers run on the same machine, so the figures include their own load.

Measured per rater count: opening the page (-> the sign-in form), sign-in (Start -> signed in, the instructions on
screen), Submit -> the next comparison on screen with its inputs enabled (every vote; seen by this script, and in the
page from the Enter key to the comparison's inputs enabled), votes cast against votes stored, page errors; afterwards
the store is checked for a second answer to any (rater, comparison). Bounded: at most 60 raters and 50 votes each,
and a time limit per rater count.

    python bench/perf/rating_load.py --raters 5 10 20 40 [--votes 10] [--size 256] [--json out.json]
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
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else float("nan")


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
                    out: dict) -> None:
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


async def run_level(url: str, codes: list[str], n: int, votes: int, think: float, limit_s: float) -> dict:
    from playwright.async_api import async_playwright

    out = {"open": [], "sign_in": [], "open_to_signed_in": [], "submit": [], "submit_in_page": [], "errors": [],
           "cast": 0}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            t0 = time.perf_counter()
            tasks = [one_rater(browser, url, codes[k], votes, think, random.Random(k), out) for k in range(n)]
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), limit_s)
            out["wall_s"] = time.perf_counter() - t0
            out["failed"] = [repr(r)[:200] for r in results if isinstance(r, BaseException)]
        finally:
            await browser.close()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy (every core), from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def pairs(studies: list[str], out: Path, seed: int) -> list[str]:
    """A session of 60 access codes by the documented command; returns the codes."""
    env = {**os.environ, "DRAWBENCH_ORGANISER_PASSWORD": "load-test"}
    got = subprocess.run(["imagen-bench", "drawbench", "pairs", *[a for s in studies for a in ("--study", s)],
                          "--per-set", "4", "--codes", "60", "--attention-rate", "0.05", "--seed", str(seed),
                          "--out", str(out), "--json"], env=env, check=True, capture_output=True, text=True)
    return list(json.loads(got.stdout)["codes"].values())


def serve(session: Path, port: int) -> tuple[subprocess.Popen, int]:
    """`imagen-bench drawbench app SESSION` in its own process group; returns it and the server's own pid."""
    proc = subprocess.Popen(["imagen-bench", "drawbench", "app", str(session), "--port", str(port), "--address",
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
    ap.add_argument("--limit", type=float, default=420.0, help="seconds allowed per rater count")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if max(args.raters) > MAX_RATERS or args.votes > MAX_VOTES:
        raise SystemExit(f"at most {MAX_RATERS} raters and {MAX_VOTES} votes each")

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
            codes = pairs(studies, session, seed=n)
            port = free_port()
            proc, server = serve(session, port)
            try:
                cpu0, machine0 = cpu_seconds(server), machine_cpu_seconds()
                got = asyncio.run(run_level(f"http://127.0.0.1:{port}", codes, n, args.votes, args.think,
                                            args.limit))
                got["server_cpu_s"] = cpu_seconds(server) - cpu0
                got["machine_cpu_s"] = machine_cpu_seconds() - machine0
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
            stored, twice = check_store(session)
            row = {"raters": n, "cast": got["cast"], "stored": stored, "second_answers": twice,
                   "server_cpu_ms_per_vote": 1000 * got["server_cpu_s"] / max(1, got["cast"]),
                   "machine_cpu_ms_per_vote": 1000 * got["machine_cpu_s"] / max(1, got["cast"]),
                   "page_errors": len(got["errors"]), "failed_raters": got["failed"], "wall_s": got["wall_s"]}
            for key in ("submit", "submit_in_page", "open", "sign_in", "open_to_signed_in"):
                xs = got[key]
                row[key] = {"p50": pct(xs, 0.5), "p95": pct(xs, 0.95), "max": max(xs, default=float("nan"))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| raters at once | votes stored / cast | second answers | Submit -> next comparison p50 / p95 / max "
          "(in the page: p95) | page open, median | sign-in (Start -> signed in) median / max | server CPU per vote "
          "| machine CPU per vote | page errors |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, p, o, g = r["submit"], r["submit_in_page"], r["open"], r["sign_in"]
        print(f"| {r['raters']} | {r['stored']} / {r['cast']} | {r['second_answers']} | {s['p50']:.2f} / "
              f"{s['p95']:.2f} / {s['max']:.2f} s ({p['p95']:.2f} s) | {o['p50']:.2f} s | {g['p50']:.2f} / "
              f"{g['max']:.2f} s | {r['server_cpu_ms_per_vote']:.0f} ms | {r['machine_cpu_ms_per_vote']:.0f} ms | "
              f"{r['page_errors']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
