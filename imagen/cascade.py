"""The cascade (paper 2.4): a text-conditional base model, then super-resolution stages.

Each SR stage sees the previous stage's image upsampled to its own resolution and corrupted by Gaussian noise at an
augmentation level t_aug in [0, 1], which is itself a condition of the U-Net (noise-conditioning augmentation).
Training draws t_aug ~ U(0, noise_aug_max); sampling uses a fixed level per stage (SamplerConfig.aug_level).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from imagen import diffusion
from imagen.config import CascadeConfig, SamplerConfig, StageConfig, stage_values
from imagen.errors import UserError
from imagen.sampling import BatchNoise, get_sampler, guided, log_snr_grid, parse_threshold, thresholded

UPSAMPLE_MODE = "bilinear"  # how the low-res image is resized for an SR stage (antialiased; paper 2.4)


def stage_seed(seed: int, stage: int) -> int:
    """A 63-bit seed for (image seed, stage index): stages draw independent noise, reproducibly."""
    digest = hashlib.sha256(f"imagen-stage:{int(seed)}:{int(stage)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def resize(img: torch.Tensor, size: int, mode: str = UPSAMPLE_MODE) -> torch.Tensor:
    """Antialiased resize of img [B, C, h, w] to [B, C, size, size], clamped to [-1, 1] (bicubic overshoots)."""
    if img.shape[-1] == size and img.shape[-2] == size:
        return img
    out = F.interpolate(img.float(), size=(size, size), mode=mode, align_corners=False, antialias=True)
    return out.clamp(-1.0, 1.0).to(img.dtype)


def noise_augment(lowres: torch.Tensor, level, noise: torch.Tensor, schedule: str = "cosine") -> torch.Tensor:
    """Noise-conditioning augmentation (paper 2.4): q_sample(lowres, lambda(level), noise); level 0 is the identity.

    lowres, noise [B, C, H, W]; level a float or [B] tensor of t_aug in [0, 1].
    """
    level = torch.as_tensor(level, dtype=torch.float64, device=lowres.device)
    level = level.expand(lowres.shape[0]) if level.ndim == 0 else level
    z = diffusion.q_sample(lowres, diffusion.schedule(schedule)(level), noise)
    keep = (level == 0).reshape((-1,) + (1,) * (lowres.ndim - 1))
    return torch.where(keep, lowres, z)


@contextlib.contextmanager
def full_fp32(device: torch.device) -> Iterator[None]:
    """On CUDA, turn TF32 off for the duration (restored after): TF32 convolutions pick kernels by batch size, which
    moved an image by ~1e-3 between a batch of 8 and a batch of 1 on an H100 (9e-7 without TF32)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _default_unet(st: StageConfig) -> nn.Module:
    from imagen.unet import EfficientUNet

    return EfficientUNet(st.unet, null_text=st.null_text)


