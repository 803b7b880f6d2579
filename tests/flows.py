"""Flows whose velocities are known in closed form, for identity tests of samplers and objectives."""

from __future__ import annotations

import torch

from alphaflow.core.conventions import expand_time


class GaussianOracle:
    """The exact average velocity of the Gaussian data flow; call as net(z, r, t, labels)."""

    def __init__(self, mu: torch.Tensor, s: float):
        self.mu, self.s = mu, s
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((1 - t) ** 2 * self.s**2 + t**2)

    def flow(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r, t = expand_time(r, z), expand_time(t, z)
        return (1 - r) * self.mu + self.sigma(r) / self.sigma(t) * (z - (1 - t) * self.mu)

    def inst(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = expand_time(t, z)
        sig = self.sigma(t)
        dsig = (t - (1 - t) * self.s**2) / sig
        return -self.mu + dsig / sig * (z - (1 - t) * self.mu)

    def __call__(self, z, r, t, labels=None):
        self.calls.append((r, t, labels))
        same = expand_time(r == t, z).bool()
        gap = expand_time(t - r, z)
        avg = (z - self.flow(z, r, t)) / torch.where(same, torch.ones_like(gap), gap)
        return torch.where(same, self.inst(z, t), avg)
