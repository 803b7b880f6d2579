"""α-Flow (docs/objectives.md#the-alpha-flow-family; Definition 1 and Algorithm 1 of arXiv 2510.20771).

For α ∈ (0, 1] and rows with r < t:

    s    = α·r + (1 − α)·t                      so t − s = α(t − r), s − r = (1 − α)(t − r)
    z_s  = z_t − (t − s)·ṽ                      (the paper's v1 prints "+"; "−" is right, see
                                                 docs/official_code.md#sign-of-the-intermediate-point)
    u_tgt = clip(α·ṽ + (1 − α)·sg(u_θ(z_s, r, s)), ±clip)

which is the average velocity over [r, t] made of an Euler step over [s, t] and the model's
own jump over [s, r]. Rows with r = t regress ṽ. At α = 0 the discrete target is replaced by
MeanFlow's JVP target (no clip). The loss is the official code's form (docs/objectives.md#the-adaptive-weight,
docs/official_code.md#loss-weighting):

    loss_i = w_i·‖Δ_i‖² / (sg(‖Δ_i‖²) + c)^p,   w_i = α on r < t rows when α > 0, else 1

so the α⁻¹ of Definition 1 is not applied separately (with p = 1, α/(‖Δ‖² + c) is the
paper's adaptive weight). α = 1 is trajectory flow matching, α = ½ with ṽ := u_θ(z_t, s, t)
the Shortcut model, α → 0 MeanFlow (Theorem 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from alphaflow.core.amp import target_pass
from alphaflow.core.conventions import expand_time
from alphaflow.core.jvp import target_module
from alphaflow.objectives.base import (Net, Objective, ObjectiveArgs, Rows, Sample, Terms, keep_equal_time_rows,
                                       pair_rows, put_rows, regression_components, row_count, take_rows)
from alphaflow.objectives.meanflow import meanflow_prediction
from alphaflow.objectives.options import ObjectiveOptions
from alphaflow.core.schedules import Schedule, ScheduleConfig, as_schedule, check_unit_interval, sigmoid

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only

SHIFT_VELOCITIES = ("velocity", "model")


def _paper_curriculum() -> ScheduleConfig:
    # The paper's curriculum over the whole run (arXiv 2510.20771 Alg. 2): α = 1 → 0, γ = 25, η = 5·10⁻³.
    return ScheduleConfig(kind="sigmoid", start=1.0, end=0.0, k_start=0.0, k_end=1.0, unit="fraction",
                          gamma=25.0, clamp=5e-3)


@dataclass
class AlphaFlowOptions(ObjectiveOptions):
    """α-Flow: the α schedule, the target clip (None: off) and the shift velocity ("velocity" | "model")."""

    name: str = "alphaflow"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(0.5))
    alpha: ScheduleConfig = field(default_factory=_paper_curriculum)
    clip: float | None = 4.0
    shift: str = "velocity"


class AlphaFlow(Objective):
    """The α-Flow family with α = alpha(step) from a schedule (default: the paper's sigmoid 0 → 400K).

    Args:
        alpha: a number in [0, 1], a ``Schedule`` or its dict form.
        ratio_fm: share of r = t rows (number or schedule); default 0.5 (B/2 recipe, arXiv 2510.20771 Table 3).
        clip: element-wise clip of discrete-branch targets (docs/objectives.md#target-clipping); ``None`` disables it.
        shift: "velocity" uses ṽ for the shift z_t → z_s (the paper's choice); "model" uses
            sg(u_θ(z_t, s, t)) in both the shift and the target (Table 5a, the Shortcut form).

    Components: ``mse``, ``tfm``, ``tcc`` (2(ṽ − u_tgt)·u_θ, the finite-difference analogue of
    L_TCC; exactly L_TCC at α = 0) and, at α = 0, ``mf``.
    """

    name = "alphaflow"
    Options = AlphaFlowOptions

    def __init__(self, alpha: float | Schedule | dict[str, Any] | None = None, *, clip: float | None = 4.0,
                 shift: str = "velocity", **kwargs: Unpack[ObjectiveArgs]) -> None:
        super().__init__(**kwargs)
        self.alpha = sigmoid(0, 400_000) if alpha is None else as_schedule(alpha)
        check_unit_interval(self.alpha, "alpha")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
        if shift not in SHIFT_VELOCITIES:
            raise ValueError(f"shift must be one of {SHIFT_VELOCITIES}, got {shift!r}")
        self.clip, self.shift = clip, shift

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        alpha = self.alpha(step)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha({step}) = {alpha} lies outside [0, 1]")
        t, r, labels = sample.t, sample.r, sample.labels
        z, v_tilde = self.guided(net, x, sample)
        rows = pair_rows(sample)  # a slice for a drawn sample: no host sync
        logs: dict[str, Tensor | float] = {"alpha": alpha}
        if alpha == 0.0:  # MeanFlow: the prediction and du/dt in one pass where the model allows it (and its size)
            pred, target = meanflow_prediction(net, z, r, t, labels, v_tilde, rows, logs=logs)
        else:
            target = self.discrete_target(net, z, r, t, labels, v_tilde, rows, alpha)
            pred = net(z, r, t, labels)
        parts = regression_components(pred, target, v_tilde)
        if alpha == 0.0:
            parts["mf"] = parts["mse"]
            numerator: Tensor | float = 1.0
        else:  # the weight α on the r < t rows, a device fill in the loss's dtype (a scalar torch.where would round
            #    α through float32 first: 0.3 → 0.30000001192 in a float64 run)
            numerator = torch.ones_like(parts["mse"]).masked_fill(r < t, alpha)
        return Terms(loss=self.weighted(parts["mse"], numerator), components=parts,
                     weight=self.loss_weight(parts["mse"], numerator), pred=pred,
                     target=target, sample=sample, logs=logs)

    def discrete_target(self, net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None,
                        v_tilde: Tensor, rows: Rows, alpha: float) -> Tensor:
        """u_tgt [B, ...]: ṽ on r = t rows, the clipped α-target on ``rows`` (the r < t rows as ``pair_rows``
        gives them: a slice or [P] int64 indices; a tied row among them keeps ṽ).

        No host sync: the rows are a slice or indices, never a mask. The model passes run under
        ``target_pass`` (no grad, autocast without its weight cache: ``alphaflow.core.amp``).
        """
        target = v_tilde.detach().clone()
        if row_count(rows, target.shape[0]) == 0:
            return target
        with target_pass():
            module = target_module(net)
            z_d, r_d, t_d, v_d = (take_rows(a, rows) for a in (z, r, t, v_tilde.detach()))
            lab = None if labels is None else take_rows(labels, rows)
            shift_v = v_d
            if alpha == 1.0:
                u_disc = v_d  # s = r: the model term has weight 0, skip its forward (arXiv 2510.20771 Algorithm 1)
            else:
                s_d = alpha * r_d + (1.0 - alpha) * t_d
                # Model outputs (bf16 under autocast) are combined in ṽ's dtype, not rounded to bf16 first.
                if self.shift == "model":
                    shift_v = module(z_d, s_d, t_d, lab).to(v_d.dtype)
                z_s = z_d - expand_time(t_d - s_d, z_d) * shift_v
                u_disc = alpha * shift_v + (1.0 - alpha) * module(z_s, r_d, s_d, lab).to(v_d.dtype)
            if self.clip is not None:
                u_disc = u_disc.clamp(-self.clip, self.clip)
            # A min–max tie (r = t) among the rows keeps ṽ, as the r = t rows do (see pair_rows).
            return put_rows(target, rows, keep_equal_time_rows(r_d, t_d, u_disc.to(target.dtype), v_d))
