"""The rater's side of a session as a small HTTP service: one plain page (rate.html, rate.js, rate.css), a JSON API,
and the session's images served as files, byte for byte as generated.

Each interaction does the work of one comparison: a vote is one request that stores the vote and answers with the
next comparison (and the one after it, for the browser to fetch ahead). Nothing re-reads the study tables or
re-encodes an image; the session is loaded once per server.

Who is on which comparison is the store's business, not the server's memory: a rater's comparison on screen is
the first of their own order without an answer, so several servers (behind one address, with a PostgreSQL store)
can serve the same raters. Every submitted vote names the comparison it answers; a first answer for any other
comparison than the one on the rater's screen is ignored, and a change to an earlier answer is stored only when
the rater asked for it (`revise`), flagged in the store.

Sign-in: an access code (5 wrong tries per browser, then a doubling wait), a name in an open session, or a crowd
platform's participant id from the link. The rater stays signed in through reloads by a signed cookie (HMAC with the
session's secret salt, so every server of the session accepts it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import statistics
import threading
import time
from pathlib import Path

from drawbench.choices import CHOICES
from drawbench.pairs import IMAGES_DIR, Session, crowd_rater, rater_for_code, rater_order, swapped_for
from drawbench.votes import AlreadyAnswered, VoteRefused, VoteStore
from imagen.errors import UserError
from imagen.fileio import atomic_write

ASSETS = {name: Path(__file__).with_name(name) for name in ("rate.html", "rate.js", "rate.css")}
MAX_TRIES = 5  # wrong codes allowed per browser before a wait
LOCK_BASE_S, LOCK_MAX_S = 2.0, 300.0  # the wait doubles with each further wrong try, up to five minutes
DEFAULT_SECONDS = 20.0  # the expected time per comparison until the session's own raters say otherwise
IMAGE_NAME = re.compile(r"^[0-9a-f]{64}\.(png|jpg|jpeg|webp)$")
DISPLAY_FILE = "display.json"


class SignInRefused(UserError):
    """A sign-in that did not name a rater: a wrong code, no name, a crowd link without its id, or a wait."""


class Desk:
    """What a rater can ask of a session, without HTTP: sign in, see their comparison, vote, review."""

    def __init__(self, session: Session, store: VoteStore):
        self.session, self.store = session, store
        self.by_id = {c.id: c for c in session.comparisons}
        salt = (session.codes or {}).get("salt") or secrets.token_hex(16)  # no salt: cookies last one server
        self.key = hashlib.sha256(f"drawbench-cookie:{salt}".encode()).digest()
        ident = hashlib.sha256(json.dumps([session.created, [c.id for c in session.comparisons]]).encode())
        self.cookie = f"drawbench_{ident.hexdigest()[:10]}"  # one cookie per session, though ports share cookies
        self._tries: dict[str, tuple[int, float]] = {}  # browser id -> (wrong tries, locked until)
        self._lock = threading.Lock()
        self._pace: tuple[float, float] = (0.0, DEFAULT_SECONDS)  # (computed at, median seconds per comparison)
        self._orders: dict[str, tuple[str, ...]] = {}

    # ------------------------------------------------------------------------- sign-in
    def public(self) -> dict:
        """What the sign-in page needs to know about the session (nothing secret)."""
        s = self.session
        crowd = s.crowd or {}
        return {"has_codes": s.has_codes, "open": not s.has_codes and not s.crowd,
                "crowd": {"platform": crowd["platform"], "param": crowd["param"]} if crowd else None,
                "total": self.total(), "per_set": s.per_set, "minutes": self.minutes(self.total())}

    def total(self) -> int:
        n = len(self.session.comparisons)
        return min(self.session.quota, n) if self.session.quota else n

    def wait_left(self, browser: str) -> float:
        with self._lock:
            return max(0.0, self._tries.get(browser, (0, 0.0))[1] - time.time())

    def _failed(self, browser: str) -> None:
        with self._lock:
            n = self._tries.get(browser, (0, 0.0))[0] + 1
            lock = time.time() + min(LOCK_MAX_S, LOCK_BASE_S * 2 ** (n - MAX_TRIES)) if n >= MAX_TRIES else 0.0
            self._tries[browser] = (n, lock)

    def sign_in(self, body: dict, browser: str) -> str:
        """The rater id of a sign-in form ({name, code}) or crowd link ({params}); registers the rater."""
        s = self.session
        name = " ".join(str(body.get("name") or "").split())[:80]
        if s.crowd:
            found = crowd_rater(s, {k: str(v) for k, v in (body.get("params") or {}).items()})
            if found is None:
                raise SignInRefused(f"Open this study from its link on {s.crowd['platform']}: the link carries your "
                                    f"participant id ({s.crowd['param']}).")
            rater, name = found
        elif s.has_codes:
            left = self.wait_left(browser)
            if left > 0:
                raise SignInRefused(f"Too many wrong tries. Wait {math.ceil(left)} s before the next one.")
            rater = rater_for_code(s, str(body.get("code") or "")[:64])
            if rater is None:
                self._failed(browser)
                raise SignInRefused("That access code is not valid. Check it with the organiser of the study.")
        else:
            rater = name
            if not rater:
                raise SignInRefused("Please enter your name (the same one each time, so you can continue where you "
                                    "stopped).")
        self.store.register_rater(rater, name)
        return rater

    def token(self, rater: str) -> str:
        raw = base64.urlsafe_b64encode(rater.encode()).decode().rstrip("=")
        return f"{raw}.{hmac.new(self.key, raw.encode(), 'sha256').hexdigest()}"

    def rater_of(self, token: str | None) -> str | None:
        """The rater a cookie names, or None when it is missing or was not signed by this session."""
        if not token or "." not in token:
            return None
        raw, mac = token.rsplit(".", 1)
        if not hmac.compare_digest(mac, hmac.new(self.key, raw.encode(), "sha256").hexdigest()):
            return None
        try:
            return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        except ValueError:
            return None

    # ------------------------------------------------------------------------- comparisons
    def order(self, rater: str) -> tuple[str, ...]:
        if rater not in self._orders:  # a pure function of (session, rater): computed once per rater
            self._orders[rater] = tuple(rater_order(self.session, rater))
        return self._orders[rater]

    def minutes(self, n: int) -> int:
        return max(1, math.ceil(n * self.pace() / 60))

    def pace(self) -> float:
        """Median seconds per comparison of this session's first answers so far (recomputed once a minute)."""
        at, sec = self._pace
        if time.time() - at > 60:
            votes = self.store.progress()
            med = votes["median_seconds"].dropna() if len(votes) else []
            sec = float(statistics.median(med)) if len(med) >= 3 else DEFAULT_SECONDS
            self._pace = (time.time(), sec)
        return sec

    def view(self, rater: str, cid: str, prior: tuple[str, str] | None = None) -> dict:
        """One comparison as this rater sees it: the prompt, the image URLs on their own sides."""
        c = self.by_id[cid]
        left, right = (c.right_images, c.left_images) if swapped_for(self.session, rater, cid) else \
            (c.left_images, c.right_images)
        order = self.order(rater)
        return {"id": cid, "prompt": c.prompt, "left": [image_url(p) for p in left],
                "right": [image_url(p) for p in right], "position": order.index(cid) + 1,
                "answers": {"quality": prior[0], "alignment": prior[1]} if prior else None}

    def state(self, rater: str, answers: dict | None = None) -> dict:
        """The rater's progress and the comparison on their screen (None when all are done), and the next one."""
        order = self.order(rater)
        answers = self.store.answers(rater) if answers is None else answers
        todo = [c for c in order if c not in answers]
        crowd = self.session.crowd or {}
        out = {"rater": rater, "done": len(order) - len(todo), "total": len(order),
               "minutes_left": self.minutes(len(todo)) if todo else 0,
               "comparison": self.view(rater, todo[0]) if todo else None,
               "upcoming": self.view(rater, todo[1]) if len(todo) > 1 else None,
               "previous": (order[order.index(todo[0]) - 1] if order.index(todo[0]) else None) if todo
               else (order[-1] if order else None)}
        if out["done"] == 0 and order:  # the practice: the real set of this rater's last comparison, against noise
            last = self.by_id[order[-1]]
            out["practice"] = {"prompt": last.prompt, "images": [image_url(p) for p in last.left_images]}
        if not todo:
            out["completion"] = {"code": crowd.get("completion_code"), "url": crowd.get("completion_url"),
                                 "platform": crowd.get("platform")}
        return out

    def review(self, rater: str, cid: str) -> dict:
        """An answered comparison with the rater's current answers, to change them (`vote` with revise)."""
        answers = self.store.answers(rater)
        if cid not in self.order(rater) or cid not in answers:
            raise VoteRefused(f"comparison {cid!r} has no answer of yours to change")
        order = self.order(rater)
        pos = order.index(cid)
        return {**self.view(rater, cid, answers[cid]),
                "previous": next((c for c in reversed(order[:pos]) if c in answers), None)}

    def vote(self, rater: str, body: dict) -> dict:
        """Store the answer to the comparison the form names, if it is the one on the rater's screen (or a change
        the rater asked for); answers {"status": "stored" | "ignored", "state": ...}."""
        cid = str(body.get("comparison") or "")
        quality, alignment = body.get("quality"), body.get("alignment")
        revise = bool(body.get("revise"))
        if cid not in self.by_id or cid not in self.order(rater):
            raise VoteRefused(f"comparison {cid!r} is not one of yours")
        if quality not in CHOICES or alignment not in CHOICES:
            raise VoteRefused("answer both questions")
        seconds = body.get("seconds")
        seconds = round(min(max(float(seconds), 0.0), 86400.0), 2) if isinstance(seconds, (int, float)) else None
        answers = self.store.answers(rater)
        on_screen = next((c for c in self.order(rater) if c not in answers), None)
        status, why = "stored", None
        if not revise and cid != on_screen:
            status, why = "ignored", "that comparison is no longer on your screen"
        else:
            try:
                self.store.submit(rater, cid, quality, alignment, seconds=seconds,
                                  swapped=swapped_for(self.session, rater, cid), revise=revise)
                answers = None  # re-read: the state below must include this vote
            except AlreadyAnswered:
                status, why = "ignored", "that comparison was already answered"
        return {"status": status, "reason": why, "state": self.state(rater, answers)}


