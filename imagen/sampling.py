"""Samplers with one signature, and classifier-free guidance and thresholding as wrappers around the denoiser.

A denoiser maps a noisy batch to its clean estimate: `denoise(z [B,C,H,W], log_snr [B]) -> x0 [B,C,H,W]`. Every
sampler has the signature

    sampler(denoise, x, log_snrs [N+1], noise: BatchNoise, callback=None, disable=True) -> x0

(k-diffusion style). `log_snrs` (float64) runs from noise to data, so the noise level decreases and the log-SNR
increases; the last entry is +inf, meaning clean data, so a grid of N + 1 points makes N denoiser calls and the
result is the last x0 estimate. `callback` gets {"i", "z", "x0", "log_snr"} after each step. Guidance (paper 2.2) and thresholding
(paper 2.3) change the denoiser, never a sampler, so every sampler gets them for free.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from imagen.config import THRESHOLD_FORMS, normalize_threshold, threshold_parts
from imagen.diffusion import schedule
from imagen.errors import UserError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- randomness


class BatchNoise:
    """One torch.Generator per row (EDM's StackedRandomGenerator): row i's noise depends only on seeds[i].

    Noise is drawn on the CPU and moved to `device`, so a (seed, prompt) reproduces on any device and in any batch.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator("cpu").manual_seed(s % (1 << 63)) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, shape_of_one: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal noise [B, *shape_of_one], row i from generator i."""
        rows = [torch.randn(tuple(shape_of_one), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(self.device)


# ----------------------------------------------------------------------------- guidance and thresholding


def guided(model_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], w: float) -> Denoiser:
    """Classifier-free guidance (paper 2.2): x0~ = w * x0(z, c) + (1 - w) * x0(z).

    `model_fn(z2, log_snr2, drop_text2) -> x0` is called once on the doubled batch (conditional rows, then rows with
    the text dropped). x0 is affine in eps with the same z, so this equals guiding eps: eps~ = w eps_c + (1-w) eps_u.
    With w == 1 the unconditional half is skipped.
    """
    w = float(w)

    def denoise(z: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        if w == 1.0:
            return model_fn(z, log_snr, torch.zeros(b, dtype=torch.bool, device=z.device))
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(z.device)
        x0 = model_fn(torch.cat([z, z]), torch.cat([log_snr, log_snr]), drop)  # [2B, C, H, W]
        x0_c, x0_u = x0[:b], x0[b:]
        return x0_u + w * (x0_c - x0_u)

    return denoise


def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """Static thresholding (paper 2.3): clip x0 to the data range [-1, 1]."""
    return x0.clamp(-1.0, 1.0)


def _row_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row q-quantile with linear interpolation of a [B, N] -> [B] (torch.quantile caps N at 2^24)."""
    n = a.shape[1]
    pos = q * (n - 1)
    lo, frac = int(math.floor(pos)), pos - math.floor(pos)
    hi = min(lo + 1, n - 1)
    top = torch.topk(a, n - lo, dim=1, largest=True, sorted=True).values  # [B, n - lo], the largest ones
    # sorted ascending, element lo is top[:, -1] and element hi is top[:, -2] (when hi > lo)
    v_lo = top[:, -1]
    v_hi = top[:, -2] if hi > lo else v_lo
    return v_lo + frac * (v_hi - v_lo)


def dynamic_threshold(x0: torch.Tensor, percentile: float, cap: float | None = None) -> torch.Tensor:
    """Dynamic thresholding (paper 2.3): s = p-quantile of |x0| per sample, s = max(s, 1), x0 = clip(x0, -s, s) / s.

    x0 [B, C, H, W]; p a fraction in (0, 1]. Samples already within [-1, 1] are unchanged. `cap` bounds s from above
    (diffusers' `sample_max_value`; DeepFloyd IF uses 1.5); None: no bound, as in the paper.
    """
    flat = x0.detach().abs().reshape(x0.shape[0], -1).float()  # [B, C*H*W]
    s = _row_quantile(flat, float(percentile)).clamp(min=1.0, max=cap).to(x0.dtype)  # [B]
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def parse_threshold(spec: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """'none' -> None, 'static' -> static_threshold, 'dynamic:P' -> dynamic thresholding at fraction P.

    Any spelling of one stage's setting that normalize_threshold accepts ('Static', 'dynamic', 'dynamic:.995')
    means the same here; a per-stage string ('static,none') is split by the caller (imagen.config.stage_values)."""
    threshold_parts(spec)  # one stage's setting: a per-stage string is a UserError here
    spec = normalize_threshold(spec, "threshold")
    if spec == "none":
        return None
    if spec == "static":
        return static_threshold
    _, p, cap = threshold_parts(spec)  # normalize_threshold checked 0 < P <= 1 and M >= 1
    return lambda x0: dynamic_threshold(x0, p, cap)


def thresholded(denoise: Denoiser, fn: Callable[[torch.Tensor], torch.Tensor] | None) -> Denoiser:
    """The denoiser whose x0 estimate goes through `fn` (None: unchanged)."""
    if fn is None:
        return denoise
    return lambda z, log_snr: fn(denoise(z, log_snr))


# ----------------------------------------------------------------------------- timestep grid


def log_snr_grid(steps: int, schedule_name: str = "cosine") -> torch.Tensor:
    """[steps + 1] float64 log-SNRs, decreasing in noise: t = 1, 1 - 1/N, ..., 1/N, then +inf (clean data)."""
    if int(steps) < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    t = torch.linspace(1.0, 0.0, int(steps) + 1, dtype=torch.float64)
    lam = schedule(schedule_name)(t)
    lam[-1] = math.inf
    return lam


def _alpha_sigma(lam: float) -> tuple[float, float]:
    """alpha, sigma as Python floats (float64) for one log-SNR; lam = +inf gives (1, 0)."""
    return math.sqrt(_sigmoid(lam)), math.sqrt(_sigmoid(-lam))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _call(denoise: Denoiser, z: torch.Tensor, lam: float) -> torch.Tensor:
    return denoise(z, torch.full((z.shape[0],), lam, dtype=z.dtype, device=z.device))


# ----------------------------------------------------------------------------- samplers


def sample_ddpm(denoise: Denoiser, x: torch.Tensor, log_snrs: torch.Tensor, noise: BatchNoise,
                callback=None, disable: bool = True) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Alg. 2; Imagen's default): draw z_s ~ q(z_s | z_t, x0 = x0_hat).

    With r = SNR_t / SNR_s: mean = r (alpha_s / alpha_t) z_t + alpha_s (1 - r) x0_hat, var = (1 - r) sigma_s^2.
    """
    lams = [float(v) for v in log_snrs]
    z, x0 = x, x
    for i in tqdm(range(len(lams) - 1), disable=disable, desc="ddpm", leave=False):
        lam_t, lam_s = lams[i], lams[i + 1]
        x0 = _call(denoise, z, lam_t)
        (a_t, _), (a_s, s_s) = _alpha_sigma(lam_t), _alpha_sigma(lam_s)
        r = math.exp(lam_t - lam_s)  # SNR_t / SNR_s in [0, 1); 0 when s is clean
        mean = (r * a_s / a_t) * z + (a_s * (1.0 - r)) * x0
        std = math.sqrt((1.0 - r) * s_s * s_s)
        z = mean + std * noise.randn(z.shape[1:], dtype=z.dtype) if std > 0 else mean
        if callback is not None:
            callback({"i": i, "z": z, "x0": x0, "log_snr": lam_t})
    return x0 if math.isinf(lams[-1]) else z


def sample_ddim(denoise: Denoiser, x: torch.Tensor, log_snrs: torch.Tensor, noise: BatchNoise,
                callback=None, disable: bool = True) -> torch.Tensor:
    """DDIM with eta = 0 (Song et al. 2021, eq. 12): keep the implied eps, move x0_hat to the next noise level."""
    lams = [float(v) for v in log_snrs]
    z, x0 = x, x
    for i in tqdm(range(len(lams) - 1), disable=disable, desc="ddim", leave=False):
        lam_t, lam_s = lams[i], lams[i + 1]
        x0 = _call(denoise, z, lam_t)
        (a_t, s_t), (a_s, s_s) = _alpha_sigma(lam_t), _alpha_sigma(lam_s)
        eps = (z - a_t * x0) / s_t
        z = a_s * x0 + s_s * eps
        if callback is not None:
            callback({"i": i, "z": z, "x0": x0, "log_snr": lam_t})
    return x0 if math.isinf(lams[-1]) else z


def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, log_snrs: torch.Tensor, noise: BatchNoise,
                    callback=None, disable: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in half-log-SNR time lambda/2 = log(alpha / sigma).

    z_s = (sigma_s / sigma_t) z_t - alpha_s (e^{-h} - 1) D, with D the multistep (second order) extrapolation of
    x0_hat from this and the previous step; first order on the first step and the step to clean data.
    """
    lams = [float(v) for v in log_snrs]
    z, x0, x0_prev, h_prev = x, x, None, None
    for i in tqdm(range(len(lams) - 1), disable=disable, desc="dpmpp-2m", leave=False):
        lam_t, lam_s = lams[i], lams[i + 1]
        x0 = _call(denoise, z, lam_t)
        (_, s_t), (a_s, s_s) = _alpha_sigma(lam_t), _alpha_sigma(lam_s)
        h = (lam_s - lam_t) / 2.0
        if math.isinf(lam_s):
            z = x0  # sigma_s = 0: the exact solution is the data estimate
        else:
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * x0_prev
            z = (s_s / s_t) * z - (a_s * math.expm1(-h)) * d
        x0_prev, h_prev = x0, h
        if callback is not None:
            callback({"i": i, "z": z, "x0": x0, "log_snr": lam_t})
    return x0 if math.isinf(lams[-1]) else z


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp-2m": sample_dpmpp_2m,
}


def check_sampler(value, key: str = "sampler") -> str:
    """A sampler name, or one per stage (a list or 'ddim,ddpm'), checked and in canonical form (normalize_sampler)."""
    from imagen.config import normalize_sampler

    value = normalize_sampler(value, key)
    for name in value.split(","):
        if name not in SAMPLERS:
            raise UserError(f"{key}: unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)} (one per stage: "
                            f"comma-separated)")
    return value


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler called `name`; an unknown name is a UserError listing the known ones."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = [
    "Denoiser", "BatchNoise", "guided", "static_threshold", "dynamic_threshold", "parse_threshold", "thresholded",
    "normalize_threshold",  # from imagen.config
    "THRESHOLD_FORMS", "log_snr_grid", "SAMPLERS", "get_sampler", "check_sampler", "sample_ddpm", "sample_ddim", "sample_dpmpp_2m",
]
