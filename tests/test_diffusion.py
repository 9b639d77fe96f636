"""Schedules, noising, the eps/x0/v conversions and the loss (imagen.diffusion)."""

import math

import pytest
import torch

from imagen import diffusion as D
from imagen.errors import UserError


@pytest.mark.parametrize("name", sorted(D.SCHEDULES))
def test_schedule_is_decreasing_finite_float64(name):
    t = torch.linspace(0, 1, 101)
    lam = D.SCHEDULES[name](t)
    assert lam.dtype == torch.float64
    assert torch.isfinite(lam).all()
    assert (lam[1:] < lam[:-1]).all()
    assert lam[0] > 5 and lam[-1] < -5  # clean at t=0, noise at t=1


def test_cosine_matches_closed_form_and_ends():
    lam = D.cosine_log_snr(torch.tensor([0.0, 0.5, 1.0]))
    assert lam[0].item() == pytest.approx(D.LOG_SNR_MAX, abs=1e-9)
    assert lam[1].item() == pytest.approx(0.0, abs=1e-12)  # tan(pi/4) = 1
    assert lam[2].item() == pytest.approx(D.LOG_SNR_MIN, abs=1e-9)
    # interior: the unclipped formula -2 log tan(pi t / 2); alpha_bar = cos^2(pi t / 2)
    for t in (0.1, 0.3, 0.7, 0.9):
        ref = -2 * math.log(math.tan(math.pi * t / 2))
        assert D.cosine_log_snr(torch.tensor([t])).item() == pytest.approx(ref, abs=2e-3)
        alpha, _ = D.alpha_sigma(D.cosine_log_snr(torch.tensor([t], dtype=torch.float64)))
        assert alpha.item() ** 2 == pytest.approx(math.cos(math.pi * t / 2) ** 2, abs=1e-4)


def test_linear_schedule_matches_discrete_ddpm():
    # DDPM's linear betas 1e-4..0.02 over 1000 steps; the continuous schedule should agree on alpha_bar
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    for step in (100, 500, 999):
        t = torch.tensor([(step + 1) / 1000])
        a2 = torch.sigmoid(D.linear_log_snr(t)).item()
        assert a2 == pytest.approx(alpha_bar[step].item(), rel=0.05, abs=1e-4)


def test_alpha_sigma_variance_preserving():
    lam = torch.linspace(-20, 20, 41, dtype=torch.float64)
    alpha, sigma = D.alpha_sigma(lam)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(lam))
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), lam)


def _batch(seed=0, b=6):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(b, 3, 4, 4, generator=g, dtype=torch.float64)
    lam = torch.linspace(-6, 6, b, dtype=torch.float64)
    return x0, noise, lam


def test_q_sample_by_hand():
    x0, noise, lam = _batch()
    z = D.q_sample(x0, lam, noise)
    for i in range(len(lam)):
        a = math.sqrt(1 / (1 + math.exp(-lam[i].item())))
        s = math.sqrt(1 / (1 + math.exp(lam[i].item())))
        torch.testing.assert_close(z[i], a * x0[i] + s * noise[i])


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_conversions_round_trip(prediction):
    x0, noise, lam = _batch(1)
    z = D.q_sample(x0, lam, noise)
    pred = D.target(x0, noise, lam, prediction)  # the perfect network output
    torch.testing.assert_close(D.to_x0(pred, z, lam, prediction), x0)
    torch.testing.assert_close(D.x0_to_eps(x0, z, lam), noise)
    if prediction == "v":
        torch.testing.assert_close(D.x0_to_v(x0, z, lam), pred)
        alpha, sigma = D.alpha_sigma(lam)
        # v = alpha eps - sigma x0 (Salimans & Ho), and x0 = alpha z - sigma v
        torch.testing.assert_close(pred[2], alpha[2] * noise[2] - sigma[2] * x0[2])


def test_conversions_keep_dtype_float32():
    x0, noise, lam = _batch(2)
    z = D.q_sample(x0.float(), lam.float(), noise.float())
    assert z.dtype == torch.float32
    assert D.to_x0(noise.float(), z, lam.float(), "eps").dtype == torch.float32


def test_loss_is_mse_on_the_target():
    x0, noise, lam = _batch(3)
    for p in D.PREDICTIONS:
        tgt = D.target(x0, noise, lam, p)
        assert D.loss(tgt, x0, noise, lam, p).item() == pytest.approx(0.0, abs=1e-12)
        off = tgt + 0.5
        assert D.loss(off, x0, noise, lam, p).item() == pytest.approx(0.25, rel=1e-6)


def test_unknown_names_are_user_errors():
    x0, noise, lam = _batch()
    with pytest.raises(UserError, match="eps, x0, v"):
        D.to_x0(x0, x0, lam, "score")
    with pytest.raises(UserError, match="cosine"):
        D.schedule("sigmoid")
