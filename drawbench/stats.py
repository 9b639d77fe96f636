"""Statistics of a DrawBench rating session: preference shares with clustered intervals, Bradley-Terry-Davidson
strengths, inter-rater agreement, position bias and attention checks.

Votes are not independent: the same prompt is judged by many raters and the same rater judges many prompts.

- Shares (prefer a, prefer b, indifferent, their difference, the left share) are means of votes. Their 95% interval
  is a two-way cluster-robust one (Cameron, Gelbach & Miller 2011): the variance is the prompt-clustered plus the
  rater-clustered minus the vote-level sandwich, each with its G / (G - 1) small-cluster factor, and the quantile is
  Student's t with Satterthwaite's degrees of freedom from those three parts (a study with 5 raters who differ
  gets about 4). A percentile bootstrap over 5 raters covers too rarely (0.86-0.90 measured, see docs/human-eval.md).
- Model fits (Davidson strengths, the order effect) get a two-way cluster ("pigeonhole") bootstrap (Owen 2007):
  each replicate resamples prompts and raters independently with replacement, and a vote's weight is (times its
  prompt was drawn) x (times its rater was drawn). Percentile intervals at 95%.

The input of every function is a votes DataFrame as `drawbench.votes.votes_table` returns it (current votes), with
columns prompt_id, category, rater, left_system, right_system, quality, alignment, attention.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from scipy.stats import t as student_t

from drawbench.choices import LEFT, QUESTIONS, RIGHT, SAME
from imagen.errors import UserError

QUESTION_IDS = tuple(q for q, _ in QUESTIONS)
OVERALL = "overall"
ALPHA = 0.05  # 95% intervals


# ----------------------------------------------------------------------------- bootstrap weights
def cluster_weights(prompts: np.ndarray, raters: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Two-way cluster bootstrap weights [n_boot, n_votes]: prompt multiplicity x rater multiplicity."""
    pu, pi = np.unique(prompts, return_inverse=True)
    ru, ri = np.unique(raters, return_inverse=True)
    mp = rng.multinomial(len(pu), np.full(len(pu), 1 / len(pu)), size=n_boot)  # [n_boot, P]
    mr = rng.multinomial(len(ru), np.full(len(ru), 1 / len(ru)), size=n_boot)  # [n_boot, R]
    return (mp[:, pi] * mr[:, ri]).astype(np.float64)


