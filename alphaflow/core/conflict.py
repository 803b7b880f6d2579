"""How two gradients combine into one update: the conflict interventions (docs/conflict.md).

The MeanFlow loss splits into trajectory flow matching and trajectory consistency (arXiv 2510.20771 Eq. 6–7),
and so does its gradient: g = g_TFM + g_TCC. Every rule here returns the update as a·g_TFM + b·g_TCC, with
(a, b) a function of the 2×2 Gram matrix G = [[⟨g₁,g₁⟩, ⟨g₁,g₂⟩], [⟨g₁,g₂⟩, ⟨g₂,g₂⟩]] alone (g₁ = g_TFM,
g₂ = g_TCC), so the rules never touch the gradient vectors themselves:

    none         a = b = 1: the sum, the plain gradient of the loss
    pcgrad       PCGrad (arXiv 2001.06782) for two tasks: when ⟨g₁, g₂⟩ < 0, each is projected onto the normal
                 plane of the other's original gradient, g₁ − (⟨g₁,g₂⟩/‖g₂‖²)g₂ and g₂ − (⟨g₁,g₂⟩/‖g₁‖²)g₁,
                 then summed: a = 1 − ⟨g₁,g₂⟩/‖g₁‖², b = 1 − ⟨g₁,g₂⟩/‖g₂‖²
    project_tcc  the one-sided variant: only g₂ loses its component along g₁ when they conflict, so flow
                 matching's direction is kept: a = 1 − ⟨g₁,g₂⟩/‖g₁‖², b = 1
    balance      both rescaled to the mean of their norms m = (‖g₁‖ + ‖g₂‖)/2 before summing: a = m/‖g₁‖,
                 b = m/‖g₂‖ (the update's scale stays that of the parts; neither part dominates)
    cagrad       CAGrad (arXiv 2110.14048) for two gradients: the direction d that maximises
                 min(⟨g₁, d⟩, ⟨g₂, d⟩) over the ball ‖d − g₀‖ ≤ c‖g₀‖ around the average g₀ = (g₁ + g₂)/2.
                 Its dual is the one-dimensional convex problem min over w ∈ [0, 1] of
                 F(w) = ⟨g_w, g₀⟩ + c‖g₀‖·‖g_w‖ with g_w = w·g₁ + (1 − w)·g₂, solved here exactly from G;
                 then d = g₀ + (c‖g₀‖/‖g_w‖)·g_w. Normalisation: the official code's default (rescale=1),
                 d/(1 + c²), times 2 so that c = 0 gives the sum, as ``none`` does

Shapes: ``gram`` is [K, 2, 2] (K parameter groups; K = 1 for the whole vector), float64 for the tests and
whatever the caller passes otherwise; coefficients are [K, 2]. Everything is device-side ``torch.where``
arithmetic: no host sync, so a training step reads nothing back to decide.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

MODES = ("none", "pcgrad", "project_tcc", "balance", "cagrad")
_TINY = 1e-30  # below this a squared norm counts as zero: that part has no direction to project on


def _parts(gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if gram.ndim != 3 or gram.shape[1:] != (2, 2):
        raise ValueError(f"gram must be [K, 2, 2] (one 2×2 Gram matrix per parameter group), got {tuple(gram.shape)}")
    return gram[:, 0, 0], gram[:, 1, 1], gram[:, 0, 1]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num/den, and 0 where den is (numerically) zero."""
    ok = den > _TINY
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def none_coefficients(gram: Tensor, c: float = 0.0) -> Tensor:
    """[K, 2] of ones: the update is g₁ + g₂."""
    g11, _, _ = _parts(gram)
    return torch.ones(g11.shape[0], 2, dtype=gram.dtype, device=gram.device)


def pcgrad_coefficients(gram: Tensor, c: float = 0.0) -> Tensor:
    """PCGrad for two gradients (module docstring); (1, 1) where ⟨g₁, g₂⟩ ≥ 0. [K, 2, 2] → [K, 2]."""
    g11, g22, g12 = _parts(gram)
    conflict = g12 < 0
    a = torch.where(conflict, 1 - _safe_div(g12, g11), torch.ones_like(g12))  # g₂'s projection takes from g₁'s share
    b = torch.where(conflict, 1 - _safe_div(g12, g22), torch.ones_like(g12))
    return torch.stack([a, b], dim=1)


def project_tcc_coefficients(gram: Tensor, c: float = 0.0) -> Tensor:
    """g₂ without its component along g₁ when they conflict; g₁ untouched. [K, 2, 2] → [K, 2]."""
    g11, _, g12 = _parts(gram)
    a = torch.where(g12 < 0, 1 - _safe_div(g12, g11), torch.ones_like(g12))
    return torch.stack([a, torch.ones_like(a)], dim=1)


def balance_coefficients(gram: Tensor, c: float = 0.0) -> Tensor:
    """Both parts rescaled to the mean of their norms; a zero part stays zero. [K, 2, 2] → [K, 2]."""
    g11, g22, _ = _parts(gram)
    n1, n2 = g11.clamp(min=0).sqrt(), g22.clamp(min=0).sqrt()
    mean = (n1 + n2) / 2
    return torch.stack([_safe_div(mean, n1), _safe_div(mean, n2)], dim=1)


