"""Exponential moving average of a module's weights (sampling uses the EMA weights, as in the paper's training)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: int) -> float:
    """The decay used at optimiser step `step` (1-based).

    With warm-up, min(decay, (1 + step) / (warmup + step)): early steps average over a short window so the EMA
    does not stay stuck near the random initial weights in short runs; warmup = 0 keeps `decay` constant.
    """
    if warmup <= 0:
        return decay
    return min(decay, (1.0 + step) / (warmup + step))


class EMA:
    """A frozen copy of `model` whose parameters follow ema = d * ema + (1 - d) * param after each step.

    Buffers are copied as they are. `state_dict()` is the averaged module's state dict (what checkpoints store).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        d = ema_decay(step, self.decay, self.warmup)
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        if ema_p:
            # ema <- ema + (1 - d) * (param - ema), in the EMA's dtype (float32 master copy)
            torch._foreach_lerp_(ema_p, [s.to(e.dtype) for s, e in zip(src_p, ema_p)], 1.0 - d)
        for eb, sb in zip(self.module.buffers(), model.buffers()):
            eb.copy_(sb)
        return d

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