def crossed_mean_interval(y: np.ndarray, prompts: np.ndarray, raters: np.ndarray) -> tuple[np.ndarray, ...]:
    """Means of the columns of y [n, m] over votes, with 95% two-way (prompt x rater) cluster-robust intervals.

    Returns (mean [m], low [m], high [m], standard error [m], degrees of freedom [m]). A clustering with one group
    (one rater) contributes nothing: the interval is then conditional on that rater."""
    y = np.asarray(y, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    n = len(y)
    mean = y.mean(0)
    e = (y - mean) / n  # each vote's influence on the mean

    def part(codes: np.ndarray) -> tuple[np.ndarray, float]:
        g = int(codes.max()) + 1 if len(codes) else 0
        if g < 2:
            return np.zeros_like(mean), math.inf
        tot = np.zeros((g, y.shape[1]))
        np.add.at(tot, codes, e)
        return g / (g - 1) * (tot ** 2).sum(0), float(g - 1)

    pc, rc = pd.factorize(np.asarray(prompts, dtype=object))[0], pd.factorize(np.asarray(raters, dtype=object))[0]
    (vp, dp), (vr, dr) = part(pc), part(rc)
    if not (math.isfinite(dp) or math.isfinite(dr)):  # one prompt and one rater: no spread to measure
        v, df = np.full_like(mean, math.nan), np.full_like(mean, math.nan)
    elif not (math.isfinite(dp) and math.isfinite(dr)):  # one prompt or one rater: a one-way clustering
        v, df = (vr, np.full_like(mean, dr)) if math.isfinite(dr) else (vp, np.full_like(mean, dp))
    else:
        vc, dc = part(pd.factorize(pc.astype(np.int64) * (int(rc.max()) + 1) + rc)[0])
        v = vp + vr - vc
        big = np.maximum(vp, vr)
        keep = v > 1e-9 * big  # the sum can go negative (or cancel to rounding residue): keep the larger part then
        with np.errstate(invalid="ignore", divide="ignore"):
            df = np.where(keep, v ** 2 / (vp ** 2 / dp + vr ** 2 / dr + vc ** 2 / dc), np.where(vp >= vr, dp, dr))
        v = np.where(keep, v, big)
    df = np.where(np.isfinite(df) | np.isnan(v), np.maximum(df, 1.0), 1e6)  # identical votes: no variance, df moot
    se = np.sqrt(v)
    half = student_t.ppf(1 - ALPHA / 2, df) * se
    return mean, mean - half, mean + half, se, df


def _interval(samples: np.ndarray) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if len(s) == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(s, [ALPHA / 2, 1 - ALPHA / 2])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- orientation
def oriented(df: pd.DataFrame, question: str, a: str, b: str) -> pd.DataFrame:
    """The votes on the pair (a, b) with `outcome` +1 = prefers a, 0 = indifferent, -1 = prefers b."""
    m = ((df.left_system == a) & (df.right_system == b)) | ((df.left_system == b) & (df.right_system == a))
    d = df[m].copy()
    chose = np.where(d[question] == LEFT, d.left_system, np.where(d[question] == RIGHT, d.right_system, ""))
    d["outcome"] = np.where(chose == a, 1, np.where(chose == b, -1, 0))
    return d


def systems_of(df: pd.DataFrame) -> list[str]:
    return sorted(set(df.left_system) | set(df.right_system))


# ----------------------------------------------------------------------------- preference shares
def preference_shares(d: pd.DataFrame) -> dict:
    """Shares preferring a, preferring b and indifferent among oriented votes `d`, and the preference prefer_a -
    prefer_b, each with its 95% prompt x rater cluster-robust interval (clipped to the possible range)."""
    n = len(d)
    out: dict = {"n": n, "n_prompts": int(d.prompt_id.nunique()) if n else 0,
                 "n_raters": int(d.rater.nunique()) if n else 0}
    names = ("prefer_a", "prefer_b", "indifferent", "difference")
    if n == 0:
        for k in names:
            out[k], out[k + "_low"], out[k + "_high"] = math.nan, math.nan, math.nan
        return out
    y = d.outcome.to_numpy()
    cols = np.stack([y == 1, y == -1, y == 0, np.zeros(n, bool)], axis=1).astype(np.float64)
    cols[:, 3] = cols[:, 0] - cols[:, 1]  # the quantity `drawbench plan` sizes a study for
    mean, low, high, _, df = crossed_mean_interval(cols, d.prompt_id.to_numpy(), d.rater.to_numpy())
    for j, k in enumerate(names):
        floor = -1.0 if k == "difference" else 0.0
        out[k] = float(mean[j])
        out[k + "_low"], out[k + "_high"] = float(max(low[j], floor)), float(min(high[j], 1.0))
    out["difference_df"] = float(df[3])  # the t quantile's degrees of freedom (about raters - 1 when they differ)
    return out


def preference_table(df: pd.DataFrame, systems: list[str] | None = None) -> pd.DataFrame:
    """Per pair of systems, per question, per category and overall: shares with 95% intervals.

    `systems` orders each pair (a = earlier, e.g. the session's first --study); default alphabetical.
    """
    present = set(systems_of(df))
    order = [x for x in systems if x in present] if systems else sorted(present)
    rows = []
    for a, b in itertools.combinations(order, 2):
        for q in QUESTION_IDS:
            d = oriented(df, q, a, b)
            if len(d) == 0:
                continue
            groups = [(OVERALL, d)] + [(c, g) for c, g in d.groupby("category", sort=True)]
            for cat, g in groups:
                rows.append({"system_a": a, "system_b": b, "question": q, "category": cat,
                             **preference_shares(g)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Bradley-Terry with ties (Davidson)
def _pair_counts(i: np.ndarray, j: np.ndarray, outcome: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Weighted counts [k, k, 3]: (i beats j, tie, j beats i) for i < j."""
    c = np.zeros((k, k, 3))
    col = np.where(outcome == 1, 0, np.where(outcome == 0, 1, 2))
    np.add.at(c, (i, j, col), w)
    return c


def _logit_fit(w: np.ndarray, d: np.ndarray, ridge_mask: np.ndarray, ridge: float,
               iters: int = 100) -> np.ndarray:
    """Maximum likelihood of a batch of three-outcome multinomial logits sharing one design.

    w [B, P, 3] weighted counts per pair and outcome; d [P, 3, X] each outcome's linear predictor as a vector over
    the parameters x [X]. The log-likelihood is concave: damped Newton, all replicates at once; a tiny ridge on the
    parameters in `ridge_mask` keeps an always-winning system finite. Returns x [B, X]."""
    b, x_dim = w.shape[0], d.shape[-1]
    n = w.sum(-1)  # [B, P]
    x = np.zeros((b, x_dim))
    reg = np.where(ridge_mask, 2 * ridge, 0.0)
    for _ in range(iters):
        a = np.einsum("pcx,bx->bpc", d, x)  # linear predictors [B, P, 3]
        pr = np.exp(a - a.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        grad = np.einsum("bpc,pcx->bx", w - n[..., None] * pr, d) - reg * x
        m = np.einsum("bpc,pcx->bpx", pr, d)
        hess = (np.einsum("bp,bpc,pcx,pcy->bxy", n, pr, d, d) - np.einsum("bp,bpx,bpy->bxy", n, m, m)
                + np.diag(reg) + 1e-12 * np.eye(x_dim))  # minus the Hessian: positive definite
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        norm = np.linalg.norm(step, axis=-1, keepdims=True)
        x += step * np.minimum(1.0, 2.0 / np.maximum(norm, 1e-300))  # damped: at most 2 nats per iteration
        if norm.max() < 1e-10:
            break
    return x


def davidson_fit_batch(counts: np.ndarray, ridge: float = 1e-6, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood Davidson (1970) model for a batch of pair-count arrays [B, k, k, 3].

    P(i beats j) = pi_i / D, P(tie) = nu sqrt(pi_i pi_j) / D, D = pi_i + pi_j + nu sqrt(pi_i pi_j).
    In x = (log pi_1..log pi_k, log nu) each outcome's log-probability is a linear predictor minus the log-sum-exp
    of the pair's three predictors (a multinomial logit). A tiny ridge fixes the mean log-strength at 0.
    Returns (log-strengths centred to mean 0 [B, k], nu [B]).
    """
    k = counts.shape[1]
    ii, jj = np.triu_indices(k, 1)
    d = np.zeros((len(ii), 3, k + 1))  # [P, 3, k+1]
    p_idx = np.arange(len(ii))
    d[p_idx, 0, ii] = 1.0
    d[p_idx, 1, ii] = d[p_idx, 1, jj] = 0.5
    d[p_idx, 1, k] = 1.0
    d[p_idx, 2, jj] = 1.0
    x = _logit_fit(counts[:, ii, jj, :], d, np.arange(k + 1) < k, ridge, iters)
    th = x[:, :k]
    return th - th.mean(-1, keepdims=True), np.exp(x[:, k])


def davidson_order_fit_batch(counts: np.ndarray, ridge: float = 1e-6,
                             iters: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Davidson model with an order effect (Davidson & Beaver 1977), for counts by presentation order
    [B, k, k, 3]: counts[b, l, r] = (the left system l preferred, tie, the right system r preferred).

    The system shown first (left) has its strength multiplied by theta: P(l preferred) = theta pi_l / D,
    P(tie) = nu sqrt(theta pi_l pi_r) / D, P(r preferred) = pi_r / D. theta = 1 is no position effect; unlike a
    left share, theta is estimated beside the systems' strengths, so a preferred system that happened to land on
    the left more often does not read as a position bias. Returns (log-strengths [B, k], nu [B], log theta [B])."""
    k = counts.shape[1]
    ll, rr = [a.ravel() for a in np.meshgrid(np.arange(k), np.arange(k), indexing="ij")]
    keep = ll != rr
    ll, rr = ll[keep], rr[keep]
    d = np.zeros((len(ll), 3, k + 2))  # x = (log pi_1..k, log nu, log theta)
    p_idx = np.arange(len(ll))
    d[p_idx, 0, ll] = 1.0
    d[p_idx, 0, k + 1] = 1.0
    d[p_idx, 1, ll] = d[p_idx, 1, rr] = 0.5
    d[p_idx, 1, k + 1] = 0.5
    d[p_idx, 1, k] = 1.0
    d[p_idx, 2, rr] = 1.0
    x = _logit_fit(counts[:, ll, rr, :], d, np.arange(k + 2) < k, ridge, iters)
    th = x[:, :k]
    return th - th.mean(-1, keepdims=True), np.exp(x[:, k]), x[:, k + 1]


def davidson_fit(counts: np.ndarray, ridge: float = 1e-6) -> tuple[np.ndarray, float]:
    """One Davidson fit from pair counts [k, k, 3]: (log-strengths centred to mean 0 [k], nu)."""
    th, nu = davidson_fit_batch(counts[None], ridge)
    return th[0], float(nu[0])


def bradley_terry(df: pd.DataFrame, question: str, n_boot: int = 300, seed: int = 0) -> pd.DataFrame:
    """Davidson strengths per system for one question, with 95% cluster-bootstrap intervals."""
    systems = systems_of(df)
    k = len(systems)
    pos = {s: n for n, s in enumerate(systems)}
    li, ri = df.left_system.map(pos).to_numpy(), df.right_system.map(pos).to_numpy()
    out_lr = np.where(df[question] == LEFT, 1, np.where(df[question] == RIGHT, -1, 0))
    swap = li > ri  # orient every vote to (low index, high index)
    i, j = np.where(swap, ri, li), np.where(swap, li, ri)
    outcome = np.where(swap, -out_lr, out_lr)
    theta, nu = davidson_fit(_pair_counts(i, j, outcome, np.ones(len(df)), k))
    w = cluster_weights(df.prompt_id.to_numpy(), df.rater.to_numpy(), n_boot, np.random.default_rng(seed))
    boot, boot_nu = davidson_fit_batch(np.stack([_pair_counts(i, j, outcome, wb, k) for wb in w]))
    strength = np.exp(theta) / np.exp(theta).sum()
    rows = []
    for s, n in pos.items():
        lo, hi = _interval(boot[:, n])
        rows.append({"question": question, "system": s, "log_strength": float(theta[n]), "log_strength_low": lo,
                     "log_strength_high": hi, "strength": float(strength[n]), "tie_nu": nu,
                     "tie_nu_low": _interval(boot_nu)[0], "tie_nu_high": _interval(boot_nu)[1]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- agreement, position, attention
def agreement(df: pd.DataFrame, question: str, level: str = "nominal") -> dict:
    """Krippendorff's alpha over raters x comparisons; answers coded by system (first system, tie, second)."""
    import krippendorff

    d = df.copy()
    first = np.where(d.left_system < d.right_system, d.left_system, d.right_system)  # alphabetically first
    chose = np.where(d[question] == LEFT, d.left_system, np.where(d[question] == RIGHT, d.right_system, ""))
    d["code"] = np.where(chose == "", 1.0, np.where(chose == first, 0.0, 2.0))
    table = d.pivot_table(index="rater", columns="comparison", values="code", aggfunc="last")
    table = table.loc[:, table.notna().sum(axis=0) >= 2]  # units rated by one rater carry no agreement information
    n_units = int(table.shape[1])
    if n_units == 0 or len(np.unique(table.to_numpy()[np.isfinite(table.to_numpy())])) < 2:
        return {"question": question, "alpha": math.nan, "units": n_units, "level": level}
    alpha = krippendorff.alpha(reliability_data=table.to_numpy(), level_of_measurement=level)
    return {"question": question, "alpha": float(alpha), "units": n_units, "level": level}


def position_bias(df: pd.DataFrame, question: str) -> dict:
    """Share of decided votes (not indifferent) that chose the LEFT side; 0.5 means no position bias. Descriptive:
    a preferred system that landed on the left more often moves it too (`order_effect` separates the two).

    The p-value is an exact binomial test that treats votes as independent; the interval is clustered.
    """
    d = df[df[question] != SAME]
    n = len(d)
    if n == 0:
        return {"question": question, "n": 0, "left_share": math.nan, "low": math.nan, "high": math.nan,
                "p_value": math.nan}
    y = (d[question] == LEFT).to_numpy(dtype=np.float64)
    mean, lo, hi, _, _ = crossed_mean_interval(y, d.prompt_id.to_numpy(), d.rater.to_numpy())
    return {"question": question, "n": n, "left_share": float(mean[0]), "low": float(max(lo[0], 0.0)),
            "high": float(min(hi[0], 1.0)), "p_value": float(binomtest(int(y.sum()), n, 0.5).pvalue)}


def order_effect(df: pd.DataFrame, question: str, n_boot: int = 500, seed: int = 0) -> dict:
    """The position (order) effect of one question inside the pairwise model: log theta of the Davidson model with
    an order term (0: none; > 0: the left set is preferred for being on the left), with a 95% prompt x rater
    cluster-bootstrap interval. Needs votes where each pair was shown both ways round (sides drawn per rater)."""
    systems = systems_of(df)
    k = len(systems)
    pos = {s: n for n, s in enumerate(systems)}
    li, ri = df.left_system.map(pos).to_numpy(), df.right_system.map(pos).to_numpy()
    col = np.where(df[question] == LEFT, 0, np.where(df[question] == SAME, 1, 2))

    def counts(w):
        c = np.zeros((k, k, 3))
        np.add.at(c, (li, ri, col), w)
        return c

    if len(df) == 0 or k < 2:
        return {"question": question, "n": int(len(df)), "log_theta": math.nan, "low": math.nan, "high": math.nan,
                "theta": math.nan}
    decided = col[col != 1]
    if len(decided) and (decided == decided[0]).all():  # every decided vote on one side: the MLE is unbounded
        side = "left" if decided[0] == 0 else "right"
        return {"question": question, "n": int(len(df)), "log_theta": math.nan, "low": math.nan, "high": math.nan,
                "theta": math.nan, "note": f"every decided vote chose the {side} set: the order effect is unbounded"}
    _, _, lt = davidson_order_fit_batch(counts(np.ones(len(df)))[None])
    w = cluster_weights(df.prompt_id.to_numpy(), df.rater.to_numpy(), n_boot, np.random.default_rng(seed))
    _, _, boot = davidson_order_fit_batch(np.stack([counts(wb) for wb in w]))
    lo, hi = _interval(boot)
    return {"question": question, "n": int(len(df)), "log_theta": float(lt[0]), "low": lo, "high": hi,
            "theta": float(np.exp(lt[0]))}


def attention_table(votes: pd.DataFrame) -> pd.DataFrame:
    """Per rater: attention checks answered, passed (both questions on the known real side), pass rate."""
    chk = votes[votes.attention.notna()]
    raters = sorted(votes.rater.unique())
    rows = []
    for r in raters:
        c = chk[chk.rater == r]
        if "quality_system" in c and "alignment_system" in c:  # by system: right whichever side it was shown on
            reading = ((c.left_system == "offprompt") | (c.right_system == "offprompt")).to_numpy()
            # a looking check (noise) needs both answers on the real set; a reading check (the same system's images
            # for another prompt) needs the alignment answer on it: the two sets' quality is alike
            ok = np.where(reading, c.alignment_system == "real",
                          (c.quality_system == "real") & (c.alignment_system == "real"))
            passed = int(ok.sum())
        else:
            passed = int(((c.quality == c.attention) & (c.alignment == c.attention)).sum())
        rows.append({"rater": r, "checks": len(c), "passed": passed,
                     "pass_rate": passed / len(c) if len(c) else math.nan})
    return pd.DataFrame(rows, columns=["rater", "checks", "passed", "pass_rate"])


# ----------------------------------------------------------------------------- everything
def one_answer_per_key(votes: pd.DataFrame) -> None:
    """Refuse a vote table that holds two answers for one (rater, comparison), naming them: counted twice, that
    rater would weigh double on those comparisons. (The store's current votes never do; a table put together by
    hand, or an export with its history, can.)"""
    if "comparison" not in votes.columns or not len(votes):
        return
    keys = votes[votes.duplicated(["rater", "comparison"], keep=False)].groupby(["rater", "comparison"]).size()
    if len(keys):
        shown = ", ".join(f"{r} on {c} ({n} answers)" for (r, c), n in keys.head(5).items())
        raise UserError(f"the vote table holds more than one answer for {len(keys)} (rater, comparison) key(s): "
                        f"{shown}{', ...' if len(keys) > 5 else ''}; keep one per key (the current votes, as "
                        f"`drawbench export`'s `current` column marks them)")


def summarize(votes: pd.DataFrame, n_boot: int = 2000, n_boot_bt: int = 300, seed: int = 0,
              min_attention: float | None = None, systems: list[str] | None = None) -> dict:
    """All statistics of a session as one JSON-able dict (current votes in, attention checks included).

    `systems`: the session's system order (pairs are reported as (earlier, later)); default alphabetical.
    """
    one_answer_per_key(votes)
    att = attention_table(votes)
    dropped: list[str] = []
    if min_attention is not None:
        bad = att[(att.checks > 0) & (att.pass_rate < min_attention)]
        dropped = sorted(bad.rater)
    kept = votes[~votes.rater.isin(dropped)]
    real = kept[kept.attention.isna()]
    out: dict = {
        "n_votes": int(len(real)), "n_raters": int(real.rater.nunique()), "n_prompts": int(real.prompt_id.nunique()),
        "systems": ([x for x in systems if x in set(systems_of(real))] if systems else systems_of(real))
        if len(real) else [],
        "dropped_raters": dropped, "min_attention": min_attention,
        "attention": _records(att),
        "preference": _records(preference_table(real, systems)) if len(real) else [],
        "bradley_terry": [], "agreement": [], "position_bias": [], "order_effect": [],
    }
    if len(real) == 0:
        return out
    for q in QUESTION_IDS:
        if len(out["systems"]) > 2:
            out["bradley_terry"] += _records(bradley_terry(real, q, n_boot_bt, seed))
        out["agreement"].append(agreement(real, q))
        out["position_bias"].append(position_bias(real, q))  # descriptive: the plain left share
        out["order_effect"] += _records(pd.DataFrame([order_effect(real, q, min(n_boot, 500), seed)]))
    return out


def _records(df: pd.DataFrame) -> list[dict]:
    recs = df.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in recs]
