"""The DrawBench rating app (Streamlit): raters compare two sets of images per prompt; the organiser watches.

Run it with `imagen-bench drawbench app SESSION` (the session folder comes in through $DRAWBENCH_SESSION, or as the
first script argument: `streamlit run drawbench/app.py -- SESSION`).

- Sign-in: a name, and an access code when the session has codes (without a valid code nothing else is shown; 5
  wrong tries per browser session, then a doubling wait); an open session says it is open; a crowd session signs
  its participants in by the platform link's id and shows the completion code and link at the end.
- Rating: the prompt (plain text, never HTML or Markdown), the two image sets on this rater's own sides, the
  paper's two questions (Sec. 4.2) with three answers each, keyboard shortcuts (A/S/D, J/K/L, Enter), a progress
  bar. Each rater sees each comparison (or their quota of them) once in their own random order, resumes where they
  stopped, and can go back and change a vote (the store keeps the history). Images are read only from
  SESSION/images.
- Organiser view (sidebar, password, rate-limited): progress per rater, the DrawBench figure and live results.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import streamlit as st

from drawbench.pairs import LEFT, QUESTIONS, RIGHT, SAME, Session, check_password, crowd_rater, load_session, \
    rater_for_code, rater_order, swapped_for
from drawbench.votes import VoteRefused, VoteStore, votes_table
from imagen.errors import UserError

SESSION_ENV = "DRAWBENCH_SESSION"
CSS_FILE = Path(__file__).with_name("app.css")
# Keyboard shortcuts: left hand for image quality, right hand for the text; Enter submits.
KEYS = {"quality": ("A", "S", "D"), "alignment": ("J", "K", "L")}
LABELS = {LEFT: "◀  Left set", SAME: "Indifferent", RIGHT: "Right set  ▶"}
SHORT_QUESTIONS = {"quality": "Which set of images is of **higher quality**?",
                   "alignment": "Which set of images **better represents the text**?"}


def streamlit_command(port: int, address: str = "localhost") -> list[str]:
    """The `streamlit run` command line for this app (the session comes in through $DRAWBENCH_SESSION)."""
    return [sys.executable, "-m", "streamlit", "run", __file__, "--server.port", str(port), "--server.address", address,
            "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal", "--theme.primaryColor", "#3d5afe", "--theme.base", "light"]


# ----------------------------------------------------------------------------- loading (cached per server)
def session_path() -> Path | None:
    path = os.environ.get(SESSION_ENV) or (sys.argv[1] if len(sys.argv) > 1 else None)
    return Path(path) if path else None


@st.cache_resource(show_spinner=False)
def _load(path: str, mtime: float) -> Session:
    return load_session(path)


DISPLAY_MIN = 384  # smaller images (a 64 px base stage) are enlarged for display so they fill their cell


@st.cache_data(show_spinner=False, max_entries=2000)
def _image_bytes(path: str) -> bytes:
    """The file's bytes; an image smaller than DISPLAY_MIN is enlarged (bicubic, aspect kept) for display."""
    import io

    from PIL import Image

    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) >= DISPLAY_MIN:
            return data
        scale = DISPLAY_MIN / max(im.size)
        big = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    return buf.getvalue()


def image_bytes(session: Session, rel: str) -> bytes:
    """Only files inside SESSION/images are ever read (Session.image_file refuses anything else)."""
    return _image_bytes(str(session.image_file(rel)))


# ----------------------------------------------------------------------------- sign-in
MAX_TRIES = 5  # wrong codes (or passwords) allowed per browser session before a wait
LOCK_BASE_S, LOCK_MAX_S = 2.0, 300.0  # the wait doubles with each further wrong try, up to five minutes


def _wait_left(kind: str) -> float:
    """Seconds this browser session must still wait before another try of `kind` ("code" | "password")."""
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


def crowd_sign_in(session: Session, store: VoteStore) -> None:
    """A participant of a crowd platform signs in by the link they came with (its participant id parameter)."""
    st.title("DrawBench image comparison")
    found = crowd_rater(session, dict(st.query_params))
    if found is None:
        st.error(f"Open this study from its link on {session.crowd['platform']}: the link carries your participant "
                 f"id ({session.crowd['param']}).")
        return
    rater, extra = found
    store.register_rater(rater, extra)
    st.session_state["rater"] = rater
    st.rerun()


