"""The conventions every layer shares: the time axis, the interpolant and the null label.

Time convention (docs/conventions.md#the-time-axis; MeanFlow and α-Flow agree). Stated here once, pinned by
``tests/test_conventions.py``:

    t ∈ [0, 1],   t = 0 is data,   t = 1 is noise
    z_t = (1 − t)·x + t·ε,          ε ~ N(0, I)
    v   = dz_t/dt = ε − x           (the conditional velocity points towards noise)

A network predicts the *average velocity* over [r, t], 0 ≤ r ≤ t ≤ 1,

    u(z_t, r, t) = 1/(t − r) · ∫_r^t v(z_τ, τ) dτ,     u(z_t, t, t) = v(z_t, t),

so one jump is z_r = z_t − (t − r)·u(z_t, r, t). Every network in the project is called as
``net(z, r, t, labels) -> u`` with z of shape [B, C, H, W], r and t of shape [B] and labels
of shape [B] (int64) or ``None``.

Labels: class indices in [0, num_classes); ``NULL_LABEL`` (−1) marks the unconditional
("∅") input of classifier-free guidance. ``labels=None`` means every row is null.
"""

from __future__ import annotations

import torch
from torch import Tensor

NULL_LABEL: int = -1


def expand_time(t: Tensor, like: Tensor) -> Tensor:
    """Reshape per-sample times [B] so they broadcast against ``like`` [B, ...]."""
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


def interpolate(x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """z_t = (1 − t)·x + t·ε.  x, ε: [B, ...]; t: [B]; returns [B, ...]."""
    tt = expand_time(t, x)
    return (1 - tt) * x + tt * eps


def velocity(x: Tensor, eps: Tensor) -> Tensor:
    """Conditional velocity v = dz_t/dt = ε − x, shape [B, ...]."""
    return eps - x


def check_times(t: Tensor, r: Tensor | None = None, *, batch: int | None = None) -> None:
    """Refuse times outside [0, 1], r > t, or a batch size that does not match.

    t, r: [B]. Raises ``ValueError`` naming the offending argument.
    """
    for name, val in (("t", t), ("r", r)):
        if val is None:
            continue
        if val.ndim != 1:
            raise ValueError(f"{name} must be a 1-D tensor of per-sample times [B], got shape {tuple(val.shape)}")
        if batch is not None and val.shape[0] != batch:
            raise ValueError(f"{name} has {val.shape[0]} rows but the batch has {batch}")
        if name == "r" and val.shape != t.shape:
            raise ValueError(f"r must have one time per row of t: r has shape {tuple(val.shape)}, t {tuple(t.shape)}")
        if val.numel() == 0:
            continue
        if not torch.isfinite(val).all():
            raise ValueError(f"{name} contains non-finite values")
        lo, hi = float(val.min()), float(val.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name} must lie in [0, 1] (t = 0 data, t = 1 noise), got values in [{lo:.4g}, {hi:.4g}]")
    if r is not None and (r > t).any():
        worst = float((r - t).max())
        raise ValueError(f"r must satisfy r <= t row by row (r is the end of the jump), but r exceeds t by up to {worst:.4g}")
