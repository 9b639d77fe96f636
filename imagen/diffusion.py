"""Continuous-time Gaussian diffusion in log-SNR form (paper 2.2 and appendix A): pure functions.

A noisy image is z_t = alpha_t * x + sigma_t * eps with alpha_t^2 = sigmoid(lambda_t), sigma_t^2 = sigmoid(-lambda_t)
(variance preserving), where lambda_t = log(alpha_t^2 / sigma_t^2) is the log signal-to-noise ratio and t in [0, 1]
runs from data (t = 0) to noise (t = 1). Schedule math is done in float64 and cast back at the end.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from imagen.errors import UserError

LOG_SNR_MIN = -20.0  # lambda at t = 1: alpha ~ 4.5e-5, practically pure noise
LOG_SNR_MAX = 20.0  # lambda at t = 0: sigma ~ 4.5e-5, practically clean data
PREDICTIONS = ("eps", "x0", "v")


# ----------------------------------------------------------------------------- schedules: t [B] -> lambda [B]


def cosine_log_snr(t: torch.Tensor, lo: float = LOG_SNR_MIN, hi: float = LOG_SNR_MAX) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal; Imagen appendix A): lambda = -2 log tan(pi t / 2), clipped to [lo, hi].

    The clipping maps t linearly onto the angle interval whose ends give lambda = hi and lambda = lo, so the
    schedule is smooth and finite on all of [0, 1].
    """
    t = t.to(torch.float64)
    a = math.atan(math.exp(-hi / 2))  # angle where lambda = hi
    b = math.atan(math.exp(-lo / 2))  # angle where lambda = lo
    return -2.0 * torch.log(torch.tan(a + t * (b - a)))


def linear_log_snr(t: torch.Tensor) -> torch.Tensor:
    """The continuous limit of DDPM's linear beta schedule (1e-4 .. 0.02 over 1000 steps; VDM appendix)."""
    t = t.to(torch.float64)
    return -torch.log(torch.expm1(1e-4 + 10.0 * t * t))


# Other modules plug a schedule in by adding an entry: name -> (t [B] -> log_snr [B] float64).
SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cosine": cosine_log_snr,
    "linear": linear_log_snr,
}


def schedule(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The schedule function called `name`; an unknown name is a UserError listing the known ones."""
    if name not in SCHEDULES:
        raise UserError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


# ----------------------------------------------------------------------------- noising and conversions


def alpha_sigma(log_snr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda); same dtype as log_snr."""
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


def _coeffs(log_snr: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, sigma computed in float64 from log_snr [B] and shaped [B, 1, 1, 1] in the dtype of `like`."""
    alpha, sigma = alpha_sigma(log_snr.to(torch.float64))
    shape = (-1,) + (1,) * (like.ndim - 1)
    return alpha.reshape(shape).to(like), sigma.reshape(shape).to(like)


def q_sample(x0: torch.Tensor, log_snr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z = alpha * x0 + sigma * noise: x0, noise [B, C, H, W], log_snr [B]."""
    alpha, sigma = _coeffs(log_snr, x0)
    return alpha * x0 + sigma * noise


def to_x0(pred: torch.Tensor, z: torch.Tensor, log_snr: torch.Tensor, prediction: str) -> torch.Tensor:
    """The x0 estimate from a network output that predicts eps, x0 or v (v = alpha * eps - sigma * x0)."""
    alpha, sigma = _coeffs(log_snr, z)
    if prediction == "eps":
        return (z - sigma * pred) / alpha
    if prediction == "x0":
        return pred
    if prediction == "v":
        return alpha * z - sigma * pred
    raise UserError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def x0_to_eps(x0: torch.Tensor, z: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
    """eps = (z - alpha * x0) / sigma."""
    alpha, sigma = _coeffs(log_snr, z)
    return (z - alpha * x0) / sigma


def x0_to_v(x0: torch.Tensor, z: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
    """v = alpha * eps - sigma * x0 (Salimans & Ho 2022), with eps recovered from z."""
    alpha, sigma = _coeffs(log_snr, z)
    return alpha * x0_to_eps(x0, z, log_snr) - sigma * x0


def target(x0: torch.Tensor, noise: torch.Tensor, log_snr: torch.Tensor, prediction: str) -> torch.Tensor:
    """What the network should output for (x0, noise) at log_snr: eps, x0 or v."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        alpha, sigma = _coeffs(log_snr, x0)
        return alpha * noise - sigma * x0
    raise UserError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, log_snr: torch.Tensor,
         prediction: str) -> torch.Tensor:
    """Training loss (paper eq. 1, simple weighting): MSE between the output and the predicted quantity."""
    return torch.nn.functional.mse_loss(pred.float(), target(x0, noise, log_snr, prediction).float())


__all__ = [
    "SCHEDULES", "PREDICTIONS", "LOG_SNR_MIN", "LOG_SNR_MAX", "cosine_log_snr", "linear_log_snr", "schedule",
    "alpha_sigma", "q_sample", "to_x0", "x0_to_eps", "x0_to_v", "target", "loss",
]
