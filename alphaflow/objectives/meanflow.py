"""MeanFlow (arXiv 2505.13447; docs/objectives.md#the-meanflow-objective): regress the stop-gradient MeanFlow target.

    u_tgt = ṽ − (t − r)·sg(du/dt),   du/dt = ∂_z u·ṽ + ∂_t u   (JVP along (ṽ, 0, 1))
    L_MF  = E ‖u_θ(z_t, r, t) − u_tgt‖²,   weighted per sample by 1/(sg(‖Δ‖²) + c)^p

On r = t rows u_tgt = ṽ (flow matching); du/dt is needed only on the r < t rows. The prediction
and du/dt come from ``alphaflow.core.jvp.prediction_and_dudt``: one forward with the JVP riding along
where the model has a tangent mode (the DiT), else a no-grad JVP then an ordinary forward. The size
of du/dt per r < t row goes to ``Terms.logs["dudt_rms"]`` (``alphaflow.core.jvp.dudt_rms``; docs/spikes.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from alphaflow.core.conventions import expand_time
from alphaflow.core.jvp import average_velocity_jvp, dudt_rms, prediction_and_dudt
from alphaflow.objectives.base import (Net, Objective, Rows, Sample, Terms, keep_equal_time_rows, pair_rows, put_rows,
                                       regression_components, row_count, take_rows)
from alphaflow.objectives.options import ObjectiveOptions
from alphaflow.core.schedules import ScheduleConfig


def target_from_dudt(v_tilde: Tensor, r: Tensor, t: Tensor, rows: Rows, dudt: Tensor) -> Tensor:
    """u_tgt [B, ...]: ṽ everywhere, ṽ − (t − r)·du/dt on ``rows`` ([P] int64 or a slice), with dudt [P, ...].

    Computed in at least fp32 (dudt's dtype), stored in ṽ's dtype; detached. A row of ``rows`` with r = t
    (a min–max tie, see ``pair_rows``) has gap 0, so its target is ṽ − 0·du/dt = ṽ already; the select
    keeps it exactly ṽ even if that row's du/dt overflowed (0·inf = nan).
    """
    target = v_tilde.detach().clone()
    if dudt.shape[0]:
        r_p, t_p = take_rows(r, rows), take_rows(t, rows)
        gap = (t_p - r_p).to(dudt.dtype)
        rows_v = take_rows(v_tilde.detach(), rows).to(dudt.dtype)
        put_rows(target, rows, keep_equal_time_rows(r_p, t_p, rows_v - expand_time(gap, dudt) * dudt, rows_v))
    return target


def meanflow_prediction(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None,
                        v_tilde: Tensor, rows: Rows | None = None, *,
                        logs: dict[str, Tensor | float] | None = None) -> tuple[Tensor, Tensor]:
    """(u_θ(z, r, t) with grad, sg(u_tgt)), both [B, ...]; du/dt runs on the r < t rows only.

    rows: the r < t rows as ``pair_rows`` gives them (a slice for a drawn sample: no host sync); None
    finds them by one ``nonzero`` (one host sync). The prediction goes through ``net`` (DDP sees one forward).
    logs: an objective's ``Terms.logs``; where given and there are r < t rows, ``logs["dudt_rms"]`` receives
    the per-row size of du/dt ([B], NaN on the r = t rows: ``alphaflow.core.jvp.dudt_rms``).
    """
    if rows is None:
        rows = (r < t).nonzero().squeeze(1)  # [P]
    pred, dudt = prediction_and_dudt(net, z, r, t, labels, take_rows(v_tilde.detach(), rows), rows)
    if logs is not None and row_count(rows, z.shape[0]) > 0:  # P is known on the host: no sync
        logs["dudt_rms"] = dudt_rms(dudt, rows, z.shape[0])
    return pred, target_from_dudt(v_tilde, r, t, rows, dudt)


def meanflow_target(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None, v_tilde: Tensor,
                    rows: Tensor) -> Tensor:
    """u_tgt [B, ...] alone, by the no-grad ``torch.func.jvp`` on ``rows`` ([B] bool, the r < t rows).

    For callers that need the target without a prediction (and the reference the fast path is
    tested against); training uses ``meanflow_prediction``.
    """
    index = rows.nonzero().squeeze(1)
    if index.shape[0] == 0:
        return v_tilde.detach().clone()
    pick: Callable[[Tensor], Tensor] = lambda a: a.index_select(0, index)  # noqa: E731
    lab = None if labels is None else pick(labels)
    _, dudt = average_velocity_jvp(net, pick(z), pick(r), pick(t), lab, pick(v_tilde))
    return target_from_dudt(v_tilde, r, t, index, dudt.to(torch.promote_types(dudt.dtype, torch.float32)))


@dataclass
class MeanFlowOptions(ObjectiveOptions):
    """MeanFlow's defaults (arXiv 2505.13447): 75 % of rows at r = t."""

    name: str = "meanflow"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(0.75))


class MeanFlow(Objective):
    """L_MF with MeanFlow's defaults: 75 % of rows with r = t, logit-normal(−0.4, 1) times.

    Components: ``mse`` = ``mf``, ``tfm`` and ``tcc`` = 2(t − r)·u_θ·sg(du/dt)
    (docs/objectives.md#logged-components), so ∇mf = ∇tfm + ∇tcc exactly.
    """

    name = "meanflow"
    Options = MeanFlowOptions

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        z, v_tilde = self.guided(net, x, sample)
        logs: dict[str, Tensor | float] = {"alpha": 0.0}
        pred, target = meanflow_prediction(net, z, sample.r, sample.t, sample.labels, v_tilde, pair_rows(sample),
                                           logs=logs)
        parts = regression_components(pred, target, v_tilde)
        parts["mf"] = parts["mse"]
        return Terms(loss=self.weighted(parts["mse"]), weight=self.loss_weight(parts["mse"]), components=parts,
                     pred=pred, target=target, sample=sample, logs=logs)