def sign_in(session: Session, store: VoteStore) -> None:
    if session.crowd:
        crowd_sign_in(session, store)
        return
    st.title("DrawBench image comparison")
    st.write("You will see a text prompt and two sets of images made from it. For each comparison, answer two "
             "questions: which set has higher image quality, and which set better represents the text. "
             "There are no right answers; go with your first impression.")
    if not session.has_codes:
        st.warning("This is an open session: anyone with this link can rate, under any name. Your name is only "
                   "used to let you continue where you stopped.")
    with st.form("sign-in", border=True):
        name = st.text_input("Your name", key="name", max_chars=80)
        code = st.text_input("Access code", key="code", type="password", max_chars=64) if session.has_codes else ""
        ok = st.form_submit_button("Start rating", type="primary")
    if not ok:
        return
    if session.has_codes:
        if _too_many("code"):
            return
        rater = rater_for_code(session, code or "")
        if rater is None:
            _failed("code")
            st.error("That access code is not valid. Check it with the organiser of the study.")
            return
    else:
        rater = " ".join((name or "").split())
        if not rater:
            st.error("Please enter your name (the same one each time, so you can continue where you stopped).")
            return
    store.register_rater(rater, " ".join((name or "").split()))
    st.session_state["rater"] = rater
    st.rerun()


# ----------------------------------------------------------------------------- rating
def _answer_key(cid: str, q: str) -> str:
    return f"answer::{cid}::{q}"


def _set_answer(cid: str, q: str, choice: str) -> None:
    st.session_state[_answer_key(cid, q)] = choice


def _go_back(prev: str) -> None:
    st.session_state["editing"] = prev


def _image_grid(session: Session, images: tuple[str, ...], side: str) -> None:
    ncols = 2 if len(images) > 1 else 1
    with st.container(border=True, key=f"side-{side}"):
        st.markdown(f"**{'Left' if side == LEFT else 'Right'} set**")
        for row in range(0, len(images), ncols):
            cols = st.columns(ncols, gap="small")
            for col, rel in zip(cols, images[row:row + ncols]):
                col.image(image_bytes(session, rel), width="stretch")


def rate(session: Session, store: VoteStore, rater: str) -> None:
    order = rater_order(session, rater)
    answers = store.answers(rater)
    done = sum(c in answers for c in order)
    editing = st.session_state.get("editing")
    todo = [c for c in order if c not in answers]
    cid = editing if editing in answers else (todo[0] if todo else None)

    top = st.columns([5, 1], vertical_alignment="center")
    top[0].progress(done / len(order), text=f"{done} of {len(order)} comparisons done")
    if top[1].button("Sign out", key="sign-out", width="stretch"):
        st.session_state.clear()
        st.rerun()

    if cid is None:
        st.success(f"All {len(order)} comparisons are done. Thank you!")
        crowd = session.crowd or {}
        if crowd.get("completion_code"):
            st.markdown("Your completion code:")
            st.code(crowd["completion_code"], language=None)
        if crowd.get("completion_url"):
            st.link_button(f"Return to {crowd['platform']} to finish", crowd["completion_url"], type="primary")
        if order and st.button("◀ Review my last answer", key="back"):
            _go_back(order[-1])
            st.rerun()
        return

    comp = session.comparison(cid)
    shown = st.session_state.setdefault("shown_at", {})
    shown.setdefault(cid, time.time())
    prior = answers.get(cid)
    for q, _ in QUESTIONS:  # a changed vote starts from the stored answer
        if prior and _answer_key(cid, q) not in st.session_state:
            st.session_state[_answer_key(cid, q)] = prior[0 if q == "quality" else 1]

    with st.container(key="prompt"):
        st.caption("Prompt" + ("  ·  changing an earlier answer" if editing == cid else ""))
        st.text(comp.prompt)  # plain text: a prompt is never rendered as HTML or Markdown
    swapped = swapped_for(session, rater, cid)  # this rater's own sides for this comparison
    left, right = st.columns(2, gap="medium")
    with left:
        _image_grid(session, comp.right_images if swapped else comp.left_images, LEFT)
    with right:
        _image_grid(session, comp.left_images if swapped else comp.right_images, RIGHT)

    for q, _ in QUESTIONS:
        chosen = st.session_state.get(_answer_key(cid, q))
        with st.container(key=f"question-{q}"):
            cols = st.columns([3, 2, 2, 2], vertical_alignment="center")
            cols[0].markdown(SHORT_QUESTIONS[q])
            for col, choice, key in zip(cols[1:], (LEFT, SAME, RIGHT), KEYS[q]):
                col.button(LABELS[choice], key=f"btn-{q}-{choice}", width="stretch",
                           type="primary" if chosen == choice else "secondary", shortcut=key,
                           on_click=_set_answer, args=(cid, q, choice))

    answered = [st.session_state.get(_answer_key(cid, q)) for q, _ in QUESTIONS]
    pos = order.index(cid)
    nav = st.columns([1, 4, 2], vertical_alignment="center")
    if pos > 0:
        nav[0].button("◀ Previous", key="back", on_click=_go_back, args=(order[pos - 1],), width="stretch")
    if None in answered:
        nav[1].caption("Answer both questions, then submit (keys A S D and J K L, then Enter).")
    if nav[2].button("Submit  ⏎", key="submit", type="primary", width="stretch", shortcut="Enter",
                     disabled=None in answered):
        seconds = time.time() - shown.get(cid, time.time())
        try:
            store.submit(rater, cid, answered[0], answered[1], seconds=round(seconds, 2), swapped=swapped)
        except VoteRefused as exc:
            st.error(f"Your vote was not stored: {exc}")
            return
        for q, _ in QUESTIONS:
            st.session_state.pop(_answer_key(cid, q), None)
        st.session_state.pop("editing", None)
        st.rerun()


