"""The cascade (imagen.cascade): noise-conditioning augmentation, stage_loss, and sampling through every stage."""

import pytest
import torch
from torch import nn

from imagen import diffusion as D
from imagen.cascade import Cascade, noise_augment, resize, stage_seed
from imagen.config import CascadeConfig, SamplerConfig, StageConfig, TextEncoderConfig, UNetConfig, preset
from imagen.errors import UserError
from imagen.sampling import BatchNoise

TEXT_DIM = 8


class FakeUNet(nn.Module):
    """The EfficientUNet forward signature on a few parameters; records what each call received."""

    def __init__(self, st: StageConfig):
        super().__init__()
        self.sr = st.is_sr
        self.conv = nn.Conv2d(6 if self.sr else 3, 3, 3, padding=1)
        self.text = nn.Linear(TEXT_DIM, 3)
        self.aug = nn.Linear(1, 3)
        self.calls = []

    def forward(self, x, log_snr, text, text_mask, *, drop_text=None, lowres=None, aug_level=None):
        self.calls.append(dict(b=x.shape[0], drop=drop_text, lowres=lowres, aug=aug_level, log_snr=log_snr))
        assert (lowres is not None) == self.sr and (aug_level is not None) == self.sr
        h = torch.cat([x, lowres], 1) if self.sr else x
        m = text_mask.float().unsqueeze(-1)
        pooled = (text * m).sum(1) / m.sum(1).clamp(min=1)  # [B, D]
        keep = (~drop_text).float().unsqueeze(-1) if drop_text is not None else 1.0
        cond = self.text(pooled) * keep  # [B, 3]
        if self.sr:
            cond = cond + self.aug(aug_level.float().unsqueeze(-1))
        return torch.tanh(self.conv(h)) + cond[:, :, None, None] + 0.1 * torch.tanh(log_snr)[:, None, None, None]


def small_cfg(n_sr=1) -> CascadeConfig:
    u = UNetConfig(dim=8, dim_mults=(1,), num_res_blocks=(1,), self_attn=(False,), cross_attn=(False,),
                   text_dim=TEXT_DIM)
    stages = [StageConfig("base", 8, u)]
    for k in range(n_sr):
        stages.append(StageConfig(f"sr{k}", 8 * 2 ** (k + 1), u, lowres_resolution=8 * 2**k, noise_aug_max=0.3))
    return CascadeConfig("toy", TextEncoderConfig(dim=TEXT_DIM), tuple(stages))


def text_batch(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, 5, TEXT_DIM, generator=g)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[:, 3:] = False
    return text, mask


# ----------------------------------------------------------------------------- augmentation


def test_noise_augment_level_zero_is_identity():
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x)
    assert torch.equal(noise_augment(x, 0.0, noise), x)
    assert torch.equal(noise_augment(x, torch.zeros(3), noise), x)


def test_noise_augment_is_q_sample_at_the_level_per_row():
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x)
    level = torch.tensor([0.0, 0.3, 0.9])
    out = noise_augment(x, level, noise, "cosine")
    assert torch.equal(out[0], x[0])
    for i in (1, 2):
        lam = D.cosine_log_snr(level[i:i + 1])
        a, s = (v.item() for v in D.alpha_sigma(lam))
        torch.testing.assert_close(out[i], a * x[i] + s * noise[i])
    assert (out[2] - x[2]).abs().mean() > (out[1] - x[1]).abs().mean()  # more level, more corruption


def test_resize_upsamples_smoothly():
    x = torch.zeros(1, 3, 4, 4)
    x[..., :, 2:] = 1.0
    up = resize(x, 16)
    assert up.shape == (1, 3, 16, 16)
    assert up.min() >= 0 and up.max() <= 1
    torch.testing.assert_close(up.mean(), x.mean(), atol=0.02, rtol=0)
    assert torch.equal(resize(x, 4), x)


def test_stage_seeds_are_distinct_and_stable():
    assert stage_seed(0, 0) == stage_seed(0, 0)
    assert len({stage_seed(s, k) for s in range(20) for k in range(3)}) == 60
    assert 0 <= stage_seed(2**40, 2) < 2**63


# ----------------------------------------------------------------------------- training loss


