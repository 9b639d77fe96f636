"""A machine rater for DrawBench sessions: a judge model answers every comparison of a session as a person does
(prefer the left set, the right set, or neither) for the question it can answer, so a lab can see where the judge
can stand in for raters and where it cannot.

- Judges and their question: alignment: `vqascore` (VQAScore), `pickscore` (PickScore), `clip_score`; quality:
  `hpsv2` (HPSv2.1), `imagereward` (ImageReward). Each is the grid's own scorer (bench.metrics), named by its
  weights.
- A set's score is the mean of its images' scores against the prompt. The verdict is the set with the higher score
  when the two means differ by more than the judge's indifference margin (stated, stored with every answer, and
  set with --margin), else "same".
- The answers are stored apart from the people's: `SESSION/machine/<judge metric>.parquet`, one row per
  comparison, rater `machine:<metric>` of kind `machine`. They never enter the vote store, so the people's
  statistics never count them; `drawbench stats` sets them beside the people's (`agreement`).
- Agreement, per category and overall, on the comparisons that are not attention checks: the people's verdict on a
  comparison is the answer most of its raters gave (a tie between answers: "same"); the share of comparisons both
  decided (neither "same") on which they agree, and Cohen's kappa over the three answers where people voted, each
  with a 95% bootstrap interval over prompts.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from drawbench.choices import LEFT, RIGHT, SAME
from imagen.errors import UserError

MACHINE_DIR = "machine"
KIND = "machine"


@dataclass(frozen=True)
class Judge:
    question: str  # the question of the session it answers: "alignment" | "quality"
    margin: float  # the default indifference margin, in the judge's own units
    units: str


# Default margins: about the smallest difference of set means the judge's authors treat as a preference (PickScore's
# 0.2 on its logit scale is a 55% pairwise preference; ImageReward and HPS in their published spreads).
JUDGES = {
    "vqascore": Judge("alignment", 0.02, "probability of Yes"),
    "pickscore": Judge("alignment", 0.2, "PickScore (100 x cosine scale)"),
    "clip_score": Judge("alignment", 0.5, "CLIP score (100 x cosine)"),
    "hpsv2": Judge("quality", 0.002, "HPS (cosine)"),
    "imagereward": Judge("quality", 0.05, "ImageReward (standardised)"),
}


def load_scorer(judge: str, model: str | None, device: str = "cpu", dtype: str = "auto"):
    """The judge's scorer: callable (images, prompts, batch_size) -> scores, with `.name` its metric name."""
    if judge == "vqascore":
        from bench.metrics.vqascore import DEFAULT_MODEL, VQAScore

        return VQAScore(model or DEFAULT_MODEL, device, dtype)
    if judge == "pickscore":
        from bench.metrics.pickscore import DEFAULT_MODEL, PickScore

        return PickScore(model or DEFAULT_MODEL, device, dtype)
    if judge == "hpsv2":
        from bench.metrics.hpsv2 import HPSv2

        return HPSv2(model, device, dtype)
    if judge == "imagereward":
        from bench.metrics.imagereward import ImageReward

        return ImageReward(model, device, dtype)
    if judge == "clip_score":
        return _ClipJudge(model or "shapes-clip", device)
    raise UserError(f"--judge {judge!r}: choose one of {', '.join(JUDGES)}")


class _ClipJudge:
    """CLIP score as a judge: `model` is "<open_clip model>" or "<model>:<weights tag or file>"."""

    def __init__(self, model: str, device: str):
        from bench.metrics.clip_score import load_clip

        arch, _, pretrained = model.partition(":")
        self.clip = load_clip(arch, pretrained or None, device)
        self.name = self.clip.metric

    def __call__(self, images, prompts, batch_size: int = 8) -> np.ndarray:
        from bench.metrics.clip_score import clip_scores

        return np.asarray(clip_scores(self.clip, list(images), list(prompts)), dtype=np.float64)


