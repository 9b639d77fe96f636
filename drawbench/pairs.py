"""Rating sessions: blinded, side-randomised comparisons between the images of two or more systems.

A session is a folder, written atomically (temp folder + rename):

    SESSION/
      session.json     systems, comparisons, seeds, hashed access codes and organiser password
      images/          every image a rater can see, copied (or hard-linked) from the studies; content-addressed
                       names (sha256) so neither a file name nor a URL reveals the system
      votes.sqlite     the vote store (drawbench/votes.py)

Each comparison shows one prompt and one set of images per side: the same sample indices for both systems (Imagen
paper, Sec. 4.2: raters compare sets of images of two models on DrawBench). Which system is on the left is drawn per
comparison from the session seed. Attention checks pair a real set with a set of pure-noise images: the real side
is the known right answer to both questions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import secrets
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench import store
from imagen.errors import UserError
from imagen.fileio import sha256_file

from drawbench.choices import CHOICES, LEFT, QUESTIONS, RIGHT, SAME, VOTES_FILE  # noqa: F401  (re-exported)

FORMAT = 1
SESSION_FILE = "session.json"
IMAGES_DIR = "images"
CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: codes are read aloud and typed
PBKDF2_ITERATIONS = 200_000


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class System:
    name: str  # shown only to the organiser and in results, never to raters
    study: str  # absolute path of the study folder
    cell_id: str


@dataclass(frozen=True)
class Comparison:
    id: str
    prompt_id: str
    prompt: str
    category: str
    left: str  # system name; "real" / "noise" (a looking check) or "real" / "offprompt" (a reading check)
    right: str
    sample_indices: tuple[int, ...]
    left_images: tuple[str, ...]  # paths relative to the session folder
    right_images: tuple[str, ...]
    attention: str | None = None  # the known right answer (LEFT or RIGHT) of an attention check, else None


@dataclass(frozen=True)
class Session:
    path: Path
    seed: int
    per_set: int
    systems: tuple[System, ...]
    comparisons: tuple[Comparison, ...]
    codes: dict = field(default_factory=dict)  # {"salt": hex, "raters": {sha256 hex: rater id}}
    organiser: dict | None = None  # {"salt": hex, "hash": hex, "iterations": n}
    created: float = 0.0
    attention_rate: float = 0.0
    dropped_prompts: int = 0
    open_access: bool = False  # made with --open: no codes, anyone with the URL rates under any name
    sides: str = "rater"  # "rater": each rater's sides drawn per comparison; "comparison": one draw for all (older)
    crowd: dict | None = None  # {"platform", "param", "extra": [...], "completion_code", "completion_url"}
    quota: int | None = None  # comparisons per rater (the first of each rater's own order); None: all

    @property
    def has_codes(self) -> bool:
        return bool(self.codes.get("raters"))

    def comparison(self, cid: str) -> Comparison:
        for c in self.comparisons:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def image_file(self, rel: str) -> Path:
        """The absolute path of a session image; refuses anything outside SESSION/images (no path traversal)."""
        root = (self.path / IMAGES_DIR).resolve()
        target = (self.path / rel).resolve()
        if root not in target.parents:
            raise UserError(f"image path {rel!r} is outside the session's images folder")
        return target


# ----------------------------------------------------------------------------- hashing of codes and passwords
def hash_code(code: str, salt: str) -> str:
    """Access codes are random (~50 bits), so one salted sha256 is enough and a login stays O(1)."""
    return hashlib.sha256((salt + ":" + code.strip().lower()).encode()).hexdigest()


def rater_for_code(session: Session, code: str) -> str | None:
    """The rater id an access code belongs to, or None for a wrong code."""
    if not session.has_codes:
        return None
    return session.codes["raters"].get(hash_code(code, session.codes["salt"]))


def hash_password(password: str, salt: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), iterations).hex()


def check_password(session: Session, password: str) -> bool:
    org = session.organiser
    if not org or not password:
        return False
    got = hash_password(password, org["salt"], org.get("iterations", PBKDF2_ITERATIONS))
    return secrets.compare_digest(got, org["hash"])


CODE_LENGTH = 10
CODE_BITS = CODE_LENGTH * math.log2(len(CODE_ALPHABET))  # 49.5 bits: 31 letters, 10 of them


def new_codes(n: int, length: int = CODE_LENGTH) -> list[str]:
    """n distinct access codes from the operating system's randomness (`secrets`), never from the session seed:
    rebuilding a session from the same studies and seed gives new codes, so nobody can recompute them."""
    codes: list[str] = []
    while len(codes) < n:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))
        if code not in codes:
            codes.append(code)
    return codes


# ----------------------------------------------------------------------------- reading studies
def parse_study_spec(spec: str) -> tuple[Path, str | None]:
    """`DIR` or `DIR:CELL` -> (study folder, cell id or None)."""
    if Path(spec).is_dir() or ":" not in spec:
        return Path(spec), None
    folder, cell = spec.rsplit(":", 1)
    return Path(folder), (cell or None)


def load_system_samples(folder: Path, cell: str | None):
    """The samples of one study cell, one row per (prompt_id, sample_index); returns (cell_id, DataFrame)."""
    if not store.is_study(folder):
        raise UserError(f"{folder} is not a study folder (no tables/samples); pass the --out folder of a grid run")
    df = store.read_table(folder, store.SAMPLES)
    need = [store.COL_CELL_ID, store.COL_PROMPT_ID, store.COL_PROMPT, store.COL_CATEGORY,
            store.COL_SAMPLE_INDEX, store.COL_IMAGE_PATH]
    missing = [c for c in need if c not in df.columns]
    if len(df) == 0 or missing:
        raise UserError(f"study {folder} has no usable samples (missing columns: {missing or 'none'})")
    cells = sorted(df[store.COL_CELL_ID].astype(str).unique())
    if cell is None:
        if len(cells) > 1:
            raise UserError(f"study {folder} has {len(cells)} cells; pick one with {folder}:CELL, one of: "
                            + ", ".join(cells[:20]))
        cell = cells[0]
    if cell not in cells:
        raise UserError(f"cell {cell!r} is not in study {folder}; its cells are: " + ", ".join(cells[:20]))
    df = df[df[store.COL_CELL_ID].astype(str) == cell]
    # A re-run appends rows: keep the last row per work item.
    df = df.drop_duplicates(subset=[store.COL_PROMPT_ID, store.COL_SAMPLE_INDEX], keep="last")
    if store.COL_FLAGGED in df:  # blacked out by the model's safety checker: never shown to raters as its image
        df = df[~df[store.COL_FLAGGED].fillna(False).astype(bool).to_numpy()]
        if not len(df):
            raise UserError(f"every image of cell {cell} in study {folder} was blacked out by the model's safety "
                            f"checker; rerun it with the checker off (?safety_checker=off) or pick another cell")
    return cell, df.reset_index(drop=True)


# ----------------------------------------------------------------------------- building a session


def _place_image(src: Path, images: Path, expected_sha: str | None) -> str:
    """Hard-link (or copy) one image into SESSION/images under its content hash; returns the relative path."""
    if not src.is_file():
        raise UserError(f"image {src} listed in the study is missing; regenerate it (rerun the grid) first")
    digest = sha256_file(src)
    if expected_sha and isinstance(expected_sha, str) and expected_sha != digest:
        raise UserError(f"image {src} does not match its recorded sha256; it was changed after generation")
    dst = images / f"{digest}{src.suffix.lower() or '.png'}"
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return f"{IMAGES_DIR}/{dst.name}"


def _noise_image(rng: np.random.Generator, size: tuple[int, int], images: Path) -> str:
    """A pure-noise PNG (uniform RGB) of the given (width, height), stored by content hash."""
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    tmp = images / f".noise-{uuid.uuid4().hex}.png"
    Image.fromarray(arr).save(tmp)
    digest = sha256_file(tmp)
    dst = images / f"{digest}.png"
    os.replace(tmp, dst)
    return f"{IMAGES_DIR}/{dst.name}"


def _read_codes_file(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"codes file {path} not found; give a text file with one access code per line")
    codes = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not codes:
        raise UserError(f"codes file {path} holds no codes; write one access code per line")
    if len(set(c.lower() for c in codes)) != len(codes):
        raise UserError(f"codes file {path} repeats a code; every rater needs a distinct code")
    return codes


def build_session(
    studies: list[str],
    out: Path | str,
    *,
    names: list[str] | None = None,
    per_set: int = 4,
    attention_rate: float = 0.0,
    n_codes: int = 0,
    codes_file: Path | str | None = None,
    organiser_password: str | None = None,
    seed: int = 0,
    progress: bool = False,
    open_access: bool = False,
    crowd: dict | None = None,
    quota: int | None = None,
) -> tuple[Session, list[str]]:
    """Write a rating session folder; returns (session, the plain access codes, to hand out once). A session
    without codes must be asked for (`open_access`, --open): anyone with its URL can then rate under any name."""
    out = Path(out)
    if len(studies) < 2:
        raise UserError("a rating session needs at least two systems: pass --study twice or more")
    if names is not None and len(names) != len(studies):
        raise UserError(f"--names gives {len(names)} names for {len(studies)} studies; give one per --study")
    names = list(names) if names else [chr(ord("A") + i) for i in range(len(studies))]
    if len(set(names)) != len(names) or {"noise", "real", "offprompt"} & set(names):
        raise UserError("system names must be distinct and not 'noise', 'real' or 'offprompt' (used by attention "
                        "checks)")
    if per_set < 1:
        raise UserError("--per-set must be at least 1")
    if not 0.0 <= attention_rate < 1.0:
        raise UserError("--attention-rate must be in [0, 1), e.g. 0.05 for one check in twenty comparisons")
    if n_codes and codes_file:
        raise UserError("give either --codes N or --codes-file F, not both")
    if crowd and (n_codes or codes_file or open_access):
        raise UserError("a crowd session identifies raters by the platform's participant id: drop --codes, "
                        "--codes-file and --open")
    if quota is not None and quota < 1:
        raise UserError(f"--quota must be at least 1 comparison per rater, got {quota}")
    if not n_codes and not codes_file and not open_access and not crowd:
        raise UserError("a session without access codes lets anyone with its URL rate under any name; give --codes N "
                        "(or --codes-file F), --crowd PLATFORM, or pass --open to run it open on purpose")
    if open_access and (n_codes or codes_file):
        raise UserError("--open is for a session without access codes; drop it, or drop --codes/--codes-file")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out folder (a session is never overwritten)")

    # Load every system's samples; keep prompts that all systems have, with per_set common sample indices.
    systems, tables = [], []
    for name, spec in zip(names, studies):
        folder, cell = parse_study_spec(spec)
        cell, df = load_system_samples(folder, cell)
        systems.append(System(name=name, study=str(folder.resolve()), cell_id=cell))
        tables.append(df)
    by_prompt = [{pid: g for pid, g in df.groupby(store.COL_PROMPT_ID, sort=True)} for df in tables]
    all_ids = set().union(*[set(b) for b in by_prompt])
    common, plan = sorted(set.intersection(*[set(b) for b in by_prompt])), []
    for pid in common:
        groups = [b[pid] for b in by_prompt]
        texts = {str(g[store.COL_PROMPT].iloc[0]) for g in groups}
        idx = sorted(set.intersection(*[set(g[store.COL_SAMPLE_INDEX].astype(int)) for g in groups]))
        if len(texts) != 1 or len(idx) < per_set:
            continue
        plan.append((pid, groups, idx[:per_set]))
    dropped = len(all_ids) - len(plan)
    if not plan:
        raise UserError(f"the studies have no prompt in common with {per_set} images each (prompt ids and texts must "
                        "match); run them on the same prompt suite, or lower --per-set")

    rng = np.random.default_rng(seed)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    images = tmp / IMAGES_DIR
    images.mkdir(parents=True)
    try:
        comparisons = _make_comparisons(plan, systems, images, rng, attention_rate, progress)
        plain_codes = _read_codes_file(Path(codes_file)) if codes_file else new_codes(n_codes)
        code_salt = secrets.token_hex(16)
        codes = {"salt": code_salt,
                 "raters": {hash_code(c, code_salt): f"rater-{i + 1:02d}" for i, c in enumerate(plain_codes)}}
        organiser = None
        if organiser_password:
            salt = secrets.token_hex(16)
            organiser = {"salt": salt, "hash": hash_password(organiser_password, salt),
                         "iterations": PBKDF2_ITERATIONS}
        session = Session(path=out, seed=seed, per_set=per_set, systems=tuple(systems),
                          comparisons=tuple(comparisons), codes=codes, organiser=organiser, created=time.time(),
                          attention_rate=attention_rate, dropped_prompts=dropped, open_access=bool(open_access),
                          crowd=crowd, quota=quota)
        (tmp / SESSION_FILE).write_text(json.dumps(session_to_dict(session), indent=1))
        from drawbench.votes import VoteStore  # the store's schema lists the session's comparisons

        VoteStore.create(tmp / VOTES_FILE, session)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return session, plain_codes


def _make_comparisons(plan, systems, images, rng, attention_rate, progress) -> list[Comparison]:
    from tqdm import tqdm

    comps: list[Comparison] = []
    pairs = list(itertools.combinations(range(len(systems)), 2))
    for pid, groups, idx in tqdm(plan, desc="copying images", disable=not progress, file=None):
        sets = []
        for g in groups:
            g = g.set_index(g[store.COL_SAMPLE_INDEX].astype(int))
            study = Path(systems[len(sets)].study)
            paths = []
            for i in idx:
                row = g.loc[i]
                sha = row.get(store.COL_SHA256) if store.COL_SHA256 in g.columns else None
                paths.append(_place_image(study / str(row[store.COL_IMAGE_PATH]), images, sha))
            sets.append(tuple(paths))
        first = groups[0].iloc[0]
        cat = first[store.COL_CATEGORY]
        category = cat if isinstance(cat, str) and cat else "uncategorised"  # suites without categories
        for a, b in pairs:
            flip = bool(rng.integers(0, 2))  # the side of each system, drawn per comparison from the session seed
            (l, r) = (b, a) if flip else (a, b)
            comps.append(Comparison(
                id="", prompt_id=str(pid), prompt=str(first[store.COL_PROMPT]), category=category,
                left=systems[l].name, right=systems[r].name, sample_indices=tuple(int(i) for i in idx),
                left_images=sets[l], right_images=sets[r]))
    n_checks = int(round(attention_rate * len(comps) / (1 - attention_rate))) if attention_rate > 0 else 0
    checks = []
    prompts_of = {}
    for c in comps:
        prompts_of.setdefault(c.prompt_id, c)
    for k in range(n_checks):
        base = comps[int(rng.integers(0, len(comps)))]
        real_left = bool(rng.integers(0, 2))
        use_left = bool(rng.integers(0, 2))
        real = base.left_images if use_left else base.right_images
        others = [c for pid, c in prompts_of.items() if pid != base.prompt_id]
        if k % 2 == 1 and others:
            # a reading check: the same system's images for another prompt against the right ones; telling them
            # apart needs the text (their quality is the same)
            system = base.left if use_left else base.right
            other = others[int(rng.integers(0, len(others)))]
            fake = other.left_images if other.left == system else other.right_images
            fake_name = "offprompt"
        else:  # a looking check: noise images against real ones
            with Image.open(images.parent / real[0]) as im:
                size = im.size
            fake = tuple(_noise_image(rng, size, images) for _ in real)
            fake_name = "noise"
        checks.append(Comparison(
            id="", prompt_id=base.prompt_id, prompt=base.prompt, category=base.category,
            left="real" if real_left else fake_name, right=fake_name if real_left else "real",
            sample_indices=base.sample_indices, left_images=real if real_left else fake,
            right_images=fake if real_left else real, attention=LEFT if real_left else RIGHT))
    # Checks are mixed in at random places; every rater later sees everything in their own random order anyway.
    allc = comps + checks
    order = rng.permutation(len(allc))
    return [Comparison(**{**asdict(allc[j]), "id": f"c{n:05d}"}) for n, j in enumerate(order)]


# ----------------------------------------------------------------------------- (de)serialisation
def session_to_dict(s: Session) -> dict:
    return {
        "format": FORMAT, "created": s.created, "seed": s.seed, "per_set": s.per_set,
        "attention_rate": s.attention_rate, "dropped_prompts": s.dropped_prompts,
        "questions": [{"id": q, "text": t} for q, t in QUESTIONS],
        "systems": [asdict(x) for x in s.systems],
        "comparisons": [asdict(c) for c in s.comparisons],
        "codes": s.codes, "organiser": s.organiser, "open": s.open_access, "sides": s.sides,
        "crowd": s.crowd, "quota": s.quota,
    }


def load_session(path: Path | str) -> Session:
    path = Path(path)
    f = path / SESSION_FILE
    if not f.is_file():
        raise UserError(f"{path} is not a rating session (no {SESSION_FILE}); make one with: imagen-bench drawbench "
                        "pairs --study A --study B --out SESSION")
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{f} is not valid JSON ({exc}); recreate the session") from exc
    if d.get("format") != FORMAT:
        raise UserError(f"{f} has format {d.get('format')}, this version reads format {FORMAT}")
    comps = tuple(Comparison(**{**c, "sample_indices": tuple(c["sample_indices"]),
                                "left_images": tuple(c["left_images"]), "right_images": tuple(c["right_images"])})
                  for c in d["comparisons"])
    return Session(path=path, seed=d["seed"], per_set=d["per_set"], systems=tuple(System(**x) for x in d["systems"]),
                   comparisons=comps, codes=d.get("codes") or {}, organiser=d.get("organiser"),
                   created=d.get("created", 0.0), attention_rate=d.get("attention_rate", 0.0),
                   dropped_prompts=d.get("dropped_prompts", 0),
                   open_access=bool(d.get("open", not (d.get("codes") or {}).get("raters"))),
                   sides=d.get("sides", "comparison"), crowd=d.get("crowd"), quota=d.get("quota"))


# URL parameters that carry a participant's id (and the study/session ids recorded beside it), per platform
PLATFORMS = {"prolific": ("PROLIFIC_PID", ("STUDY_ID", "SESSION_ID")),
             "mturk": ("workerId", ("assignmentId", "hitId"))}


def crowd_settings(platform: str, completion_code: str | None, completion_url: str | None) -> dict:
    """The crowd settings of a session: a known platform's parameter names, or any parameter name as the platform."""
    param, extra = PLATFORMS.get(platform, (platform, ()))
    if not param or not param.replace("_", "").isalnum():
        raise UserError(f"--crowd {platform!r}: use prolific, mturk, or the URL parameter that carries the "
                        f"participant id (letters, digits, _)")
    if completion_url and "://" not in completion_url:
        raise UserError(f"--completion-url {completion_url!r} is not a URL (https://...)")
    return {"platform": platform, "param": param, "extra": list(extra), "completion_code": completion_code,
            "completion_url": completion_url}