class Cascade(nn.Module):
    """One U-Net per stage (`unets[i]`), sampled in order from the base resolution up."""

    def __init__(self, cfg: CascadeConfig, make_unet: Callable[[StageConfig], nn.Module] | None = None):
        """make_unet(stage_config) -> nn.Module builds each stage's network (default: EfficientUNet)."""
        super().__init__()
        self.cfg = cfg
        make_unet = make_unet or _default_unet
        self.unets = nn.ModuleList([make_unet(st) for st in cfg.stages])
        self.precision = "fp32"  # of sampling; set_precision("bf16") for bf16 weights and autocast

    def set_precision(self, precision: str) -> "Cascade":
        """Sampling precision: "fp32", or "bf16" (weights stored in bf16, half the memory; the U-Nets run under bf16
        autocast, so normalisations and the sampler's arithmetic stay fp32)."""
        if precision not in ("fp32", "bf16"):
            raise UserError(f"precision must be fp32 or bf16, got {precision!r}")
        self.to(torch.bfloat16 if precision == "bf16" else torch.float32)
        self.precision = precision
        return self

    @property
    def resolution(self) -> int:
        return self.cfg.stages[-1].resolution

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # ------------------------------------------------------------------------- training

    def stage_loss(self, i: int, x0: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, *,
                   lowres: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   log_snr_shift: float = 0.0) -> torch.Tensor:
        """The diffusion loss of stage i on images x0 [B, 3, H, W] (in [-1, 1], at the stage's resolution).

        Draws t ~ U(0, 1) (the noise level is the stage's log-SNR schedule at t, plus `log_snr_shift`), the noise,
        the CFG text dropout (cond_drop_prob, paper 2.2) and, for an SR stage, the
        augmentation level t_aug ~ U(0, noise_aug_max) (paper 2.4). `lowres` is the conditioning image at the low
        resolution or already upsampled; None means x0 downsampled to the stage's lowres_resolution.
        """
        st: StageConfig = self.cfg.stages[i]
        b, dev = x0.shape[0], x0.device

        def rand(*shape):
            return torch.rand(*shape, generator=generator, device=_gen_device(generator)).to(dev)

        def randn(*shape):
            return torch.randn(*shape, generator=generator, device=_gen_device(generator)).to(dev, x0.dtype)

        t = rand(b).double()  # [B]
        log_snr = (diffusion.schedule(st.schedule)(t) + log_snr_shift).float()  # [B]
        noise = randn(*x0.shape)
        z = diffusion.q_sample(x0, log_snr, noise)
        drop = rand(b) < st.cond_drop_prob  # [B] bool: rows trained unconditionally
        kwargs = {}
        if st.is_sr:
            size = x0.shape[-1]  # the stage resolution, or a random crop of it (paper: the 1024 model)
            if lowres is None:
                lowres = resize(x0, size * st.lowres_resolution // st.resolution)
            up = resize(lowres, size)
            level = rand(b) * st.noise_aug_max  # [B]
            kwargs = dict(lowres=noise_augment(up, level, randn(*up.shape), st.schedule), aug_level=level)
        pred = self.unets[i](z, log_snr, text, text_mask, drop_text=drop, **kwargs)
        return diffusion.loss(pred, x0, noise, log_snr, st.prediction)

    # ------------------------------------------------------------------------- sampling

    def stage_model_fn(self, i: int, text: torch.Tensor, text_mask: torch.Tensor,
                       lowres: torch.Tensor | None = None, aug_level: torch.Tensor | None = None):
        """model_fn(z, log_snr, drop_text) -> x0 for stage i; the conditioning is repeated for a doubled batch."""
        st, unet, b = self.cfg.stages[i], self.unets[i], text.shape[0]

        def model_fn(z: torch.Tensor, log_snr: torch.Tensor, drop_text: torch.Tensor) -> torch.Tensor:
            rep = z.shape[0] // b  # 1, or 2 for guidance (cond rows then uncond rows)
            kwargs = {}
            if lowres is not None:
                kwargs = dict(lowres=lowres.repeat(rep, 1, 1, 1), aug_level=aug_level.repeat(rep))
            with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                pred = unet(z, log_snr.float(), text.repeat(rep, 1, 1), text_mask.repeat(rep, 1),
                            drop_text=drop_text, **kwargs)
            return diffusion.to_x0(pred.to(z.dtype), z, log_snr, st.prediction)

        return model_fn

    @torch.no_grad()
    def sample(self, text: torch.Tensor, text_mask: torch.Tensor, seeds: list[int], sampler: SamplerConfig,
               progress: bool = False, *, exact: bool = True, lowres: torch.Tensor | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] at the last stage's resolution for text [B, L, D], mask [B, L].

        `lowres` [B, 3, r, r] in [-1, 1] (r = the base's resolution) replaces the base stage's output: the SR stages
        upsample given images (an oracle low-res input: real renders instead of the base's samples).

        Stage k draws its noise from BatchNoise([stage_seed(seed, k)]): the initial z, then (SR stages) the
        augmentation noise, then the sampler's noise. `exact` (default) keeps float32 math on CUDA (no TF32) so
        an image does not depend on the batch it was made in; exact=False is faster on Ampere and later GPUs.
        """
        with full_fp32(self.device) if exact else contextlib.nullcontext():
            return self._sample(text, text_mask, seeds, sampler, progress, lowres)

    def _sample(self, text, text_mask, seeds, sampler, progress, given=None):
        stages = self.cfg.stages
        if len(seeds) != text.shape[0]:
            raise UserError(f"give one seed per prompt: {len(seeds)} seeds for {text.shape[0]} prompts")
        ws = sampler.per_stage(tuple(sampler.guidance), len(stages), "guidance")
        n_sr = len(stages) - 1
        augs = sampler.per_stage(tuple(sampler.aug_level), n_sr, "aug_level") if n_sr else ()
        if any(not 0.0 <= a <= 1.0 for a in augs):
            raise UserError(f"aug_level values must be in [0, 1], got {list(augs)}")
        sample_fns = [get_sampler(name) for name in stage_values(sampler.sampler, len(stages), "sampler")]
        threshold_fns = [parse_threshold(t) for t in stage_values(sampler.threshold, len(stages), "threshold")]
        dev = self.device
        text, text_mask = text.to(dev), text_mask.to(dev)
        img = None
        if given is not None:
            if (len(stages) < 2 or given.shape[0] != len(seeds)
                    or tuple(given.shape[1:]) != (3, stages[0].resolution, stages[0].resolution)):
                raise UserError(f"lowres images must be [{len(seeds)}, 3, {stages[0].resolution}, "
                                f"{stages[0].resolution}] for a cascade with SR stages, got {list(given.shape)} for "
                                f"{len(stages)} stage(s)")
            img = given.to(dev, torch.float32)
        for k, st in enumerate(stages):
            if k == 0 and given is not None:
                continue
            noise = BatchNoise([stage_seed(s, k) for s in seeds], dev)
            z = noise.randn((3, st.resolution, st.resolution))  # z_1 ~ N(0, I), [B, 3, H, W]
            lowres = aug = None
            if st.is_sr:
                up = resize(img, st.resolution)
                aug = torch.full((len(seeds),), float(augs[k - 1]), device=dev)
                lowres = noise_augment(up, aug, noise.randn(up.shape[1:]), st.schedule)
            model_fn = self.stage_model_fn(k, text, text_mask, lowres, aug)
            denoise = thresholded(guided(model_fn, ws[k]), threshold_fns[k])
            grid = log_snr_grid(sampler.steps, st.schedule)
            img = sample_fns[k](denoise, z, grid, noise, disable=not progress).clamp(-1.0, 1.0)
        return img


def _gen_device(generator: torch.Generator | None):
    return generator.device if generator is not None else None


__all__ = ["Cascade", "noise_augment", "resize", "stage_seed", "full_fp32", "UPSAMPLE_MODE"]