def image_url(rel: str) -> str:
    return "/images/" + rel.split("/", 1)[1]


def image_file(session: Session, name: str) -> Path | None:
    """The file behind /images/NAME: only content-addressed names inside SESSION/images."""
    if not IMAGE_NAME.match(name):
        return None
    path = session.image_file(f"{IMAGES_DIR}/{name}")
    return path if path.is_file() else None


def write_display(session: Session) -> None:
    """Record how raters see the images (SESSION/display.json): the session's files, byte for byte."""
    kinds = sorted({p.suffix.lower().lstrip(".") for p in (session.path / IMAGES_DIR).iterdir() if p.is_file()})
    info = {"served": "the session's image files byte for byte, as generated (no re-encoding)",
            "formats": [k.upper() for k in kinds], "scaling": "by the browser, to fill the screen, aspect kept",
            "per_set": session.per_set}
    atomic_write(session.path / DISPLAY_FILE, lambda p: p.write_text(json.dumps(info, indent=1) + "\n"))


# ----------------------------------------------------------------------------- HTTP
def routes(desk: Desk) -> list:
    """Starlette routes of the rater page: /, /assets/*, /images/*, /api/*."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Route

    page = ASSETS["rate.html"].read_text()
    types = {"rate.js": "text/javascript", "rate.css": "text/css"}

    def browser_of(request) -> str:
        return request.cookies.get("drawbench_browser") or ""

    async def index(request):
        if request.query_params.get("view", "").lower() == "organiser":
            return RedirectResponse("/organiser/")
        resp = Response(page, media_type="text/html", headers={"Cache-Control": "no-store"})
        if not browser_of(request):
            resp.set_cookie("drawbench_browser", secrets.token_hex(12), httponly=True, samesite="lax")
        return resp

    async def asset(request):
        name = request.path_params["name"]
        if name not in types:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(ASSETS[name], media_type=types[name], headers={"Cache-Control": "no-cache"})

    async def image(request):
        path = image_file(desk.session, request.path_params["name"])
        if path is None:
            return PlainTextResponse("not found", status_code=404)
        # content-addressed: a name never changes its bytes, so browsers keep it for good
        return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})

    def signed_in(request) -> str | None:
        return desk.rater_of(request.cookies.get(desk.cookie))

    async def api_session(request):
        rater = signed_in(request)
        out = {"session": desk.public(), "state": None}
        if rater is not None:
            out["state"] = await run_in_threadpool(desk.state, rater)
        return JSONResponse(out)

    async def api_sign_in(request):
        body = await _json(request)
        try:
            rater = await run_in_threadpool(desk.sign_in, body, browser_of(request))
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=403)
        resp = JSONResponse({"state": await run_in_threadpool(desk.state, rater)})
        resp.set_cookie(desk.cookie, desk.token(rater), httponly=True, samesite="lax", max_age=60 * 86400)
        return resp

    async def api_sign_out(request):
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(desk.cookie)
        return resp

    async def api_vote(request):
        rater = signed_in(request)
        if rater is None:
            return JSONResponse({"error": "Your sign-in has ended; sign in again."}, status_code=401)
        body = await _json(request)
        try:
            return JSONResponse(await run_in_threadpool(desk.vote, rater, body))
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def api_review(request):
        rater = signed_in(request)
        if rater is None:
            return JSONResponse({"error": "Your sign-in has ended; sign in again."}, status_code=401)
        try:
            return JSONResponse(await run_in_threadpool(desk.review, rater, request.path_params["cid"]))
        except UserError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return [Route("/", index), Route("/assets/{name}", asset), Route("/images/{name}", image),
            Route("/api/session", api_session), Route("/api/sign-in", api_sign_in, methods=["POST"]),
            Route("/api/sign-out", api_sign_out, methods=["POST"]), Route("/api/vote", api_vote, methods=["POST"]),
            Route("/api/review/{cid}", api_review)]


async def _json(request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}