def test_stage_loss_draws_dropout_aug_and_is_reproducible():
    torch.manual_seed(0)
    cfg = small_cfg()
    cas = Cascade(cfg, make_unet=FakeUNet)
    text, mask = text_batch(64)
    x0 = torch.rand(64, 3, 16, 16) * 2 - 1
    l1 = cas.stage_loss(1, x0, text, mask, generator=torch.Generator().manual_seed(5))
    l2 = cas.stage_loss(1, x0, text, mask, generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(l1) and l1.ndim == 0
    assert l1.item() == l2.item()
    call = cas.unets[1].calls[0]
    assert call["lowres"].shape == (64, 3, 16, 16)
    assert call["aug"].min() >= 0 and call["aug"].max() <= 0.3 and call["aug"].std() > 0.05  # U(0, 0.3)
    frac = call["drop"].float().mean().item()
    assert 0.0 < frac < 0.3  # cond_drop_prob = 0.1
    l1.backward()
    assert cas.unets[1].conv.weight.grad is not None


@pytest.mark.parametrize("shift", [0.0, -4.0])
def test_stage_loss_equals_mse_on_eps_by_hand(shift):
    cfg = small_cfg(0)
    cas = Cascade(cfg, make_unet=FakeUNet)
    text, mask = text_batch(4)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    loss = cas.stage_loss(0, x0, text, mask, generator=torch.Generator().manual_seed(9), log_snr_shift=shift)
    # replay the same draws: t, noise, dropout from the same generator, in the same order
    g = torch.Generator().manual_seed(9)
    t = torch.rand(4, generator=g).double()
    lam = (D.cosine_log_snr(t) + shift).float()  # the training noise levels, shifted (TrainConfig.log_snr_shift)
    noise = torch.randn(x0.shape, generator=g)
    drop = torch.rand(4, generator=g) < 0.1
    with torch.no_grad():
        pred = cas.unets[0](D.q_sample(x0, lam, noise), lam, text, mask, drop_text=drop)
    assert loss.item() == pytest.approx(((pred - noise) ** 2).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- sampling


def test_sample_shapes_guidance_per_stage_and_aug_level():
    cfg = small_cfg(2)
    cas = Cascade(cfg, make_unet=FakeUNet)
    text, mask = text_batch(2)
    sc = SamplerConfig(sampler="ddim", steps=3, guidance=(1.0, 4.0, 2.0), threshold="static", aug_level=(0.0, 0.25))
    img = cas.sample(text, mask, [0, 1], sc)
    assert img.shape == (2, 3, 32, 32)
    assert img.min() >= -1 and img.max() <= 1 and torch.isfinite(img).all()
    base, sr1, sr2 = cas.unets
    assert [c["b"] for c in base.calls] == [2, 2, 2]  # w = 1: no unconditional half
    assert [c["b"] for c in sr1.calls] == [4, 4, 4]  # w = 4: cond + uncond in one batch
    assert sr1.calls[0]["drop"].tolist() == [False, False, True, True]
    assert torch.equal(sr1.calls[0]["aug"], torch.zeros(4))
    torch.testing.assert_close(sr2.calls[0]["aug"], torch.full((4,), 0.25))
    # the SR stage at level 0 sees the upsampled base image itself, identical in both halves
    lr = sr1.calls[0]["lowres"]
    assert torch.equal(lr[:2], lr[2:]) and lr.shape == (4, 3, 16, 16)


def test_sample_rejects_bad_settings():
    cas = Cascade(small_cfg(1), make_unet=FakeUNet)
    text, mask = text_batch(1)
    with pytest.raises(UserError, match="one value or one per stage"):
        cas.sample(text, mask, [0], SamplerConfig(steps=2, guidance=(1.0, 2.0, 3.0)))
    with pytest.raises(UserError, match="ddpm"):
        cas.sample(text, mask, [0], SamplerConfig(sampler="euler", steps=2))
    with pytest.raises(UserError, match="one seed per prompt"):
        cas.sample(text, mask, [0, 1], SamplerConfig(steps=2))
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        cas.sample(text, mask, [0], SamplerConfig(steps=2, aug_level=(1.5,)))


def _perturbed_tiny_cascade():
    """The tiny preset with the real EfficientUNet; the zero-initialised output convs get weights so the output
    depends on the network (an untrained U-Net predicts exactly zero)."""
    torch.manual_seed(0)
    cas = Cascade(preset("tiny")).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for unet in cas.unets:
            unet.conv_out.weight.copy_(torch.randn(unet.conv_out.weight.shape, generator=g) * 0.05)
    return cas


def test_tiny_preset_batch_independent_and_deterministic():
    cas = _perturbed_tiny_cascade()
    g = torch.Generator().manual_seed(2)
    text = torch.randn(3, 4, 384, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    sc = SamplerConfig(sampler="dpmpp-2m", steps=2, guidance=(3.0, 2.0), threshold="dynamic:0.99", aug_level=(0.1,))
    batch = cas.sample(text, mask, [10, 11, 12], sc)
    assert batch.shape == (3, 3, 64, 64)
    again = cas.sample(text, mask, [10, 11, 12], sc)
    assert torch.equal(batch, again)
    alone = cas.sample(text[1:2, :2], mask[1:2, :2], [11], sc)  # alone, and padded to its own length
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-4)
    assert (batch[0] - batch[2]).abs().mean() > 1e-3


def test_stage_noise_differs_between_stages():
    a = BatchNoise([stage_seed(3, 0)]).randn((3, 4, 4))
    b = BatchNoise([stage_seed(3, 1)]).randn((3, 4, 4))
    assert not torch.allclose(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_is_batch_independent_and_restores_tf32():
    cas = _perturbed_tiny_cascade().to("cuda")
    g = torch.Generator().manual_seed(2)
    text = torch.randn(8, 6, 384, generator=g)
    mask = torch.ones(8, 6, dtype=torch.bool)
    mask[4:, 3:] = False
    sc = SamplerConfig(sampler="ddpm", steps=10, guidance=(4.0, 2.0), threshold="dynamic:0.995", aug_level=(0.1,))
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    batch = cas.sample(text, mask, list(range(8)), sc)
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == flags
    assert torch.equal(batch, cas.sample(text, mask, list(range(8)), sc))
    alone = cas.sample(text[5:6, :3], mask[5:6, :3], [5], sc)
    torch.testing.assert_close(batch[5:6], alone, rtol=0, atol=1e-4)
    on_cpu = _perturbed_tiny_cascade().sample(text[:1], mask[:1], [0], sc)
    torch.testing.assert_close(batch[:1].cpu(), on_cpu, rtol=0, atol=1e-3)  # same noise: drawn on the CPU
