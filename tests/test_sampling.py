"""Samplers, guidance and thresholding (imagen.sampling), with stand-in denoisers and analytic posteriors."""

import math

import pytest
import torch

from imagen import diffusion as D
from imagen.errors import UserError
from imagen.sampling import (SAMPLERS, BatchNoise, dynamic_threshold, guided, log_snr_grid, parse_threshold,
                             static_threshold, thresholded)

SHAPE = (3, 8, 8)


# ----------------------------------------------------------------------------- stand-in models


class EpsModel(torch.nn.Module):
    """A small nonlinear eps-predictor whose output depends on the 'text' (dropped or not) and on log_snr."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.copy_(torch.randn(3, generator=g) * 0.1)
        self.text = torch.tensor([0.3, -0.2, 0.5]).reshape(1, 3, 1, 1)
        self.calls = 0

    def forward(self, z, log_snr, drop_text):
        self.calls += 1
        h = torch.tanh(self.conv(z) + torch.tanh(log_snr / 10).reshape(-1, 1, 1, 1))
        cond = (~drop_text).float().reshape(-1, 1, 1, 1) * self.text
        return h + cond * (1 + h**2)


def x0_model(eps_model):
    return lambda z, lam, drop: D.to_x0(eps_model(z, lam, drop), z, lam, "eps")


def toy_denoiser():
    eps = EpsModel()
    return thresholded(guided(x0_model(eps), 3.0), parse_threshold("dynamic:0.99"))


# ----------------------------------------------------------------------------- BatchNoise


def test_batch_noise_rows_depend_only_on_their_seed():
    a = BatchNoise([5, 6, 7]).randn(SHAPE)
    b = BatchNoise([7]).randn(SHAPE)
    assert a.shape == (3, *SHAPE)
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    assert torch.equal(BatchNoise([5, 6, 7]).randn(SHAPE), a)
    # successive draws continue each row's own stream
    n = BatchNoise([1, 2])
    first, second = n.randn(SHAPE), n.randn(SHAPE)
    g = torch.Generator().manual_seed(2)
    torch.testing.assert_close(first[1], torch.randn(SHAPE, generator=g), rtol=0, atol=0)
    torch.testing.assert_close(second[1], torch.randn(SHAPE, generator=g), rtol=0, atol=0)


# ----------------------------------------------------------------------------- guidance


def test_guidance_weight_one_is_the_conditional_prediction_without_uncond_half():
    eps = EpsModel()
    seen = []
    fn = x0_model(eps)

    def spy(z, lam, drop):
        seen.append(z.shape[0])
        return fn(z, lam, drop)

    z = torch.randn(4, *SHAPE)
    lam = torch.full((4,), 0.5)
    out = guided(spy, 1.0)(z, lam)
    ref = fn(z, lam, torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert seen == [4]  # no doubled batch when w == 1


@pytest.mark.parametrize("w", [0.0, 2.5, 7.0])
def test_guided_equals_eps_formula_from_two_separate_forwards(w):
    eps = EpsModel()
    z = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3))
    lam = torch.tensor([-2.0, 0.0, 3.0])
    out = guided(x0_model(eps), w)(z, lam)
    assert eps.calls == 1  # cond and uncond in ONE batched forward
    # by hand, two forwards, guidance on eps (paper 2.2): eps~ = w eps(z, c) + (1 - w) eps(z)
    e_c = eps(z, lam, torch.zeros(3, dtype=torch.bool))
    e_u = eps(z, lam, torch.ones(3, dtype=torch.bool))
    e = w * e_c + (1 - w) * e_u
    alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in D.alpha_sigma(lam.double()))
    ref = ((z.double() - sigma * e.double()) / alpha).float()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if w != 1:
        assert not torch.allclose(out, D.to_x0(e_c, z, lam, "eps"), atol=1e-3)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_model_called_once_per_step(name):
    eps = EpsModel()
    den = thresholded(guided(x0_model(eps), 4.0), static_threshold)
    x = BatchNoise([0, 1]).randn(SHAPE)
    SAMPLERS[name](den, x, log_snr_grid(7), BatchNoise([0, 1]))
    assert eps.calls == 7


# ----------------------------------------------------------------------------- thresholding


def test_static_threshold_is_clamp():
    x = torch.randn(4, *SHAPE) * 3
    assert torch.equal(static_threshold(x), torch.clamp(x, -1, 1))


def test_dynamic_threshold_leaves_in_range_samples_unchanged():
    x = torch.rand(3, *SHAPE) * 2 - 1
    assert torch.equal(dynamic_threshold(x, 0.995), x)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.995, 1.0])
def test_dynamic_threshold_maps_percentile_to_one(p):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, 16, 16, generator=g) * torch.tensor([0.2, 1.0, 3.0, 5.0, 10.0]).reshape(5, 1, 1, 1)
    y = dynamic_threshold(x, p)
    flat = x.abs().reshape(5, -1)
    s = torch.quantile(flat, p, dim=1).clamp(min=1.0)  # the reference quantile (linear interpolation)
    ref = torch.clamp(x, -s.reshape(-1, 1, 1, 1), s.reshape(-1, 1, 1, 1)) / s.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(y, ref)
    assert y.abs().max() <= 1 + 1e-6
    big = s > 1  # rows whose percentile exceeded 1: values at or above it land exactly on 1, the rest below
    assert bool(big[2:].all()) and not bool(big[0])  # the 0.2-scale row is left alone
    sat = x.abs().reshape(5, -1) >= s.reshape(-1, 1)
    assert torch.equal((y.abs().reshape(5, -1) == 1)[big], sat[big])
    # the fraction saturated is about 1 - p, as the paper's percentile means
    assert sat[big].float().mean().item() == pytest.approx(1 - p, abs=1.5 / flat.shape[1] + 1e-9)


@pytest.mark.parametrize("bad", ["dynamic:1.5", "dynamic:abc", "foo", "dynamic:0", "dynamic:", "dynamic:nan"])
def test_bad_threshold_strings_name_valid_forms(bad):
    with pytest.raises(UserError, match="none, static, or dynamic:P"):
        parse_threshold(bad)


def test_parse_threshold_forms():
    x = torch.randn(2, *SHAPE) * 4
    assert parse_threshold("none") is None
    assert torch.equal(parse_threshold("static")(x), static_threshold(x))
    assert torch.equal(parse_threshold("dynamic:0.9")(x), dynamic_threshold(x, 0.9))


def test_log_snr_grid():
    g = log_snr_grid(10)
    assert g.shape == (11,) and g.dtype == torch.float64
    assert math.isinf(g[-1]) and g[-1] > 0
    assert (g[1:] > g[:-1]).all()  # increasing SNR = decreasing noise
    assert g[0].item() == pytest.approx(D.LOG_SNR_MIN)
    with pytest.raises(UserError):
        log_snr_grid(0)


# ----------------------------------------------------------------------------- sampler contract (every sampler)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_deterministic_per_seed(name):
    seeds = [3, 1, 4]
    runs = []
    for _ in range(2):
        noise = BatchNoise(seeds)
        runs.append(SAMPLERS[name](toy_denoiser(), noise.randn(SHAPE), log_snr_grid(8), noise))
    assert torch.equal(runs[0], runs[1])
    assert torch.isfinite(runs[0]).all()
    assert runs[0].abs().max() <= 1 + 1e-5  # dynamic thresholding keeps x0 in range
    assert not torch.allclose(runs[0][0], runs[0][1])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_batch_size_independent(name):
    seeds = list(range(10, 18))
    noise = BatchNoise(seeds)
    batch = SAMPLERS[name](toy_denoiser(), noise.randn(SHAPE), log_snr_grid(8), noise)
    for i in (0, 5, 7):
        one = BatchNoise([seeds[i]])
        alone = SAMPLERS[name](toy_denoiser(), one.randn(SHAPE), log_snr_grid(8), one)
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_callback_sees_every_step(name):
    seen = []
    noise = BatchNoise([0])
    SAMPLERS[name](toy_denoiser(), noise.randn(SHAPE), log_snr_grid(5), noise, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(5))
    assert all(d["z"].shape == (1, *SHAPE) for d in seen)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_single_point_data_converges_to_it(name):
    """Data that is one point x*: the posterior mean is x* itself; every sampler must land on x*.

    The trajectory is checked too: z_t must stay on the forward process around x*, alpha_t x* + sigma_t eps with
    |eps| of order one, so a sampler with wrong coefficients (drifting or exploding z) fails.
    """
    x_star = torch.linspace(-0.8, 0.9, math.prod(SHAPE)).reshape(1, *SHAPE)
    seen = []
    den = lambda z, lam: x_star.expand_as(z).clone()  # noqa: E731
    noise = BatchNoise([0, 1, 2, 3])
    out = SAMPLERS[name](den, noise.randn(SHAPE), log_snr_grid(20), noise, callback=seen.append)
    torch.testing.assert_close(out, x_star.expand_as(out), rtol=0, atol=1e-5)
    grid = log_snr_grid(20)
    for d in seen[:-1]:
        lam_next = grid[d["i"] + 1]
        a, s = (v.item() for v in D.alpha_sigma(lam_next))
        implied_eps = (d["z"] - a * x_star) / s
        assert implied_eps.std().item() == pytest.approx(1.0, abs=0.35)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_gaussian_data_is_reproduced(name):
    """Data ~ N(mu, s^2) per pixel: with the exact posterior mean, samples must have mean mu and std s."""
    mu, s = 0.3, 0.5

    def posterior_mean(z, lam):
        a, sig = (v.reshape(-1, 1, 1, 1).to(z) for v in D.alpha_sigma(lam.double()))
        return mu + (a * s**2 / (a**2 * s**2 + sig**2)) * (z - a * mu)

    seeds = list(range(400))
    noise = BatchNoise(seeds)
    shape = (1, 4, 4)
    out = SAMPLERS[name](posterior_mean, noise.randn(shape), log_snr_grid(50), noise)
    assert out.mean().item() == pytest.approx(mu, abs=0.03)
    assert out.std().item() == pytest.approx(s, rel=0.06)


def test_ode_samplers_converge_to_the_exact_flow():
    """Gaussian data: the probability-flow ODE is known in closed form, z_t = alpha_t mu + sqrt(alpha_t^2 s^2 +
    sigma_t^2) xi with xi constant, so the exact image is mu + s xi. ddim (first order) must halve its error when
    the steps double; dpmpp-2m (second order multistep) must beat it clearly at the same number of steps."""
    mu, s = 0.3, 0.5

    def posterior_mean(z, lam):
        a, sig = (v.reshape(-1, 1, 1, 1).to(z) for v in D.alpha_sigma(lam.double()))
        return mu + (a * s**2 / (a**2 * s**2 + sig**2)) * (z - a * mu)

    x = BatchNoise(range(16)).randn((1, 2, 2), dtype=torch.float64)
    a1, s1 = (v.item() for v in D.alpha_sigma(log_snr_grid(1)[:1]))
    exact = mu + s * (x - a1 * mu) / math.sqrt(a1**2 * s**2 + s1**2)
    err = {}
    for name, steps in (("ddim", 8), ("dpmpp-2m", 8), ("ddim", 16)):
        out = SAMPLERS[name](posterior_mean, x, log_snr_grid(steps), BatchNoise([0]))
        err[name, steps] = (out - exact).abs().max().item()
    assert err["ddim", 8] / err["ddim", 16] == pytest.approx(2.0, rel=0.2)
    assert err["dpmpp-2m", 8] < 0.55 * err["ddim", 8]