def cagrad_weight(gram: Tensor, c: float) -> Tensor:
    """The minimiser w ∈ [0, 1] of F(w) = ⟨g_w, g₀⟩ + c‖g₀‖·‖g_w‖ (module docstring), exactly. [K, 2, 2] → [K].

    With q(w) = ‖g_w‖² = A(w − w*)² + q_min, A = ‖g₁ − g₂‖², w* = (G₂₂ − G₁₂)/A, and F'(w) = α₁ + s·A(w − w*)/√q
    (α₁ = (G₁₁ − G₂₂)/2, s = c‖g₀‖), the stationary point is w* + k·√(q_min/(A(A − k²))) for k = −α₁/s when
    k² < A. F is convex, so that point clipped to [0, 1], or the better endpoint when there is none, is the
    minimum; the three candidates are compared by F itself, which also settles the degenerate cases
    (A = 0: g₁ = g₂; s = 0: g₀ = 0).
    """
    g11, g22, g12 = _parts(gram)
    g0_sq = ((g11 + g22 + 2 * g12) / 4).clamp(min=0)
    s = c * g0_sq.sqrt()

    def objective(w: Tensor) -> Tensor:
        q = (w * w * g11 + 2 * w * (1 - w) * g12 + (1 - w) ** 2 * g22).clamp(min=0)
        lin = (w * (g11 + g12) + (1 - w) * (g12 + g22)) / 2
        return lin + s * q.sqrt()

    big_a = (g11 + g22 - 2 * g12).clamp(min=0)
    w_star = _safe_div(g22 - g12, big_a)
    q_min = (g22 - _safe_div((g22 - g12) ** 2, big_a)).clamp(min=0)
    k = -_safe_div((g11 - g22) / 2, s)
    room = big_a - k * k
    inside = (room > _TINY) & (big_a > _TINY)
    offset = torch.where(inside, k * _safe_div(q_min, big_a * torch.where(inside, room, torch.ones_like(room))).sqrt(),
                         torch.zeros_like(k))
    interior = torch.where(big_a > _TINY, (w_star + offset).clamp(0, 1), torch.full_like(k, 0.5))
    candidates = torch.stack([interior, torch.zeros_like(k), torch.ones_like(k)], dim=1)  # [K, 3]
    values = torch.stack([objective(candidates[:, j]) for j in range(3)], dim=1)
    return candidates.gather(1, values.argmin(dim=1, keepdim=True)).squeeze(1)


def cagrad_coefficients(gram: Tensor, c: float = 0.4) -> Tensor:
    """CAGrad's update 2d/(1 + c²), d = g₀ + (c‖g₀‖/‖g_w‖)·g_w, as coefficients of (g₁, g₂). [K, 2, 2] → [K, 2]."""
    if not c >= 0:
        raise ValueError(f"cagrad's c (the radius of the ball around the average gradient) must be >= 0, got {c}")
    g11, g22, g12 = _parts(gram)
    w = cagrad_weight(gram, c)
    gw_sq = (w * w * g11 + 2 * w * (1 - w) * g12 + (1 - w) ** 2 * g22).clamp(min=0)
    g0_norm = ((g11 + g22 + 2 * g12) / 4).clamp(min=0).sqrt()
    lam = _safe_div(c * g0_norm, gw_sq.sqrt())
    scale = 1.0 / (1.0 + c * c)
    return torch.stack([(1 + 2 * lam * w) * scale, (1 + 2 * lam * (1 - w)) * scale], dim=1)


RULES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "none": none_coefficients, "pcgrad": pcgrad_coefficients, "project_tcc": project_tcc_coefficients,
    "balance": balance_coefficients, "cagrad": cagrad_coefficients,
}


def coefficients(gram: Tensor, mode: str, c: float = 0.4) -> Tensor:
    """(a, b) per group for rule ``mode`` (``MODES``); [K, 2, 2] → [K, 2]. ``c`` is CAGrad's radius."""
    if mode not in RULES:
        raise ValueError(f"conflict.mode must be one of {', '.join(MODES)}, got {mode!r}")
    return RULES[mode](gram, c)


def conflict_stats(gram: Tensor, coef: Tensor) -> dict[str, Tensor]:
    """What a rule did on one step, whole-vector, as 0-dim tensors (no host sync):

    cos      cos(g₁, g₂) over all groups (the sum of the groups' Gram matrices)
    norm_tfm, norm_tcc   ‖g₁‖, ‖g₂‖
    ratio    ‖g₁ + g₂‖ / (‖g₁‖ + ‖g₂‖): near 0 when the parts cancel, 1 when they align; the cosine tends to −1
             whenever the sum is small beside its parts (near a stationary point), so it belongs beside it
    changed  1 if the rule changed the update in any group, else 0
    change   ‖update − (g₁ + g₂)‖ / ‖g₁ + g₂‖, the relative size of the change

    gram: [K, 2, 2]; coef: [K, 2] (the rule's (a, b) per group).
    """
    total = gram.sum(dim=0)
    g11, g22, g12 = total[0, 0], total[1, 1], total[0, 1]
    n1, n2 = g11.clamp(min=0).sqrt(), g22.clamp(min=0).sqrt()
    sum_sq = (g11 + g22 + 2 * g12).clamp(min=0)
    da, db = coef[:, 0] - 1, coef[:, 1] - 1
    change_sq = (da * da * gram[:, 0, 0] + 2 * da * db * gram[:, 0, 1] + db * db * gram[:, 1, 1]).sum().clamp(min=0)
    return {"cos": _safe_div(g12, n1 * n2), "norm_tfm": n1, "norm_tcc": n2,
            "ratio": _safe_div(sum_sq.sqrt(), n1 + n2), "changed": (coef != 1).any().to(gram.dtype),
            "change": _safe_div(change_sq.sqrt(), sum_sq.sqrt())}
