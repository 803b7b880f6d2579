"""Flow matching and trajectory flow matching: regress the (guided) velocity ṽ
(docs/objectives.md#objectives-in-this-project, docs/objectives.md#the-border-case,
docs/objectives.md#trajectory-flow-matching-and-trajectory-consistency; arXiv 2510.20771 §2, Eq. 6–7).

    L_FM  = E ‖u_θ(z_t, t, t) − ṽ_t‖²      (the border case r = t; L_FM′ in the paper)
    L_TFM = E ‖u_θ(z_t, r, t) − ṽ_t‖²      over p(t, r); α-Flow at α = 1 (Theorem 1)

Both use the adaptive weight 1/(sg(‖Δ‖²) + c)^p of the official code (p = 0: plain MSE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from alphaflow.objectives.base import Net, Objective, ObjectiveArgs, Sample, Terms, regression_components
from alphaflow.objectives.options import ObjectiveOptions
from alphaflow.core.schedules import ScheduleConfig, as_schedule

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only


def _regress_velocity(obj: Objective, net: Net, x: Tensor, sample: Sample, r: Tensor) -> Terms:
    """Shared body: target ṽ, prediction u_θ(z_t, r, t)."""
    z, v_tilde = obj.guided(net, x, sample)
    pred = net(z, r, sample.t, sample.labels)
    parts = regression_components(pred, v_tilde, v_tilde)  # tcc ≡ 0 here: the target is ṽ
    return Terms(loss=obj.weighted(parts["mse"]), weight=obj.loss_weight(parts["mse"]), components=parts, pred=pred,
                 target=v_tilde.detach(), sample=sample, logs={"alpha": 1.0})


@dataclass
class FlowMatchingOptions(ObjectiveOptions):
    """Flow matching: every row at r = t (ratio_fm must stay 1)."""

    name: str = "fm"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(1.0))


@dataclass
class TrajectoryFlowMatchingOptions(ObjectiveOptions):
    """Trajectory flow matching: half the rows at r = t by default."""

    name: str = "tfm"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(0.5))


class FlowMatching(Objective):
    """L_FM. The network is evaluated at r = t on every row, whatever ``sample.r`` holds, so on
    a sample with r < t this is the border-case L_FM′ on the same (x, ε, t) (docs/objectives.md#the-border-case).

    Components: ``mse`` and ``fmb`` (the same tensor).
    """

    name = "fm"
    Options = FlowMatchingOptions
    default_sampler = "euler"  # the network never saw r < t: N Euler steps of the velocity
    conflict_parts = False     # no L_TCC: nothing to combine

    def __init__(self, **kwargs: Unpack[ObjectiveArgs]) -> None:
        ratio = kwargs.get("ratio_fm")
        if ratio is not None and as_schedule(ratio) != as_schedule(1.0):
            raise ValueError(f"flow matching uses r = t on every row; ratio_fm must be 1, got {ratio!r}")
        super().__init__(**kwargs)

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        terms = _regress_velocity(self, net, x, sample, sample.t)
        mse = terms.components["mse"]
        terms.components = {"mse": mse, "fmb": mse}
        return terms


class TrajectoryFlowMatching(Objective):
    """L_TFM over p(t, r): the network sees (t, t − r) and learns to ignore r (α-Flow phase 1).

    Components: ``mse`` and ``tfm`` (the same tensor) and ``tcc`` (identically 0).
    """

    name = "tfm"
    Options = TrajectoryFlowMatchingOptions

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        return _regress_velocity(self, net, x, sample, sample.r)
