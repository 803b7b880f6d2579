"""A learned log-variance per (r, t): the uncertainty weighting of Decoupled MeanFlow's loss (arXiv 2510.24474;
in the spirit of EDM2's, arXiv 2312.02696), ℓ = log(e^(−lv)·mse + c) + lv.

lv(r, t) = w·[sinusoid(t), sinusoid(r)] + b, with 128-dimensional [cos, sin] sinusoids (max period 10000) of the
raw times and a zero-initialised Linear(256 → 1), so lv = 0 at the start and a network gains the head without its
outputs changing. It is part of the network (trained, averaged by the EMA, checkpointed), never used to sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def timestep_phases(t: Tensor, dim: int, time_scale: float = 1.0) -> Tensor:
    """a = time_scale·t·10000^(−k/half), k < half = dim/2: [B] → [B, half], in at least fp32 (float64 stays
    float64). Linear in t. The DiT's timestep embedder takes its sinusoid from here too."""
    half = dim // 2
    dtype = torch.promote_types(t.dtype, torch.float32)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=dtype, device=t.device) / half)
    return (time_scale * t.to(dtype))[:, None] * freqs[None]


def sinusoid(t: Tensor, dim: int, time_scale: float = 1.0) -> Tensor:
    """[cos(a), sin(a)] of ``timestep_phases``: [B] → [B, dim]."""
    args = timestep_phases(t, dim, time_scale)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class LogVarianceHead(nn.Module):
    """lv(r, t): [B], [B] → [B] (module docstring)."""

    def __init__(self, freq_dim: int = 128, time_scale: float = 1.0) -> None:
        super().__init__()
        self.freq_dim, self.time_scale = freq_dim, time_scale
        self.linear = nn.Linear(2 * freq_dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, r: Tensor, t: Tensor) -> Tensor:
        feats = torch.cat([sinusoid(t, self.freq_dim, self.time_scale), sinusoid(r, self.freq_dim, self.time_scale)], 1)
        return self.linear(feats.to(self.linear.weight.dtype)).squeeze(1)
