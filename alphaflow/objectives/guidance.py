"""Classifier-free guidance baked into training: the guided velocity ṽ that replaces v in every target.

Also the ``objective.guidance`` config section (its fields are plain numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from alphaflow.amp import target_pass
from alphaflow.conventions import NULL_LABEL

Net = Callable[..., Tensor]  # net(z [B,...], r [B], t [B], labels [B] | None) -> u [B,...]


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance baked into training (arXiv 2510.20771 §4.2, as in MeanFlow, arXiv 2505.13447).

    For rows with t_min < t < t_max the velocity is replaced, without gradient, by
        ṽ = ω·v + κ·u_θ(z_t, t, t | c) + (1 − ω − κ)·u_θ(z_t, t, t | ∅),
    an effective guidance scale ω′ = ω/(1 − κ). Inside the window each label is dropped
    to ∅ with probability ``label_dropout``; a dropped row is unconditional in every pass
    of that step. The defaults (ω = 1, κ = 0) mean no guidance: ṽ = v.
    """

    omega: float = 1.0
    kappa: float = 0.0
    t_min: float = 0.0
    t_max: float = 1.0
    label_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("omega", "kappa"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"guidance.{name} must be finite, got {getattr(self, name)}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"guidance window needs 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"guidance.label_dropout must lie in [0, 1], got {self.label_dropout}")

    @property
    def guides(self) -> bool:
        return self.omega != 1.0 or self.kappa != 0.0

    def window(self, t: Tensor) -> Tensor:
        """[B] bool: rows whose t lies strictly inside (t_min, t_max)."""
        return (t > self.t_min) & (t < self.t_max)

    def drop_labels(self, labels: Tensor | None, t: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """Replace labels by ``NULL_LABEL`` with probability ``label_dropout`` inside the window."""
        if labels is None or self.label_dropout == 0.0:
            return labels
        u = torch.rand(labels.shape[0], generator=generator, device=labels.device)
        drop = (u < self.label_dropout) & self.window(t)
        return torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)

    def guided_velocity(self, net: Net, z: Tensor, t: Tensor, v: Tensor, labels: Tensor | None) -> Tensor:
        """ṽ [B, ...] from v [B, ...]; network passes at r = t, no gradient, skipped when their weight is 0.

        The window rows depend on the values of t, so they are found by one ``nonzero`` (the step's one
        host sync when guiding); the rest is index_select / index_copy. The passes run under
        ``target_pass`` (no grad, autocast without its weight cache: ``alphaflow.amp``).
        """
        if not self.guides:
            return v
        rows = self.window(t).nonzero().squeeze(1)  # [P]
        P = rows.shape[0]
        if P == 0:
            return v
        with target_pass():
            z_w, t_w = z.index_select(0, rows), t.index_select(0, rows)
            guided = self.omega * v.index_select(0, rows)
            if self.kappa != 0.0:
                lab = None if labels is None else labels.index_select(0, rows)
                guided = guided + self.kappa * net(z_w, t_w, t_w, lab)
            w_null = 1.0 - self.omega - self.kappa
            if w_null != 0.0:
                null = torch.full((P,), NULL_LABEL, dtype=torch.long, device=z.device)
                guided = guided + w_null * net(z_w, t_w, t_w, null)
            return v.index_copy(0, rows, guided.to(v.dtype))