def verdict(left: float, right: float, margin: float) -> str:
    """LEFT, RIGHT or SAME: the set with the higher score, when the scores differ by more than the margin."""
    if abs(left - right) <= margin:
        return SAME
    return LEFT if left > right else RIGHT


def rate_session(session, judge: str, scorer, margin: float | None = None, batch_size: int = 8,
                 progress: bool = True) -> Path:
    """Answer every comparison of the session with the judge; write SESSION/machine/<metric>.parquet atomically
    and return its path."""
    from PIL import Image

    from imagen.fileio import atomic_write

    spec = JUDGES[judge]
    margin = spec.margin if margin is None else float(margin)
    if not margin >= 0:
        raise UserError(f"--margin {margin}: an indifference margin is >= 0 (in {spec.units})")
    comps = list(session.comparisons)
    jobs = [(k, side, rel) for k, c in enumerate(comps) for side, rels in (("left", c.left_images),
                                                                          ("right", c.right_images)) for rel in rels]
    scores = np.empty(len(jobs))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="image", desc=f"{judge}")
    for start in range(0, len(jobs), 64):
        part = jobs[start:start + 64]
        images = [np.asarray(Image.open(session.image_file(rel)).convert("RGB")) for _, _, rel in part]
        scores[start:start + len(part)] = scorer(images, [comps[k].prompt for k, _, _ in part], batch_size=batch_size)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    if not np.isfinite(scores).all():
        bad = comps[jobs[int(np.flatnonzero(~np.isfinite(scores))[0])][0]]
        raise UserError(f"{scorer.name} gave a score that is not a number for comparison {bad.id} ({bad.prompt!r}); "
                        "nothing was written")
    per = pd.DataFrame({"k": [k for k, _, _ in jobs], "side": [s for _, s, _ in jobs], "score": scores})
    means = per.groupby(["k", "side"])["score"].mean().unstack()
    rows = []
    now = time.time()
    for k, c in enumerate(comps):
        left, right = float(means.loc[k, "left"]), float(means.loc[k, "right"])
        choice = verdict(left, right, margin)
        rows.append({"rater": f"{KIND}:{scorer.name}", "kind": KIND, "judge": judge, "metric": scorer.name,
                     "question": spec.question, "comparison": c.id, "prompt_id": c.prompt_id, "category": c.category,
                     "left_system": c.left, "right_system": c.right, "left_score": left, "right_score": right,
                     "margin": margin, "choice": choice,
                     "chosen_system": {LEFT: c.left, RIGHT: c.right}.get(choice), "attention": c.attention,
                     "created": now})
    path = Path(session.path) / MACHINE_DIR / f"{scorer.name}.parquet"
    path.parent.mkdir(exist_ok=True)
    frame = pd.DataFrame(rows)
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    return path


def machine_votes(session) -> pd.DataFrame:
    """Every machine rater's answers stored for the session (empty when none)."""
    folder = Path(session.path) / MACHINE_DIR
    parts = [pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))] if folder.is_dir() else []
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# ----------------------------------------------------------------------------- agreement with people

ANSWERS = ("a", "same", "b")


def _oriented(choice_system: pd.Series, a: str, b: str) -> pd.Series:
    """A chosen system (None: neither) as 'a' | 'same' | 'b' for the pair (a, b)."""
    return choice_system.map(lambda x: "a" if x == a else "b" if x == b else "same")


def people_verdicts(real: pd.DataFrame, question: str, a: str, b: str) -> pd.Series:
    """Per comparison of the pair: the answer most raters gave ('a' | 'same' | 'b'; a tie between answers: same)."""
    d = real[((real.left_system == a) & (real.right_system == b)) | ((real.left_system == b)
                                                                      & (real.right_system == a))]
    if not len(d):
        return pd.Series(dtype=object)
    ans = _oriented(d[f"{question}_system"], a, b)
    counts = pd.crosstab(d["comparison"], ans).reindex(columns=list(ANSWERS), fill_value=0)
    top = counts.max(axis=1)
    winners = counts.eq(top, axis=0)
    return winners.apply(lambda r: r.index[r.values].tolist()[0] if r.sum() == 1 else "same", axis=1)


