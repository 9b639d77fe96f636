"""Prompts in, images out: the one entry point the CLI, the benchmark grid and the evaluators use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imagen.cascade import Cascade
from imagen.checkpoint import (build_untrained, checkpoint_hash, config_hash, load_cascade, resolve, sampler_defaults,
                               shipped_models)
from imagen.config import PRESETS, SamplerConfig, preset
from imagen.errors import UserError


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch.device; asking for CUDA on a machine without it is a UserError."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    return dev


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    x = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Pipeline:
    """A cascade, its text encoder (behind an embedding cache) and the identity of the weights."""

    model_id: str  # what the user named: a shipped name, a folder, or a preset
    checkpoint_hash: str  # sha256 of config + weights (untrained presets: of the config and the seed)
    cascade: Cascade
    encoder: object  # an EmbeddingCache (any object with encode(texts) -> (tokens, mask))
    # the settings to sample with where the caller gives none: the model folder's sampler.toml over SamplerConfig()
    sampler_defaults: SamplerConfig = field(default_factory=SamplerConfig)

    @property
    def resolution(self) -> int:
        return self.cascade.resolution

    @classmethod
    def load(cls, model: str, device: str | torch.device = "cpu", cache_root: str | os.PathLike | None = None,
             encoder=None, precision: str = "fp32", compile: bool = False) -> "Pipeline":
        """`model`: a checkpoint folder, a shipped name, or a preset name (untrained, weights from seed 0).

        `encoder` overrides the text encoder the config names (tests; an encoder already loaded). `precision`:
        fp32, bf16 (U-Net weights in bf16 under bf16 autocast; on a GPU the text encoder too), or auto (bf16 on a
        GPU, fp32 on a CPU). `compile`: each U-Net through torch.compile (on CUDA with CUDA graphs, mode
        "reduce-overhead"), for runs of one fixed shape; the first batch pays the compilation.
        """
        dev = resolve_device(device)
        if precision == "auto":
            precision = "bf16" if dev.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16"):
            raise UserError(f"--precision must be fp32, bf16 or auto, got {precision!r}")
        model = str(model)
        if Path(model).expanduser().is_dir() or model in shipped_models():
            folder = resolve(model)
            defaults = sampler_defaults(folder)  # a bad sampler.toml fails before the weights are read
            cascade = load_cascade(folder, dev)
            digest = checkpoint_hash(folder)
        elif model in PRESETS:
            cascade = build_untrained(preset(model)).to(dev)
            digest = config_hash(cascade.cfg)
            defaults = SamplerConfig()
        else:
            raise UserError(f"unknown model {model!r}: not a checkpoint folder, a shipped model "
                            f"({', '.join(shipped_models()) or 'none shipped'}) or a preset ({', '.join(PRESETS)})")
        cascade.set_precision(precision)
        if compile:
            for unet in cascade.unets:
                unet.compile(mode="reduce-overhead" if dev.type == "cuda" else None, dynamic=False)
        if encoder is None:
            from imagen.text import EmbeddingCache, load_text_encoder

            # T5-XXL at half the memory on a GPU; on a CPU the encoder runs once per prompt, in fp32
            dtype = torch.bfloat16 if precision == "bf16" and dev.type == "cuda" else None
            encoder = EmbeddingCache(load_text_encoder(cascade.cfg.text, dev, dtype), cache_root)
        return cls(model_id=model, checkpoint_hash=digest, cascade=cascade, encoder=encoder,
                   sampler_defaults=defaults)

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], sampler: SamplerConfig, batch_size: int = 8,
                 progress: bool = False, lowres: np.ndarray | None = None) -> np.ndarray:
        """uint8 [B, H, W, 3] images for prompts[i] with seeds[i]; each image is independent of its batch.

        `lowres` (uint8 [B, r, r, 3] at the base's resolution): the SR stages upsample these instead of the base's
        samples (Cascade.sample)."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not one string")
        if len(prompts) != len(seeds):
            raise UserError(f"give one seed per prompt: {len(seeds)} seeds for {len(prompts)} prompts")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        if lowres is not None:
            lowres = np.asarray(lowres)
            if lowres.dtype != np.uint8 or lowres.ndim != 4 or lowres.shape[-1] != 3:
                raise UserError(f"lowres must be uint8 RGB images [B, r, r, 3], got {lowres.dtype} {list(lowres.shape)}")
            if len(lowres) != len(prompts):
                raise UserError(f"give one low-res image per prompt: {len(lowres)} images for {len(prompts)} prompts")
        res = self.resolution
        if not prompts:
            return np.zeros((0, res, res, 3), dtype=np.uint8)
        out = []
        batches = range(0, len(prompts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="generate", unit="batch")
        for start in batches:
            chunk = list(prompts[start:start + batch_size])
            tokens, mask = self.encoder.encode(chunk)  # [b, L, D], [b, L]
            low = None
            if lowres is not None:
                low = torch.from_numpy(np.ascontiguousarray(lowres[start:start + batch_size])).permute(0, 3, 1, 2)
                low = low.float() / 127.5 - 1.0
            images = self.cascade.sample(tokens, mask, list(seeds[start:start + batch_size]), sampler, lowres=low)
            out.append(to_uint8(images))
        return np.concatenate(out)


__all__ = ["Pipeline", "resolve_device", "to_uint8"]
