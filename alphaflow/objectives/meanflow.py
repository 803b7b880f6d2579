"""MeanFlow (SPEC §1.2): regress the stop-gradient MeanFlow target.

    u_tgt = ṽ − (t − r)·sg(du/dt),   du/dt = ∂_z u·ṽ + ∂_t u   (JVP along (ṽ, 0, 1))
    L_MF  = E ‖u_θ(z_t, r, t) − u_tgt‖²,   weighted per sample by 1/(sg(‖Δ‖²) + c)^p

On r = t rows u_tgt = ṽ (flow matching); the JVP runs only on the r < t rows, under no-grad,
on the unwrapped module (``alphaflow.jvp``), then one ordinary forward with grad.
"""

from __future__ import annotations

from torch import Tensor

from alphaflow.jvp import average_velocity_jvp
from alphaflow.conventions import expand_time
from alphaflow.objectives.base import Net, Objective, Sample, Terms, regression_components


def meanflow_target(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None, v_tilde: Tensor,
                    rows: Tensor) -> Tensor:
    """u_tgt [B, ...]: ṽ everywhere, ṽ − (t − r)·du/dt on ``rows`` ([B] bool, the r < t rows)."""
    target = v_tilde.detach().clone()
    if bool(rows.any()):
        lab = None if labels is None else labels[rows]
        _, dudt = average_velocity_jvp(net, z[rows], r[rows], t[rows], lab, v_tilde[rows])
        target[rows] = v_tilde[rows] - expand_time(t[rows] - r[rows], dudt) * dudt
    return target


class MeanFlow(Objective):
    """L_MF with MeanFlow's defaults: 75 % of rows with r = t, logit-normal(−0.4, 1) times.

    Components: ``mse`` = ``mf``, ``tfm`` and ``tcc`` = 2(t − r)·u_θ·sg(du/dt) (SPEC §2), so
    ∇mf = ∇tfm + ∇tcc exactly.
    """

    name = "meanflow"
    default_ratio_fm = 0.75

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        z, v_tilde = self.guided(net, x, sample)
        target = meanflow_target(net, z, sample.r, sample.t, sample.labels, v_tilde, sample.r < sample.t)
        pred = net(z, sample.r, sample.t, sample.labels)
        parts = regression_components(pred, target, v_tilde)
        parts["mf"] = parts["mse"]
        return Terms(loss=self.weighted(parts["mse"]), components=parts, pred=pred, target=target,
                     sample=sample, logs={"alpha": 0.0})