def cohen_kappa(x, y, labels=ANSWERS) -> float:
    """Cohen's kappa of two raters' labels on the same items (nan when chance agreement is 1)."""
    x, y = np.asarray(x, dtype=object), np.asarray(y, dtype=object)
    if not len(x):
        return float("nan")
    po = float(np.mean(x == y))
    pe = sum(float(np.mean(x == lab)) * float(np.mean(y == lab)) for lab in labels)
    return float("nan") if pe >= 1 else (po - pe) / (1 - pe)


def _stats(m: np.ndarray, p: np.ndarray) -> tuple[float, float, int]:
    """(share agreeing among comparisons both decided, kappa, how many both decided)."""
    both = (m != "same") & (p != "same")
    share = float(np.mean(m[both] == p[both])) if both.any() else float("nan")
    return share, cohen_kappa(m, p), int(both.sum())


def _bootstrap(m, p, prompts, n_boot: int, seed: int):
    """95% percentile intervals of (agreement share, kappa), resampling prompts with replacement."""
    _, groups = np.unique(np.asarray(prompts, dtype=object).astype(str), return_inverse=True)
    k = int(groups.max()) + 1 if len(groups) else 0
    if k < 2:
        return (None, None), (None, None)
    members = [np.flatnonzero(groups == g) for g in range(k)]
    rng = np.random.default_rng(seed)
    shares, kappas = [], []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, k, size=k)])
        s, kap, _ = _stats(m[idx], p[idx])
        shares.append(s)
        kappas.append(kap)

    def interval(v):
        v = np.asarray(v, dtype=float)
        v = v[~np.isnan(v)]
        return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) else (None, None)

    return interval(shares), interval(kappas)


def agreement(real: pd.DataFrame, machine: pd.DataFrame, systems: list[str], n_boot: int = 1000,
              seed: int = 0) -> list[dict]:
    """Per machine rater, pair of systems and category (and overall): the machine's preference shares beside the
    people's verdict shares, the agreement share on comparisons both decided and Cohen's kappa, with intervals.
    `real`: the people's current votes without attention checks; `machine`: machine_votes(session)."""
    out = []
    if not len(machine) or not len(real):
        return out
    machine = machine[machine.attention.isna()]
    for rater, mv in machine.groupby("rater", sort=True):
        q = mv["question"].iloc[0]
        for a, b in itertools.combinations(systems, 2):
            pv = people_verdicts(real, q, a, b)
            mine = mv[mv.comparison.isin(pv.index)].set_index("comparison")
            if not len(mine):
                continue
            m_ans = _oriented(mine["chosen_system"], a, b)
            p_ans = pv.reindex(mine.index)
            groups = [("overall", mine.index)] + [(c, g.index) for c, g in mine.groupby("category", sort=True)]
            for cat, ids in groups:
                m, p = m_ans.loc[ids].to_numpy(dtype=object), p_ans.loc[ids].to_numpy(dtype=object)
                share, kappa, decided = _stats(m, p)
                (s_lo, s_hi), (k_lo, k_hi) = _bootstrap(m, p, mine.loc[ids, "prompt_id"].to_numpy(), n_boot, seed)
                out.append({"rater": rater, "metric": mv["metric"].iloc[0], "question": q, "system_a": a,
                            "system_b": b, "category": cat, "n": int(len(ids)), "margin": float(mv["margin"].iloc[0]),
                            **{f"machine_{x}": float(np.mean(m == x)) for x in ANSWERS},
                            **{f"people_{x}": float(np.mean(p == x)) for x in ANSWERS},
                            "decided": decided, "agree": share, "agree_low": s_lo, "agree_high": s_hi,
                            "kappa": kappa, "kappa_low": k_lo, "kappa_high": k_hi})
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in out]


__all__ = ["JUDGES", "Judge", "load_scorer", "verdict", "rate_session", "machine_votes", "people_verdicts",
           "cohen_kappa", "agreement", "MACHINE_DIR", "KIND"]
