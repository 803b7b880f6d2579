"""Few-step samplers for average-velocity networks (docs/conventions.md#samplers; arXiv 2510.20771 Algorithm 3, §4.2).

Time runs from noise (t = 1) to data (t = 0), see ``alphaflow.core.conventions``. A network
``net(z, r, t, labels) -> u`` predicts the average velocity over [r, t], so one jump is

    z_r = z_t − (t − r)·u(z_t, r, t).

Every ODE sampler here is the same loop over a decreasing time grid 1 = t_0 > … > t_N = 0
(``_integrate``): with r = t_{k+1} it is average-velocity ("trajectory") sampling, which is
exact for an exact network on any grid; with r = t_k it is plain Euler on the instantaneous
velocity v(z, t) = u(z, t, t), the flow-matching baseline. 1-NFE is the grid [1, 0], 2-NFE ODE
the grid [1, t_m, 0]. Consistency sampling instead re-noises the 1-NFE estimate to t_m.

Shapes: noise z_1 is [B, ...]; labels are [B] int64 or ``None``; times handed to the network
are [B] tensors with noise's dtype and device; every sampler returns x_0 of noise's shape.
No test-time guidance is applied: guidance is baked into the network
(docs/conventions.md#guidance-baked-into-training).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Net = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


# ----------------------------------------------------------------------------- time grids

def _check_t_mid(t_mid: float) -> None:
    if not 0.0 < t_mid < 1.0:
        raise ValueError(f"t_mid must lie strictly inside (0, 1), got {t_mid}")


def _check_times(times: Sequence[float]) -> list[float]:
    ts = [float(t) for t in times]
    if len(ts) < 2:
        raise ValueError(f"times needs at least two points [1, ..., 0], got {ts}")
    if ts[0] != 1.0 or ts[-1] != 0.0:
        raise ValueError(f"times must start at 1 (noise) and end at 0 (data), got {ts}")
    if any(not 0.0 <= t <= 1.0 for t in ts):
        raise ValueError(f"times must lie in [0, 1], got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"times must be strictly decreasing from 1 to 0, got {ts}")
    return ts


def time_grid(steps: int, t_mid: float | None = None) -> list[float]:
    """Uniform grid t_k = (N − k)/N, k = 0..N, from 1 (noise) to 0 (data) (docs/conventions.md#samplers).

    ``steps=2`` gives [1, 0.5, 0]; ``t_mid`` replaces the middle point and is only
    accepted for ``steps=2`` (e.g. [1, 0.55, 0], the XL/2 consistency setting).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = [(steps - k) / steps for k in range(steps + 1)]
    if t_mid is not None:
        if steps != 2:
            raise ValueError(f"t_mid only applies to steps=2 (a [1, t_mid, 0] grid), got steps={steps}")
        _check_t_mid(t_mid)
        grid[1] = float(t_mid)
    return grid


# ----------------------------------------------------------------------------- core loop

def _full(value: float, like: Tensor) -> Tensor:
    """A per-sample time tensor [B] with ``like``'s dtype and device."""
    return torch.full((like.shape[0],), value, dtype=like.dtype, device=like.device)


def _integrate(net: Net, z: Tensor, labels: Tensor | None, times: list[float], *, euler: bool) -> Tensor:
    """Walk the grid t_0 > … > t_N. Average velocity: u(z, t_{k+1}, t_k); Euler: u(z, t_k, t_k)."""
    for t, r in zip(times, times[1:]):
        u = net(z, _full(t if euler else r, z), _full(t, z), labels)
        z = z - (t - r) * u
    return z


# ----------------------------------------------------------------------------- samplers

@torch.no_grad()
def sample_average_velocity(
    net: Net, noise: Tensor, labels: Tensor | None = None, *,
    times: Sequence[float] | None = None, steps: int = 1,
) -> Tensor:
    """N-step average-velocity ("trajectory") sampling (docs/conventions.md#samplers).

        z_{t_{k+1}} = z_{t_k} − (t_k − t_{k+1})·u(z_{t_k}, r = t_{k+1}, t = t_k)

    on ``times`` (strictly decreasing, 1 → 0) or, if not given, the uniform ``time_grid(steps)``.
    If both are given, ``steps`` must be 1 (its default) or len(times) − 1.
    noise z_1: [B, ...]; labels: [B] or None; returns x_0: [B, ...].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if times is None:
        grid = time_grid(steps)
    else:
        grid = _check_times(times)
        if steps not in (1, len(grid) - 1):
            raise ValueError(f"steps={steps} disagrees with times, which has {len(grid) - 1} intervals")
    return _integrate(net, noise, labels, grid, euler=False)


@torch.no_grad()
def sample_one_step(net: Net, noise: Tensor, labels: Tensor | None = None) -> Tensor:
    """1-NFE: x = z_1 − u(z_1, r = 0, t = 1) (docs/conventions.md#samplers). noise: [B, ...] → x_0: [B, ...]."""
    return _integrate(net, noise, labels, [1.0, 0.0], euler=False)


@torch.no_grad()
def sample_two_step_ode(net: Net, noise: Tensor, labels: Tensor | None = None, t_mid: float = 0.5) -> Tensor:
    """2-NFE ODE sampling (docs/conventions.md#samplers), the average-velocity sampler on [1, t_m, 0]:

        z_{t_m} = z_1 − (1 − t_m)·u(z_1, t_m, 1);   x = z_{t_m} − t_m·u(z_{t_m}, 0, t_m).

    noise: [B, ...] → x_0: [B, ...].
    """
    return _integrate(net, noise, labels, time_grid(2, t_mid), euler=False)


@torch.no_grad()
def sample_two_step_consistency(
    net: Net, noise: Tensor, labels: Tensor | None = None, t_mid: float = 0.5, *,
    renoise: Tensor | None = None, generator: torch.Generator | None = None,
) -> Tensor:
    """2-NFE consistency sampling (docs/conventions.md#samplers):

        x̂ = z_1 − u(z_1, 0, 1);   z_{t_m} = (1 − t_m)·x̂ + t_m·ε′;   x = z_{t_m} − t_m·u(z_{t_m}, 0, t_m).

    ε′ is ``renoise`` ([B, ...], same shape as noise) or fresh N(0, I) drawn with ``generator``
    (which must live on noise's device). noise: [B, ...] → x_0: [B, ...].
    """
    _check_t_mid(t_mid)
    if renoise is None:
        renoise = torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device=noise.device)
    elif renoise.shape != noise.shape:
        raise ValueError(f"renoise must have noise's shape {tuple(noise.shape)}, got {tuple(renoise.shape)}")
    x_hat = _integrate(net, noise, labels, [1.0, 0.0], euler=False)
    z_mid = (1 - t_mid) * x_hat + t_mid * renoise.to(noise)
    return _integrate(net, z_mid, labels, [t_mid, 0.0], euler=False)


@torch.no_grad()
def sample_euler(net: Net, noise: Tensor, labels: Tensor | None = None, *, steps: int) -> Tensor:
    """Flow-matching baseline: N-step Euler on v(z, t) = u(z, r = t, t) over the uniform grid,

        z ← z − (t_k − t_{k+1})·u(z, t_k, t_k)      (first order; exact only as N → ∞).

    noise: [B, ...] → x_0: [B, ...].
    """
    return _integrate(net, noise, labels, time_grid(steps), euler=True)


# ----------------------------------------------------------------------------- dispatch

def _gen_ode(net: Net, noise: Tensor, labels: Tensor | None, nfe: int, t_mid: float,
             generator: torch.Generator | None) -> Tensor:
    if nfe == 1:
        return sample_one_step(net, noise, labels)
    if nfe == 2:
        return sample_two_step_ode(net, noise, labels, t_mid)
    return sample_average_velocity(net, noise, labels, steps=nfe)  # t_mid is a 2-NFE setting


def _gen_consistency(net: Net, noise: Tensor, labels: Tensor | None, nfe: int, t_mid: float,
                     generator: torch.Generator | None) -> Tensor:
    if nfe == 1:  # both samplers start with the same one-step jump
        return sample_one_step(net, noise, labels)
    if nfe != 2:
        raise ValueError(f"nfe must be 1 or 2 for the 'consistency' sampler, got nfe={nfe}")
    return sample_two_step_consistency(net, noise, labels, t_mid, generator=generator)


def _gen_euler(net: Net, noise: Tensor, labels: Tensor | None, nfe: int, t_mid: float,
               generator: torch.Generator | None) -> Tensor:
    return sample_euler(net, noise, labels, steps=nfe)


# name → fn(net, noise, labels, nfe, t_mid, generator); the names accepted by ``generate``.
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ode": _gen_ode,
    "consistency": _gen_consistency,
    "euler": _gen_euler,
}


