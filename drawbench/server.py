"""One server for a rating session: the rater page at / (drawbench/rating.py) and the organiser's Streamlit view at
/organiser/ (drawbench/app.py), in one ASGI application served by uvicorn.

    python -m drawbench.server SESSION --port 8501 --address 127.0.0.1

(`imagen-bench drawbench app SESSION` runs this.) Raters never load Streamlit: their page is a few kilobytes of
HTML, JavaScript and CSS, and each vote is one small request. The organiser view is Streamlit, mounted beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from imagen.errors import UserError

SESSION_ENV = "DRAWBENCH_SESSION"
ORGANISER_SCRIPT = Path(__file__).with_name("app.py")
STREAMLIT_OPTIONS = {"server.headless": True, "browser.gatherUsageStats": False, "server.fileWatcherType": "none",
                     "client.toolbarMode": "minimal", "theme.primaryColor": "#3d5afe", "theme.base": "light"}


def build(session_path: Path | str, organiser: bool = True):
    """The ASGI application of one session (organiser=False: the rater page alone, as tests use it)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from drawbench.pairs import load_session
    from drawbench.rating import Desk, routes, write_display
    from drawbench.votes import VoteStore

    session = load_session(session_path)
    store = VoteStore.of_session(session)
    store.upgrade()
    write_display(session)
    desk = Desk(session, store)
    if not organiser:
        return Starlette(routes=routes(desk))
    import streamlit as st
    from streamlit import config

    os.environ[SESSION_ENV] = str(Path(session_path).resolve())  # the organiser script reads it
    for key, value in STREAMLIT_OPTIONS.items():
        config.set_option(key, value)
    view = st.App(str(ORGANISER_SCRIPT))
    return Starlette(routes=routes(desk) + [Mount("/organiser", app=view)], lifespan=view.lifespan())


def command(port: int, address: str = "localhost", session: Path | str | None = None) -> list[str]:
    """The command line that serves a session (the session from $DRAWBENCH_SESSION when not given)."""
    cmd = [sys.executable, "-m", "drawbench.server", "--port", str(port), "--address", address]
    return cmd + ([str(session)] if session is not None else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drawbench.server", description=__doc__.split("\n\n")[0])
    p.add_argument("session", nargs="?", type=Path, help=f"the session folder (default: ${SESSION_ENV})")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="localhost")
    args = p.parse_args(argv)
    session = args.session or (Path(os.environ[SESSION_ENV]) if os.environ.get(SESSION_ENV) else None)
    if session is None:
        print(f"error: give the session folder (or set ${SESSION_ENV})", file=sys.stderr)
        return 2
    try:
        app = build(session)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"rating page http://{args.address}:{args.port}/   organiser http://{args.address}:{args.port}/organiser/",
          file=sys.stderr)
    uvicorn.run(app, host=args.address, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
