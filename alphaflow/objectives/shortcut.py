"""The Shortcut model (Frans et al. 2025) in average-velocity form (arXiv 2410.12557;
Theorem 1 of arXiv 2510.20771, docs/objectives.md#special-cases-theorem-1).

Rows with r = t regress ṽ (flow matching). Rows with r < t match two half jumps of the
model itself, s = (t + r)/2:

    u₁ = sg(u_θ(z_t, s, t)),   z_s = z_t − (t − s)·u₁,   u₂ = sg(u_θ(z_s, r, s))
    L_SC = E ‖u_θ(z_t, r, t) − (u₁ + u₂)/2‖²

Theorem 1: L_SC = ½·L_{1/2}, α-Flow at α = ½ with the shift velocity ṽ_{s,t} = u₁.
Plain MSE by default (adaptive_p = 0), as in the Shortcut paper; 75 % r = t rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from alphaflow.core.amp import target_pass
from alphaflow.core.conventions import expand_time
from alphaflow.core.jvp import target_module
from alphaflow.objectives.base import (Net, Objective, Sample, Terms, keep_equal_time_rows, pair_rows, put_rows,
                                       regression_components, row_count, take_rows)
from alphaflow.objectives.options import ObjectiveOptions
from alphaflow.core.schedules import ScheduleConfig


@dataclass
class ShortcutOptions(ObjectiveOptions):
    """The Shortcut model's defaults (arXiv 2410.12557): 75 % of rows at r = t, the plain MSE (p = 0)."""

    name: str = "shortcut"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(0.75))
    adaptive_p: float = 0.0


class Shortcut(Objective):
    """Self-consistency over halved jumps. Components: ``mse``, ``tfm``, ``tcc``."""

    name = "shortcut"
    Options = ShortcutOptions

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        t, r, labels = sample.t, sample.r, sample.labels
        z, v_tilde = self.guided(net, x, sample)
        target = v_tilde.detach().clone()
        rows = pair_rows(sample)  # a slice for a drawn sample: no host sync, no mask gather
        if row_count(rows, x.shape[0]):
            r_d, t_d = take_rows(r, rows), take_rows(t, rows)
            jumps = self.two_half_jumps(net, take_rows(z, rows), r_d, t_d,
                                        None if labels is None else take_rows(labels, rows))
            # A min–max tie (r = t) among the rows keeps ṽ, as the r = t rows do (see pair_rows).
            put_rows(target, rows, keep_equal_time_rows(r_d, t_d, jumps.to(target.dtype), take_rows(target, rows)))
        pred = net(z, r, t, labels)
        parts = regression_components(pred, target, v_tilde)
        return Terms(loss=self.weighted(parts["mse"]), weight=self.loss_weight(parts["mse"]), components=parts,
                     pred=pred, target=target, sample=sample, logs={"alpha": 0.5})

    @staticmethod
    def two_half_jumps(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """(u₁ + u₂)/2 for rows with r < t; z: [n, ...], r, t: [n] → [n, ...] in z's dtype.

        Under autocast the network returns bf16; u₁, u₂ are taken to z's dtype (the fp32 activations)
        before the shift and the mean, so the target is not rounded to bf16 and it can be written into
        the fp32 target (an index put refuses mismatched dtypes). The passes run under ``target_pass``
        (no grad, autocast without its weight cache: ``alphaflow.core.amp``).
        """
        with target_pass():
            module = target_module(net)
            s = (t + r) / 2
            u1 = module(z, s, t, labels).to(z.dtype)
            z_s = z - expand_time(t - s, z) * u1
            u2 = module(z_s, r, s, labels).to(z.dtype)
            return (u1 + u2) / 2
