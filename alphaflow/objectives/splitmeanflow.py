"""SplitMeanFlow (arXiv 2507.16884; docs/objectives.md#splitmeanflow): interval-splitting consistency, no JVP.

The average velocity is additive over intervals: for r ≤ s ≤ t,

    (t − r)·u(z_t, r, t) = (t − s)·u(z_t, s, t) + (s − r)·u(z_s, r, s),   z_s = z_t − (t − s)·u(z_t, s, t)

(z_s is the point the exact flow reaches from z_t at time s). With λ ~ U(0, 1) per row and s = (1 − λ)·t + λ·r,
t − s = λ(t − r) and s − r = (1 − λ)(t − r), so rows with r < t regress

    u₂ = sg u_θ(z_t, s, t),   z_s = z_t − (t − s)·u₂,   u₁ = sg u_θ(z_s, r, s),   u_tgt = λ·u₂ + (1 − λ)·u₁

and rows with r = t regress ṽ (flow matching, the boundary condition). Two no-grad forwards on the r < t rows
instead of a JVP. The noise sits at t = 1 here and the anchor u₂ is the later interval [s, t], where the step
from z_t starts; this follows from the identity in this convention, not from any reimplementation's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from alphaflow.core.amp import target_pass
from alphaflow.core.conventions import expand_time
from alphaflow.core.jvp import target_module
from alphaflow.objectives.base import (Net, Objective, Sample, Terms, keep_equal_time_rows, own_uniforms, pair_rows,
                                       put_rows, regression_components, row_count, take_rows)
from alphaflow.objectives.options import ObjectiveOptions
from alphaflow.core.schedules import ScheduleConfig


@dataclass
class SplitMeanFlowOptions(ObjectiveOptions):
    """SplitMeanFlow's defaults: the share of r = t rows (the boundary condition) and the plain MSE (p = 0). With
    the adaptive weight (p = 1) the consistency rows, whose error is tiny beside the boundary rows', are weighted
    up a thousandfold and training collapses to a trivial consistent solution; docs/objectives.md#splitmeanflow
    gives the measurements behind both defaults."""

    name: str = "splitmeanflow"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(0.5))
    adaptive_p: float = 0.0


def split_target(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None, lam: Tensor) -> Tensor:
    """λ·u₂ + (1 − λ)·u₁ (module docstring) for rows with r < t: z [n, ...], r, t, λ [n] → [n, ...] in z's dtype.

    The two passes run on ``target_module(net)`` under ``target_pass`` (no grad; autocast without its weight
    cache); bf16 outputs are taken to z's dtype before they are combined.
    """
    with target_pass():
        module = target_module(net)
        s = (1.0 - lam) * t + lam * r
        u2 = module(z, s, t, labels).to(z.dtype)
        z_s = z - expand_time(t - s, z) * u2
        u1 = module(z_s, r, s, labels).to(z.dtype)
        return expand_time(lam, u2) * u2 + expand_time(1.0 - lam, u1) * u1


class SplitMeanFlow(Objective):
    """The interval-splitting objective. Components: ``mse``, ``tfm``, ``tcc`` = 2⟨ṽ − sg u_tgt, u_θ⟩.

    λ is drawn with the sample (``draw``: ``sample.split``, from the caller's generator); a caller-given
    sample without it gets λ from a generator of its own with seed 0 (reproducible, and training's random
    streams are not touched: a probe leaves training unchanged).
    """

    name = "splitmeanflow"
    Options = SplitMeanFlowOptions

    def draw(self, x: Tensor, labels: Tensor | None = None, *, step: int = 0,
             generator: torch.Generator | None = None) -> Sample:
        sample = super().draw(x, labels, step=step, generator=generator)
        sample.split = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        return sample

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        t, r, labels = sample.t, sample.r, sample.labels
        z, v_tilde = self.guided(net, x, sample)
        lam = own_uniforms(sample, x)  # [B]; a caller's sample (the probes') gets a fixed stream
        target = v_tilde.detach().clone()
        rows = pair_rows(sample)  # a slice for a drawn sample: no host sync
        if row_count(rows, x.shape[0]):
            r_d, t_d = take_rows(r, rows), take_rows(t, rows)
            split = split_target(net, take_rows(z, rows), r_d, t_d, None if labels is None else take_rows(labels, rows),
                                 take_rows(lam, rows))
            # A min–max tie (r = t) among the rows keeps ṽ, as the r = t rows do (see pair_rows).
            put_rows(target, rows, keep_equal_time_rows(r_d, t_d, split.to(target.dtype), take_rows(target, rows)))
        pred = net(z, r, t, labels)
        parts = regression_components(pred, target, v_tilde)
        return Terms(loss=self.weighted(parts["mse"]), weight=self.loss_weight(parts["mse"]), components=parts,
                     pred=pred, target=target, sample=sample)
