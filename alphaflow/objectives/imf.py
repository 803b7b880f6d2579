"""Improved MeanFlow (arXiv 2512.02012; official code Lyy-iiis/imeanflow; docs/objectives.md#improved-meanflow).

MeanFlow's regression with two changes. The JVP tangent is the network's own instantaneous velocity, read from an
auxiliary head v̂_θ (``model.aux_head_depth``), instead of the sample's ε − x; and classifier-free guidance is a
conditioning input (``model.guidance_embed``): a scale ω and an interval [t_min, t_max] drawn per row. With
Δ = t − r and ω_w = ω where t_min ≤ t ≤ t_max, else 1,

    v̂_c = sg v̂_θ(z_t, t, t | c; ω_w, [0, 1]),   v̂_u = sg v̂_θ(z_t, t, t | ∅; 1, [0, 1])
    v_g = v + (1 − 1/ω_w)·(v̂_c − v̂_u)           the guided target; v_g = v without guidance (ω = 1)
    labels are then dropped with probability ``label_dropout``, and a dropped row's v_g is v
    u, D, v̂ = u_θ(z_t, r, t | c′; ω, [t_min, t_max]), its JVP along (v̂_c, 0, 1) and the head's output, one forward
    L_u = ‖u + Δ·sg(D) − v_g‖² = ‖u − sg(v_g − Δ·D)‖²,   L_v = ‖v̂ − v_g‖²,   loss = w_u·L_u + w_v·L_v

each adaptive-weighted as MeanFlow is (w = 1/(sg(L) + c)^p). L_u is MeanFlow's regression with ṽ = v_g, so its
components ``tfm``, ``tcc`` (and ``mf`` = ``mse`` = L_u) split its gradient as MeanFlow's do; the head's loss is the
unweighted extra ``aux`` = w_v·L_v, so the probes and the conflict interventions apply unchanged. Where this follows
the official code rather than the paper: v̂ in L_v is the head's output at (r, t) from the main forward, the
unconditional pass runs at ω = 1, r = t rows have the interval [0, 1], and dropped rows regress the unguided v.
Deviations: guidance is summed into the adaLN conditioning (the official DiT uses in-context tokens); by default the
adaptive weight reads element means with c = 10⁻³ (the official sums over elements with c = 0.01:
``objective.adaptive_reduce=sum objective.adaptive_c=0.01``), the r = t rows draw one time (the official takes the max
of a pair: ``objective.time.fm_time=max_of_pair``) and the network sees t and h = t − r (the official h alone:
``model.time_cond=h``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from alphaflow.core.amp import target_pass
from alphaflow.core.conventions import NULL_LABEL, expand_time, interpolate, velocity
from alphaflow.core.jvp import target_module, unwrap
from alphaflow.objectives.base import (Net, Objective, ObjectiveArgs, Sample, Terms, element_mean, own_uniforms,
                                       pair_rows, regression_components, row_count, take_rows)
from alphaflow.objectives.meanflow import target_from_dudt
from alphaflow.objectives.options import ObjectiveOptions
from alphaflow.core.schedules import ScheduleConfig

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only


@dataclass
class ImprovedMeanFlowOptions(ObjectiveOptions):
    """iMF's defaults: half the rows at r = t; ω log-uniform in [1, ``omega_max``] (the official 8; 1 = no guidance,
    as here by default); the guidance interval drawn per row (``random_interval``); ``label_dropout`` 0.1."""

    name: str = "imf"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(0.5))
    omega_max: float = 1.0
    random_interval: bool = True
    label_dropout: float = 0.1


def guidance_inputs(u: Tensor, r: Tensor, t: Tensor, omega_max: float, random_interval: bool) -> Tensor:
    """The guidance conditioning (ω, t_min, t_max) per row, [B, 3], from the row's uniforms u [B, ≥ 3].

    ω = omega_max^u₀ (log-uniform in [1, omega_max]); t_min = u₁/2, t_max = (1 + u₂)/2 (uniform on [0, ½] and
    [½, 1]), and [0, 1] on r = t rows or without ``random_interval``.
    """
    omega = torch.exp(u[:, 0] * math.log(omega_max))
    t_min, t_max = 0.5 * u[:, 1], 0.5 + 0.5 * u[:, 2]
    whole = (r == t) if random_interval else torch.ones_like(t, dtype=torch.bool)
    t_min, t_max = torch.where(whole, torch.zeros_like(t_min), t_min), torch.where(whole, torch.ones_like(t_max), t_max)
    return torch.stack([omega, t_min, t_max], dim=1).to(t.dtype)


class ImprovedMeanFlow(Objective):
    """iMF's objective (module docstring). Needs a DiT with ``aux_head_depth`` (and ``guidance_embed`` when
    ``omega_max`` > 1). Components: ``mse`` = ``mf`` = L_u, ``tfm``, ``tcc``, ``mse_v`` = L_v and ``aux`` = w_v·L_v."""

    name = "imf"
    Options = ImprovedMeanFlowOptions
    needs_velocity_head = True

    def __init__(self, *, omega_max: float = 1.0, random_interval: bool = True, label_dropout: float = 0.1,
                 **kwargs: Unpack[ObjectiveArgs]) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(omega_max) and omega_max >= 1.0):
            raise ValueError(f"omega_max (ω is log-uniform in [1, omega_max]) must be >= 1, got {omega_max}")
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout must lie in [0, 1], got {label_dropout}")
        if self.guidance.guides or self.guidance.label_dropout:
            raise ValueError("objective.name=imf takes guidance as a conditioning input: set objective.omega_max and "
                             "objective.label_dropout, and leave objective.guidance at its defaults")
        self.omega_max, self.random_interval, self.label_dropout = float(omega_max), bool(random_interval), label_dropout

    @property
    def guides(self) -> bool:
        return self.omega_max > 1.0

    def draw(self, x: Tensor, labels: Tensor | None = None, *, step: int = 0,
             generator: torch.Generator | None = None) -> Sample:
        sample = super().draw(x, labels, step=step, generator=generator)
        sample.split = torch.rand(x.shape[0], 4, generator=generator, device=x.device, dtype=x.dtype)
        return sample

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        module = unwrap(net)
        if getattr(module, "aux_head_depth", None) is None or not getattr(module, "supports_tangent", False):
            raise ValueError("objective.name=imf needs a DiT with a velocity head (model.aux_head_depth=K)")
        r, t, labels = sample.r, sample.t, sample.labels
        u01 = own_uniforms(sample, x, 4)  # [B, 4]: ω, t_min, t_max, label dropout
        z, v = interpolate(x, sample.eps, t), velocity(x, sample.eps)
        guide = guidance_inputs(u01, r, t, self.omega_max, self.random_interval) if self.guides else None
        v_c, v_g = self.guided_target(target_module(net), z, t, v, labels, guide)
        if labels is not None and self.label_dropout:
            drop = u01[:, 3] < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
            v_g = torch.where(drop.reshape(-1, *([1] * (v.ndim - 1))), v, v_g)
        rows = pair_rows(sample)
        P = row_count(rows, x.shape[0])
        tangent = (None if P == x.shape[0] else rows, take_rows(v_c, rows),
                   torch.zeros(P, dtype=t.dtype, device=t.device), torch.ones(P, dtype=t.dtype, device=t.device))
        pred, dudt, v_hat = net(z, r, t, labels, tangent, guide=guide, velocity=True)
        target = target_from_dudt(v_g, r, t, rows, dudt)
        parts = regression_components(pred, target, v_g)
        parts["mf"] = parts["mse"]
        parts["mse_v"] = element_mean((v_hat - v_g) ** 2)
        parts["aux"] = self.weighted(parts["mse_v"])
        loss = self.weighted(parts["mse"]) + parts["aux"]
        return Terms(loss=loss, weight=self.loss_weight(parts["mse"]), components=parts, pred=pred, target=target,
                     sample=sample, extra_unweighted=("aux",), logs={"alpha": 0.0})

    def guided_target(self, module: Net, z: Tensor, t: Tensor, v: Tensor, labels: Tensor | None,
                      guide: Tensor | None) -> tuple[Tensor, Tensor]:
        """(v̂_c, v_g), both [B, ...] and detached: the JVP tangent and the guided target (module docstring).
        One no-grad pass of B rows at r = t without guidance, one of 2B rows (conditional, unconditional) with."""
        with target_pass():
            if guide is None:
                return module(z, t, t, labels, velocity=True)[1].to(z.dtype), v
            if labels is None:
                raise ValueError("objective.omega_max > 1 guides by the class label, and this data has no labels")
            omega, t_min, t_max = guide.unbind(1)
            omega_w = torch.where((t >= t_min) & (t <= t_max), omega, torch.ones_like(omega))
            ones, zeros = torch.ones_like(t), torch.zeros_like(t)
            both = torch.cat([torch.stack([omega_w, zeros, ones], 1), torch.stack([ones, zeros, ones], 1)])
            null = torch.full_like(labels, NULL_LABEL)
            z2, t2 = torch.cat([z, z]), torch.cat([t, t])
            v_c, v_u = module(z2, t2, t2, torch.cat([labels, null]), guide=both, velocity=True)[1].to(z.dtype).chunk(2)
            return v_c, v + expand_time(1.0 - 1.0 / omega_w, v) * (v_c - v_u)
