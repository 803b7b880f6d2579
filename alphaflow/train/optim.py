"""Optimisation helpers: Adam, linear warm-up, gradient hygiene and the EMA
(docs/conventions.md#optimiser-ema-and-precision)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def build_optimizer(params: Iterable[nn.Parameter], *, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float, fused: bool | None = None) -> torch.optim.Optimizer:
    """Adam (not AdamW), β = (0.9, 0.95) in the paper.

    ``fused`` (None: when the parameters are on CUDA): one fused kernel for the whole update instead of the
    foreach form's several passes over weights, gradients and both moments (the update is bandwidth-bound:
    15–20 % of a DiT-B/2 step at 32 per GPU in foreach form). The CPU keeps the foreach form, whose results
    the CPU tests pin; ``alphaflow plan`` and the census ask for the fused one, as a GPU run has.
    """
    params = list(params)
    if fused is None:
        fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                            **({"fused": True} if fused else {}))


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The learning-rate factor at ``step`` (from 0) of a linear warm-up over W = ``warmup_steps``:

        f(k) = s + (1 − s)·min(k, W)/W,   s = 1/W

    so the first step runs at lr/W and step W on at lr (the official scheduler: ``torch.optim.lr_scheduler.LinearLR``
    with ``start_factor=1/W`` over W steps, then constant). W = 0: no warm-up, f = 1.
    """
    if warmup_steps <= 0:
        return 1.0
    start = 1.0 / warmup_steps
    return start + (1.0 - start) * min(step, warmup_steps) / warmup_steps


@torch.no_grad()
def gradient_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """‖g‖₂ over every gradient as one vector: a 0-d tensor on the gradients' device, fused kernels, no host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    return torch.nn.utils.get_total_norm(grads)


@torch.no_grad()
def sanitize_and_clip(params: list[nn.Parameter], max_norm: float | None, *, norm: torch.Tensor | None = None,
                      finite: bool | None = None) -> torch.Tensor:
    """Replace NaN by 0 and ±inf by ±1e5 in every gradient (the official ``grad_nan_to_num``), then clip
    the global norm to ``max_norm`` (None: no clipping). Returns the norm before clipping.

    The trainer passes ``norm`` (``gradient_norm``, computed before its one per-step host sync) and
    ``finite`` (whether that norm was finite on every rank): finite gradients need no replacement, so
    the per-tensor ``nan_to_num`` pass (one kernel per parameter: there is no fused form) runs only on
    the rare step that needs it, and clipping reuses the norm. Without them, both are computed here.
    The result is the same either way: ``nan_to_num`` leaves finite values unchanged.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if norm is None or not finite:
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=1e5, neginf=-1e5)
        norm = gradient_norm(params)
    if max_norm is not None and grads:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


class EMA:
    """Exponential moving average with a half-life in steps and a ramp-up (EDM's form, arXiv 2206.00364;
    docs/conventions.md#optimiser-ema-and-precision).

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
        # one fused lerp over all parameters (a kernel per tensor on the CPU, a few on CUDA); same arithmetic
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1.0 - beta)
        for dst, src in zip(self.model.buffers(), model.buffers()):
            if dst.dtype.is_floating_point:
                dst.lerp_(src, 1.0 - beta)
            else:
                dst.copy_(src)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)
