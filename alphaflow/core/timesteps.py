"""Time samplers and the (r, t) pairing rule (docs/conventions.md#time-sampling).

Both MeanFlow and α-Flow draw t from a logit-normal, t = σ(N(μ, σ²)) with μ = −0.4, σ = 1.
A batch of B rows is split deterministically: the first ⌊B·ratio_fm⌋ rows get r = t (the
flow-matching rows); each remaining row draws two independent times a, b and sets
t = max(a, b), r = min(a, b) (the "min–max" rule). How the r = t rows draw their t is ``fm_time``:
one draw (α-Flow's official code, the default) or the max of a pair (MeanFlow's official JAX code).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import TypedDict

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogitNormal:
    """t = sigmoid(μ + σ·n), n ~ N(0, 1). Returns [n] in (0, 1)."""

    mu: float = -0.4
    sigma: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu) and math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"logit-normal needs a finite mu and sigma > 0, got mu={self.mu}, sigma={self.sigma}")

    def __call__(self, n: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        normal = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(self.mu + self.sigma * normal)


@dataclass(frozen=True)
class Uniform:
    """t ~ U(low, high) with 0 ≤ low < high ≤ 1. Returns [n]."""

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"uniform time sampler needs 0 <= low < high <= 1, got low={self.low}, high={self.high}")

    def __call__(self, n: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        u = torch.rand(n, generator=generator, device=device, dtype=dtype)
        return self.low + (self.high - self.low) * u


TimeSampler = LogitNormal | Uniform

TIME_SAMPLERS: dict[str, type[LogitNormal] | type[Uniform]] = {"logit_normal": LogitNormal, "uniform": Uniform}


def build_time_sampler(name: str, **kwargs: float) -> TimeSampler:
    """``build_time_sampler("logit_normal", mu=-0.4, sigma=1.0)``; unknown names are refused."""
    if name not in TIME_SAMPLERS:
        near = difflib.get_close_matches(name, TIME_SAMPLERS, n=2)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"unknown time sampler {name!r}{hint}; expected one of {sorted(TIME_SAMPLERS)}")
    return TIME_SAMPLERS[name](**kwargs)


# How the r = t rows draw t (``sample_time_pairs``): "single" (α-Flow's official code), "max_of_pair" (MeanFlow's JAX).
FM_TIMES = ("single", "max_of_pair")


class _DrawOptions(TypedDict):
    """The keyword arguments of a ``TimeSampler`` call."""

    generator: torch.Generator | None
    device: torch.device | str | None
    dtype: torch.dtype


@dataclass
class TimeConfig:
    """The time sampler as a config section: logit-normal(mu, sigma), or uniform(low, high); ``fm_time`` is how
    the r = t rows draw their t (``FM_TIMES``, see ``sample_time_pairs``)."""

    name: str = "logit_normal"
    mu: float = -0.4
    sigma: float = 1.0
    low: float = 0.0
    high: float = 1.0
    fm_time: str = "single"

    def build(self) -> TimeSampler:
        """The sampler this section names; an unknown name, bad parameters or ``fm_time`` raise ``ValueError``."""
        check_fm_time(self.fm_time)
        if self.name == "logit_normal":
            return build_time_sampler(self.name, mu=self.mu, sigma=self.sigma)
        return build_time_sampler(self.name, low=self.low, high=self.high)


def num_fm_rows(batch: int, ratio_fm: float) -> int:
    """⌊B·ratio_fm⌋, robust to float round-off (0.29·100 gives 29, not 28)."""
    if not 0.0 <= ratio_fm <= 1.0:
        raise ValueError(f"ratio_fm must lie in [0, 1], got {ratio_fm}")
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    return min(batch, math.floor(batch * ratio_fm + 1e-9))


def check_fm_time(fm_time: str) -> None:
    """Refuse an ``fm_time`` outside ``FM_TIMES``, naming its config key."""
    if fm_time not in FM_TIMES:
        raise ValueError(f"objective.time.fm_time (how the r = t rows draw t) must be one of {list(FM_TIMES)}, "
                         f"got {fm_time!r}")


def sample_time_pairs(batch: int, ratio_fm: float, sampler: TimeSampler, *, fm_time: str = "single",
                      generator: torch.Generator | None = None, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Draw (t, r), each [B], with r = t on the first n_fm = ⌊B·ratio_fm⌋ rows and min–max pairs elsewhere.

    fm_time "single" (α-Flow's official ``sample_traj_params``): the r = t rows draw one time each, t ~ p, then
    the B − n_fm other rows two times a, b ~ p each, t = max(a, b), r = min(a, b).
    fm_time "max_of_pair" (MeanFlow's official JAX ``sample_tr``, also iMF's): every row draws a, b ~ p, t = max(a, b),
    r = min(a, b), then r := t on the first n_fm rows; their t then has the law of the max of two draws,
    P(t ≤ τ) = F(τ)² (shifted towards the noise), while the r < t rows are the same min–max pairs.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    check_fm_time(fm_time)
    n_fm = num_fm_rows(batch, ratio_fm)
    n_pair = batch - n_fm
    kw = _DrawOptions(generator=generator, device=device, dtype=dtype)
    if fm_time == "max_of_pair":
        a, b = sampler(batch, **kw), sampler(batch, **kw)
        t = torch.maximum(a, b)
        return t, torch.cat([t[:n_fm], torch.minimum(a, b)[n_fm:]])
    t_fm = sampler(n_fm, **kw)
    a, b = sampler(n_pair, **kw), sampler(n_pair, **kw)
    t = torch.cat([t_fm, torch.maximum(a, b)])
    r = torch.cat([t_fm, torch.minimum(a, b)])
    return t, r
