"""The Shortcut model (Frans et al. 2025) in average-velocity form (SPEC §3.2, Theorem 1).

Rows with r = t regress ṽ (flow matching). Rows with r < t match two half jumps of the
model itself, s = (t + r)/2:

    u₁ = sg(u_θ(z_t, s, t)),   z_s = z_t − (t − s)·u₁,   u₂ = sg(u_θ(z_s, r, s))
    L_SC = E ‖u_θ(z_t, r, t) − (u₁ + u₂)/2‖²

Theorem 1: L_SC = ½·L_{1/2}, α-Flow at α = ½ with the shift velocity ṽ_{s,t} = u₁.
Plain MSE by default (adaptive_p = 0), as in the Shortcut paper; 75 % r = t rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alphaflow.conventions import expand_time
from alphaflow.jvp import unwrap
from alphaflow.objectives.base import Net, Objective, Sample, Terms, regression_components


class Shortcut(Objective):
    """Self-consistency over halved jumps. Components: ``mse``, ``tfm``, ``tcc``."""

    name = "shortcut"
    default_ratio_fm = 0.75

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("adaptive_p", 0.0)
        super().__init__(**kwargs)

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        t, r, labels = sample.t, sample.r, sample.labels
        z, v_tilde = self.guided(net, x, sample)
        target = v_tilde.detach().clone()
        rows = r < t
        if bool(rows.any()):
            target[rows] = self.two_half_jumps(net, z[rows], r[rows], t[rows], None if labels is None else labels[rows])
        pred = net(z, r, t, labels)
        parts = regression_components(pred, target, v_tilde)
        return Terms(loss=self.weighted(parts["mse"]), components=parts, pred=pred, target=target,
                     sample=sample, logs={"alpha": 0.5})

    @staticmethod
    @torch.no_grad()
    def two_half_jumps(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """(u₁ + u₂)/2 for rows with r < t; z: [n, ...], r, t: [n]."""
        module = unwrap(net)
        s = (t + r) / 2
        u1 = module(z, s, t, labels)
        z_s = z - expand_time(t - s, z) * u1
        u2 = module(z_s, r, s, labels)
        return (u1 + u2) / 2
