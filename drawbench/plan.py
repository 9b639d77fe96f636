"""How many prompts (and votes) a rating study needs, by simulation under the analysis `drawbench stats` runs.

A simulated study: P prompts, R raters, each rater judging every prompt (or `per_rater` of them, drawn at random).
A vote prefers A, B or neither. The true shares are prefer_a = (1 - ties + effect) / 2, prefer_b = (1 - ties -
effect) / 2, and `ties` indifferent; prompts and raters shift the A-versus-B log-odds by normal random effects
(sd `prompt_sd`, `rater_sd`), as real prompts and raters differ. The analysis is the report's: the share
difference prefer_a - prefer_b with its 95% prompt x rater cluster-robust t interval
(`stats.crossed_mean_interval`); a study detects the
preference when that interval excludes 0 on the right side. Power is the share of simulated studies that do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from drawbench.stats import crossed_mean_interval
from imagen.errors import UserError


@dataclass(frozen=True)
class Design:
    raters: int = 5
    per_rater: int | None = None  # comparisons per rater (None: every prompt)
    ties: float = 0.2
    prompt_sd: float = 0.5
    rater_sd: float = 0.3

    def check(self) -> None:
        if self.raters < 2:
            raise UserError(f"--raters must be at least 2 (the interval clusters by rater), got {self.raters}")
        if self.per_rater is not None and self.per_rater < 1:
            raise UserError(f"--per-rater must be at least 1, got {self.per_rater}")
        if not 0.0 <= self.ties < 1.0:
            raise UserError(f"--ties must be in [0, 1), got {self.ties}")
        if self.prompt_sd < 0 or self.rater_sd < 0:
            raise UserError("--prompt-sd and --rater-sd must be >= 0")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def simulate_intervals(design: Design, effect: float, prompts: int, sims: int,
                       rng: np.random.Generator) -> np.ndarray:
    """[sims, 2] the 95% cluster-robust interval of prefer_a - prefer_b of each simulated study."""
    decided = 1.0 - design.ties
    base = _logit((decided + effect) / (2 * decided))  # A's log-odds among decided votes
    out = np.full((sims, 2), np.nan)
    for s in range(sims):
        pe = rng.normal(0, design.prompt_sd, prompts)
        re = rng.normal(0, design.rater_sd, design.raters)
        if design.per_rater is None or design.per_rater >= prompts:
            pi, ri = np.meshgrid(np.arange(prompts), np.arange(design.raters), indexing="ij")
            pi, ri = pi.ravel(), ri.ravel()
        else:
            pi = np.concatenate([rng.choice(prompts, design.per_rater, replace=False) for _ in range(design.raters)])
            ri = np.repeat(np.arange(design.raters), design.per_rater)
        p_a = 1.0 / (1.0 + np.exp(-(base + pe[pi] + re[ri])))  # [n] P(A | decided)
        u = rng.random(len(pi))
        tie = rng.random(len(pi)) < design.ties
        y = np.where(tie, 0.0, np.where(u < p_a, 1.0, -1.0))  # +1 prefers A, -1 prefers B
        _, lo, hi, _, _ = crossed_mean_interval(y, pi, ri)  # prefer_a - prefer_b is the mean of y
        out[s] = lo[0], hi[0]
    return out


def simulate_detects(design: Design, effect: float, prompts: int, sims: int,
                     rng: np.random.Generator) -> np.ndarray:
    """[sims] booleans: whether each simulated study's interval of prefer_a - prefer_b lies above 0."""
    return simulate_intervals(design, effect, prompts, sims, rng)[:, 0] > 0


def true_difference(design: Design, effect: float, draws: int = 400_000, seed: int = 12345) -> float:
    """The population prefer_a - prefer_b the simulated studies estimate: the logistic preference averaged over
    prompt and rater effects (not `effect` itself once they vary), by Monte Carlo."""
    rng = np.random.default_rng(seed)
    decided = 1.0 - design.ties
    base = _logit((decided + effect) / (2 * decided))
    shift = rng.normal(0, design.prompt_sd, draws) + rng.normal(0, design.rater_sd, draws)
    p_a = 1.0 / (1.0 + np.exp(-(base + shift)))
    return float(decided * (2 * p_a.mean() - 1))


def coverage(design: Design, effect: float, prompts: int, sims: int = 200, seed: int = 0) -> dict:
    """How often the report's 95% interval of prefer_a - prefer_b covers the truth, over simulated studies."""
    design.check()
    truth = true_difference(design, effect)
    iv = simulate_intervals(design, effect, prompts, sims, np.random.default_rng(seed))
    hit = (iv[:, 0] <= truth) & (truth <= iv[:, 1])
    return {"coverage": float(hit.mean()), "truth": truth, "mean_width": float(np.nanmean(iv[:, 1] - iv[:, 0])),
            "prompts": prompts, "sims": sims, "effect": effect, **asdict(design)}


def power(design: Design, effect: float, prompts: int, sims: int = 200, seed: int = 0) -> float:
    design.check()
    if not 0 < effect < 1 - design.ties:
        raise UserError(f"--effect must be in (0, {1 - design.ties:g}) (1 - the indifferent share), got {effect}")
    return float(simulate_detects(design, effect, prompts, sims, np.random.default_rng(seed)).mean())


def prompts_needed(design: Design, effect: float, target: float = 0.8, sims: int = 200, seed: int = 0,
                   max_prompts: int = 4096) -> dict:
    """The fewest prompts whose simulated power reaches `target` (doubling, then bisection)."""
    lo, hi = 1, 2
    while power(design, effect, hi, sims, seed) < target:
        lo, hi = hi, hi * 2
        if hi > max_prompts:
            raise UserError(f"even {max_prompts} prompts do not reach {target:.0%} power for an effect of {effect} with "
                            f"{design.raters} raters: raters who differ (--rater-sd {design.rater_sd:g}) limit what "
                            f"more prompts can buy; add raters, or plan for a larger effect")
    while hi - lo > max(1, lo // 20):  # within 5%
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(design, effect, mid, sims, seed) >= target else (mid, hi)
    votes = hi * design.raters if design.per_rater is None else design.raters * min(design.per_rater, hi)
    return {"prompts": hi, "votes": votes, "power": power(design, effect, hi, sims, seed + 1),
            "effect": effect, "target": target, "sims": sims, **asdict(design)}


def detectable_effect(design: Design, prompts: int, target: float = 0.8, sims: int = 200, seed: int = 0) -> dict:
    """The smallest preference (prefer_a - prefer_b) detected with `target` power by `prompts` prompts."""
    lo, hi = 0.0, 1.0 - design.ties - 1e-3
    if power(design, hi, prompts, sims, seed) < target:
        raise UserError(f"{prompts} prompts do not reach {target:.0%} power for any preference; add prompts or raters")
    while hi - lo > 0.005:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if power(design, mid, prompts, sims, seed) >= target else (mid, hi)
    return {"effect": round(hi, 3), "prompts": prompts, "target": target, "sims": sims, **asdict(design)}


__all__ = ["Design", "power", "prompts_needed", "detectable_effect", "simulate_detects", "simulate_intervals",
           "true_difference", "coverage"]
