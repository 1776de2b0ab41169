"""Exponential moving average of weights with a warm-up, so short runs get a useful EMA."""

from __future__ import annotations

import copy

import torch

MAX_DECAY = 0.999  # DifFace's EMA rate; the cap of every bfr training run but the adapter's own knob


class EMA:
    """Keeps ``self.model``, an averaged copy of a network.

    The decay ramps up as 1 − (1 + step)^(−power) (capped at ``max_decay``): about 0.99 after
    1k steps and 0.999 (DifFace's rate, the default cap) after 30k, so the average never lags a
    short run by more than a few hundred steps (the warm-up used by diffusers' EMAModel).
    """

    def __init__(self, model: torch.nn.Module, max_decay: float = MAX_DECAY, power: float = 2 / 3):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay
        self.power = power

    def decay(self, step: int) -> float:
        return min(self.max_decay, 1 - (1 + step) ** -self.power)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = self.decay(step)
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            if p.requires_grad:  # frozen weights (e.g. FLIPNET's prior) equal their copy: skip them
                ema_p.lerp_(p.detach().to(ema_p.dtype), 1 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