def crowd_rater(session: Session, params: dict) -> tuple[str, str] | None:
    """(rater id, what else the URL said) of a participant arriving by the platform's link; None without the id.
    The id is kept to letters, digits, '-' and '_' (64 at most), prefixed by the platform."""
    if not session.crowd:
        return None
    raw = str(params.get(session.crowd["param"], "") or "").strip()
    pid = "".join(ch for ch in raw if ch.isalnum() or ch in "-_")[:64]
    if not pid:
        return None
    extra = ", ".join(f"{k}={str(params.get(k, ''))[:64]}" for k in session.crowd["extra"] if params.get(k))
    return f"{session.crowd['platform']}:{pid}", extra


def swapped_for(session: Session, rater: str, comparison: str) -> bool:
    """Whether this rater sees this comparison's sets the other way round: a pure function of (session seed, rater,
    comparison), so every rater's sides are balanced independently of the preference (the order effect is then
    estimable beside it, `drawbench.stats.order_effect`). Sessions made before per-rater sides: never."""
    if session.sides != "rater":
        return False
    return hashlib.sha256(f"{session.seed}:{rater}:{comparison}:sides".encode()).digest()[0] & 1 == 1


def rater_order(session: Session, rater: str) -> list[str]:
    """The comparison ids in this rater's own random order: a pure function of (session seed, rater id); the first
    `session.quota` of them when the session has a per-rater quota."""
    key = int.from_bytes(hashlib.sha256(f"{session.seed}:{rater}".encode()).digest()[:8], "little")
    perm = np.random.default_rng(key).permutation(len(session.comparisons))
    order = [session.comparisons[i].id for i in perm]
    return order[:session.quota] if session.quota else order
