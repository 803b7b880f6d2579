"""Modular MeanFlow (arXiv 2508.17426; docs/objectives.md#modular-meanflow): MeanFlow with a tunable share λ of
the gradient through the JVP.

With SG_λ[a] = λ·a + (1 − λ)·sg(a), Δ = t − r and D = du_θ/dt along (ṽ, 0, 1),

    L_λ = E ‖u_θ(z_t, r, t) + Δ·SG_λ[D] − ṽ‖²,   weighted per sample by 1/(sg(L_λ) + c)^p as MeanFlow is

λ = 0 is MeanFlow in value and in gradient (the same code path: ``meanflow_prediction``). For λ > 0 the
gradient flows through D as well: a JVP that is itself differentiated (``differentiable_dudt``). The gradient
then has three parts, exposed as components (with res = sg(u_θ + Δ·D − ṽ)):

    tfm = ‖u_θ − ṽ‖²,   tcc = 2Δ·⟨sg(D), u_θ⟩,   d = 2λΔ·⟨res, D⟩        ∇mse = ∇tfm + ∇tcc + ∇d exactly

so the probes report all three and the conflict interventions combine g_TFM and g_TCC and add g_D unchanged
(``Terms.extra``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.core.conventions import expand_time
from alphaflow.core.jvp import unwrap
from alphaflow.objectives.base import (Net, Objective, ObjectiveArgs, Rows, Sample, Terms, element_mean, pair_rows,
                                       put_rows, regression_components, row_count, take_rows)
from alphaflow.objectives.meanflow import meanflow_prediction
from alphaflow.objectives.options import ObjectiveOptions
from alphaflow.core.schedules import Schedule, ScheduleConfig, as_schedule, check_unit_interval

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only


def _warmup() -> ScheduleConfig:
    # λ from 0 (MeanFlow) to 1 (the full gradient) over the first half of the run, then 1: this project's default
    return ScheduleConfig(kind="linear", start=0.0, end=1.0, k_start=0.0, k_end=0.5, unit="fraction")


@dataclass
class ModularMeanFlowOptions(ObjectiveOptions):
    """Modular MeanFlow: MeanFlow's defaults (75 % r = t, the adaptive weight) and the λ schedule."""

    name: str = "modular_meanflow"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(0.75))
    lam: ScheduleConfig = field(default_factory=_warmup)


def differentiable_dudt(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None,
                        tangent_z: Tensor) -> Tensor:
    """D = ∂_z u_θ·tangent_z + ∂_t u_θ at (z, r, t), [n, ...], with autograd history in θ (a JVP that can be
    differentiated: reverse over forward mode, attention on the math backend).

    Runs ``torch.func.jvp`` on the unwrapped network with grad enabled; the DiT's LayerNorm switches to its
    primitive form there (``alphaflow.models.dit.layer_norm``).
    """
    module = unwrap(net)

    def u_of(z_: Tensor, t_: Tensor) -> Tensor:
        return module(z_, r, t_, labels)

    with sdpa_kernel([SDPBackend.MATH]):
        out = torch.func.jvp(u_of, (z, t), (tangent_z.to(z.dtype), torch.ones_like(t)))
    _, dudt = cast(tuple[Tensor, Tensor], out)  # without has_aux, jvp returns (output, tangent output)
    return dudt


class ModularMeanFlow(Objective):
    """L_λ with λ = lam(step) (default: linear 0 → 1 over the first half of the run). Components: ``mse`` (= ``mf``
    in value), ``tfm``, ``tcc`` and ``d``; ``Terms.extra`` = ("d",) when λ > 0."""

    name = "modular_meanflow"
    Options = ModularMeanFlowOptions

    def __init__(self, lam: float | Schedule | dict[str, Any] | None = None,
                 **kwargs: Unpack[ObjectiveArgs]) -> None:
        super().__init__(**kwargs)
        # without a run length, the warm-up of a 400K-step run (the ImageNet recipes'); a config resolves it
        # against train.steps
        self.lam = _warmup().resolve(400_000) if lam is None else as_schedule(lam)
        check_unit_interval(self.lam, "lam")

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        lam = self.lam(step)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam({step}) = {lam} lies outside [0, 1]")
        z, v_tilde = self.guided(net, x, sample)
        rows = pair_rows(sample)
        if lam == 0.0:  # MeanFlow itself
            pred, target = meanflow_prediction(net, z, sample.r, sample.t, sample.labels, v_tilde, rows)
            parts = regression_components(pred, target, v_tilde)
            parts.update(mf=parts["mse"], d=torch.zeros_like(parts["mse"]))
            extra: tuple[str, ...] = ()
        else:
            pred, target, parts = self.through_jvp(net, z, sample, v_tilde, rows, lam)
            extra = ("d",)
        return Terms(loss=self.weighted(parts["mse"]), weight=self.loss_weight(parts["mse"]), components=parts,
                     pred=pred, target=target, sample=sample, extra=extra, logs={"alpha": 0.0, "lam": lam})

    def through_jvp(self, net: Net, z: Tensor, sample: Sample, v_tilde: Tensor, rows: Rows,
                    lam: float) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(u_θ, sg MeanFlow target, components) for λ > 0: D on the r < t rows with grad (module docstring)."""
        r, t, labels = sample.r, sample.t, sample.labels
        pred = net(z, r, t, labels)  # through the wrapper: DDP sees the prediction's forward
        v = v_tilde.detach()
        step_grad = torch.zeros_like(pred)  # λ·Δ·D with grad in θ, 0 on r = t rows
        step_sg = torch.zeros_like(pred)    # Δ·sg(D)
        if row_count(rows, z.shape[0]):
            r_p, t_p = take_rows(r, rows), take_rows(t, rows)
            dudt = differentiable_dudt(net, take_rows(z, rows), r_p, t_p,
                                       None if labels is None else take_rows(labels, rows), take_rows(v, rows))
            gap = expand_time(t_p - r_p, dudt)
            put_rows(step_grad, rows, lam * gap * dudt)
            put_rows(step_sg, rows, gap * dudt.detach())
        target = v - step_sg  # MeanFlow's target ṽ − Δ·sg(D)
        total = pred + step_grad + (1.0 - lam) * step_sg  # u_θ + Δ·SG_λ[D]
        parts = regression_components(pred, target, v)
        parts["mse"] = element_mean((total - v) ** 2)
        parts["mf"] = parts["mse"]
        parts["d"] = 2.0 * element_mean((total - v).detach() * step_grad)  # 2λΔ⟨res, D⟩
        return pred, target, parts
