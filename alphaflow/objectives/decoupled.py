"""Decoupled MeanFlow's objective (arXiv 2510.24474; official code kyungmnlee/dmf; docs/objectives.md#decoupled-meanflow).

Meant for a DiT with ``model.decouple_at=K`` (its late blocks see r) and ``model.logvar=true`` (a learned
lv(r, t)), started from a flow-matching run (``train.init_from``). Each row is either a flow-matching sample
(r = t: target ṽ) or a MeanFlow sample (r < t: target ṽ − (t − r)·sg(du/dt), the JVP along (ṽ, 0, 1)); the
official code pairs both with every image and averages them, here they are the r = t and r < t rows of the batch
(``ratio_fm`` = 0.5), the same loss in expectation. Each row's loss is the uncertainty-weighted

    ℓ = log(e^(−lv)·mse + c) + lv,   lv = lv_θ(r, t),   c = 0.01 (the official value; mse a mean over elements)

which replaces the adaptive weight (``adaptive_p``/``adaptive_c`` are not used). Its gradient in the network's
prediction is w·∇mse with w = sg(e^(−lv)/(e^(−lv)·mse + c)) (``Terms.weight``, so tfm and tcc split it exactly),
and in lv that of the component ``lv`` = log(e^(−lv)·sg(mse) + c) + lv (``Terms.extra_unweighted``).
The times come from the project's sampler (the official code draws three logit-normals): a stated deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

import torch
from torch import Tensor

from alphaflow.core.jvp import unwrap
from alphaflow.objectives.base import Net, Objective, ObjectiveArgs, Sample, Terms, pair_rows, regression_components
from alphaflow.objectives.meanflow import meanflow_prediction
from alphaflow.objectives.options import ObjectiveOptions
from alphaflow.core.schedules import ScheduleConfig

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only


class _LogVarianceNet(Protocol):
    """A network with a learned log-variance head (``model.logvar=true``)."""

    def log_variance(self, r: Tensor, t: Tensor) -> Tensor: ...


@dataclass
class DecoupledMeanFlowOptions(ObjectiveOptions):
    """Decoupled MeanFlow: half the rows flow matching, half MeanFlow; ``logvar_c`` is the c of ℓ."""

    name: str = "decoupled_meanflow"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(0.5))
    logvar_c: float = 0.01


def uncertainty_loss(mse: Tensor, lv: Tensor, c: float) -> Tensor:
    """ℓ = log(e^(−lv)·mse + c) + lv per row: mse, lv [B] → [B] (module docstring)."""
    return torch.log(torch.exp(-lv) * mse + c) + lv


class DecoupledMeanFlow(Objective):
    """Components: ``mse``, ``tfm``, ``tcc``, ``mf`` (= mse) and ``lv`` (the log-variance part)."""

    name = "decoupled_meanflow"
    Options = DecoupledMeanFlowOptions
    needs_logvar = True

    def __init__(self, *, logvar_c: float = 0.01, **kwargs: Unpack[ObjectiveArgs]) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(logvar_c) and logvar_c > 0):
            raise ValueError(f"logvar_c (the c in log(e^(-lv)·mse + c)) must be > 0, got {logvar_c}")
        self.logvar_c = float(logvar_c)
        if self.adaptive_reduce != "mean":
            raise ValueError("objective.adaptive_reduce chooses what the adaptive weight reads, and "
                             "decoupled_meanflow weights by its learned log-variance instead; leave it at 'mean'")

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        module = unwrap(net)
        if not callable(getattr(module, "log_variance", None)):
            raise ValueError("objective.name=decoupled_meanflow needs a network with a log-variance head "
                             "(model.logvar=true)")
        z, v_tilde = self.guided(net, x, sample)
        pred, target = meanflow_prediction(net, z, sample.r, sample.t, sample.labels, v_tilde, pair_rows(sample))
        parts = regression_components(pred, target, v_tilde)
        parts["mf"] = parts["mse"]
        lv = cast(_LogVarianceNet, module).log_variance(sample.r, sample.t).to(parts["mse"].dtype)  # [B]
        c = self.logvar_c
        loss = uncertainty_loss(parts["mse"], lv, c)
        weight = (torch.exp(-lv) / (torch.exp(-lv) * parts["mse"] + c)).detach()
        parts["lv"] = uncertainty_loss(parts["mse"].detach(), lv, c)
        return Terms(loss=loss, weight=weight, components=parts, pred=pred, target=target, sample=sample,
                     extra_unweighted=("lv",), logs={"alpha": 0.0})