def generate(
    net: Net, noise: Tensor, labels: Tensor | None = None, *,
    nfe: int, sampler: str = "ode", t_mid: float = 0.5, generator: torch.Generator | None = None,
) -> Tensor:
    """Sample x_0 [B, ...] from z_1 = ``noise`` [B, ...] with ``nfe`` network calls (docs/conventions.md#samplers).

    "ode": nfe = 1 → ``sample_one_step``; nfe = 2 → ``sample_two_step_ode`` at ``t_mid``;
    nfe > 2 → ``sample_average_velocity`` on the uniform grid (``t_mid`` unused).
    "consistency": nfe = 1 → ``sample_one_step``; nfe = 2 → ``sample_two_step_consistency`` (ε′ from ``generator``).
    "euler": ``sample_euler`` with ``steps = nfe`` (flow-matching baseline).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    return SAMPLERS[sampler](net, noise, labels, nfe, t_mid, generator)


def with_guidance(net: Callable[..., Tensor], omega: float, t_min: float = 0.0, t_max: float = 1.0) -> Net:
    """A guidance-conditioned network (``model.guidance_embed``, improved MeanFlow, docs/objectives.md#improved-meanflow)
    at a fixed scale ω and interval [t_min, t_max], as a ``net(z, r, t, labels)`` for the samplers here: every call
    passes guide = (ω, t_min, t_max) on each row, so one pass gives the guided average velocity."""
    if not omega >= 1.0:
        raise ValueError(f"omega (the guidance scale the network was trained on, in [1, omega_max]) must be >= 1, got {omega}")
    if not 0.0 <= t_min <= t_max <= 1.0:
        raise ValueError(f"the guidance interval needs 0 <= t_min <= t_max <= 1, got [{t_min}, {t_max}]")

    def guided(z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        guide = torch.tensor([omega, t_min, t_max], dtype=z.dtype, device=z.device).expand(z.shape[0], 3)
        return net(z, r, t, labels, guide=guide)

    return guided
