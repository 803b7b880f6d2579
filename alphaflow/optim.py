"""Optimisation helpers (SPEC §6.3): Adam, linear warm-up, gradient hygiene and the EMA."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def build_optimizer(params, *, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """Adam (not AdamW), β = (0.9, 0.95) in the paper."""
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up of the learning rate: min(1, (step + 1)/warmup_steps); 1 without warm-up."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


@torch.no_grad()
def sanitize_and_clip(params: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Replace NaN by 0 and ±inf by ±1e5 in every gradient (the official ``grad_nan_to_num``), then clip
    the global norm to ``max_norm`` (None: no clipping). Returns the norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    for g in grads:
        torch.nan_to_num_(g, nan=0.0, posinf=1e5, neginf=-1e5)
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)


class EMA:
    """Exponential moving average with a half-life in steps and a ramp-up (SPEC §6.3, EDM's form).

    At step k (updates done so far) the half-life is h_k = min(H, ramp·k) (H without a ramp) and
    β_k = 0.5^(1/h_k); every floating parameter and buffer moves as ema ← β·ema + (1 − β)·θ.
    """

    def __init__(self, model: nn.Module, halflife_steps: float, rampup_ratio: float | None) -> None:
        if halflife_steps <= 0:
            raise ValueError(f"ema.halflife_steps must be > 0, got {halflife_steps}")
        self.halflife, self.rampup = float(halflife_steps), rampup_ratio
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, step: int) -> float:
        h = self.halflife if self.rampup is None else min(self.halflife, self.rampup * step)
        return 0.5 ** (1.0 / h) if h > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        beta = self.beta(step)
        for dst, src in zip(self.model.parameters(), model.parameters()):
            dst.lerp_(src.detach(), 1.0 - beta)
        for dst, src in zip(self.model.buffers(), model.buffers()):
            if dst.dtype.is_floating_point:
                dst.lerp_(src, 1.0 - beta)
            else:
                dst.copy_(src)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