# ----------------------------------------------------------------------------- organiser
def organiser(session: Session, store: VoteStore) -> None:
    st.title("Organiser view")
    if not session.organiser:
        st.info("This session has no organiser password. Recreate it with DRAWBENCH_ORGANISER_PASSWORD set (or "
                "answer the password prompt of `drawbench pairs`) to use this view, "
                "or run `imagen-bench drawbench stats SESSION`.")
        return
    if not st.session_state.get("organiser_ok"):
        with st.form("organiser-sign-in"):
            pw = st.text_input("Organiser password", type="password", key="organiser_password")
            ok = st.form_submit_button("Open", type="primary")
        if ok and not _too_many("password"):
            if check_password(session, pw):
                st.session_state["organiser_ok"] = True
                st.rerun()
            _failed("password")
            st.error("Wrong password.")
        return

    import pandas as pd

    from drawbench.stats import attention_table, summarize

    votes = votes_table(session)
    # what each rater is asked to do: every comparison, or their quota of them
    total = min(session.quota, len(session.comparisons)) if session.quota else len(session.comparisons)
    raters = store.raters()
    m = st.columns(4)
    m[0].metric("Raters", len(raters))
    m[1].metric("Votes (current)", len(votes))
    m[2].metric("Comparisons per rater", total)
    m[3].metric("Systems", ", ".join(s.name for s in session.systems))
    st.subheader("Progress per rater")
    if len(raters) == 0:
        st.write("No rater has signed in yet.")
        return
    per = votes.groupby("rater").agg(done=("comparison", "nunique"), last_vote=("created_utc", "max"),
                                     median_seconds=("seconds", "median")).reset_index()
    prog = raters.rename(columns={"name": "name"})[["rater", "name"]].merge(per, on="rater", how="left")
    prog["done"] = prog["done"].fillna(0).astype(int)
    prog["progress"] = prog["done"] / total
    att = attention_table(votes) if len(votes) else pd.DataFrame(columns=["rater", "checks", "passed", "pass_rate"])
    prog = prog.merge(att, on="rater", how="left")
    st.dataframe(prog, hide_index=True, width="stretch", column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent")})

    st.subheader("Live results")
    if len(votes) == 0:
        st.write("No votes yet.")
        return
    s = summarize(votes, n_boot=300, n_boot_bt=50, systems=[x.name for x in session.systems])
    pref = pd.DataFrame(s["preference"])
    if len(pref):
        from drawbench.report import figure_png

        a, b = pref.system_a.iloc[0], pref.system_b.iloc[0]
        st.image(figure_png(pref[(pref.system_a == a) & (pref.system_b == b)], a, b),
                 caption=f"Preference per category, {a} vs {b} (95% intervals over prompts and raters)")
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
    st.download_button("Download votes (CSV)", votes.to_csv(index=False), "votes.csv", "text/csv")


# ----------------------------------------------------------------------------- page
def main() -> None:
    st.set_page_config(page_title="DrawBench rating", page_icon="🖼️", layout="wide",
                       initial_sidebar_state="collapsed")
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
    # ?view=organiser opens the organiser view directly (a link to bookmark); the sidebar switches views.
    start = 1 if st.query_params.get("view", "").lower() == "organiser" else 0
    view = st.sidebar.radio("View", ["Rate", "Organiser"], index=start, key="view")
    if view == "Organiser":
        organiser(session, store)
        return
    rater = st.session_state.get("rater")
    if rater is None:
        sign_in(session, store)
    else:
        rate(session, store, rater)


if __name__ == "__main__":  # streamlit runs the script as __main__; importing it runs nothing
    main()
