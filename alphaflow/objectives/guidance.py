"""Classifier-free guidance baked into training: the guided velocity ṽ that replaces v in every target.

Also the ``objective.guidance`` config section (its fields are plain numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from alphaflow.core.amp import target_pass
from alphaflow.core.conventions import NULL_LABEL

Net = Callable[..., Tensor]  # net(z [B,...], r [B], t [B], labels [B] | None) -> u [B,...]

# How labels are dropped (``Guidance.dropout_style``): "project" (α-Flow's official code: per row, inside the window;
# a dropped row's target stays guided) or "official_jax" (MeanFlow's JAX code: the leading rows, a dropped row
# regresses the plain v).
DROPOUT_STYLES = ("project", "official_jax")


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance baked into training (arXiv 2510.20771 §4.2, as in MeanFlow, arXiv 2505.13447).

    For rows with t_min < t < t_max the velocity is replaced, without gradient, by
        ṽ = ω·v + κ·u_θ(z_t, t, t | c) + (1 − ω − κ)·u_θ(z_t, t, t | ∅),
    an effective guidance scale ω′ = ω/(1 − κ). The defaults (ω = 1, κ = 0) mean no guidance: ṽ = v.

    Label dropout, ``dropout_style``:
      "project" (α-Flow's official ``loss.py``): inside the window each label is dropped to ∅ with probability
        ``label_dropout``; a dropped row is unconditional in every pass of that step, so its ṽ is
        ω·v + (1 − ω)·u_θ(z_t, t, t | ∅), and on r < t rows the unconditional network learns the MeanFlow target.
      "official_jax" (MeanFlow's official JAX ``cond_drop``): k ~ Binomial(B, label_dropout) rows are dropped, the
        leading k of the batch (the r = t rows come first, so in practice those), whatever their t; a dropped row
        regresses ṽ = v. The unconditional network is then trained at r = t only (while k ≤ ⌊B·ratio_fm⌋).
    """

    omega: float = 1.0
    kappa: float = 0.0
    t_min: float = 0.0
    t_max: float = 1.0
    label_dropout: float = 0.0
    dropout_style: str = "project"

    def __post_init__(self) -> None:
        for name in ("omega", "kappa"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"guidance.{name} must be finite, got {getattr(self, name)}")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise ValueError(f"guidance window needs 0 <= t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}")
        if not 0.0 <= self.label_dropout <= 1.0:
            raise ValueError(f"guidance.label_dropout must lie in [0, 1], got {self.label_dropout}")
        if self.dropout_style not in DROPOUT_STYLES:
            raise ValueError(f"guidance.dropout_style must be one of {list(DROPOUT_STYLES)}, "
                             f"got {self.dropout_style!r}")

    @property
    def guides(self) -> bool:
        return self.omega != 1.0 or self.kappa != 0.0

    def window(self, t: Tensor) -> Tensor:
        """[B] bool: rows whose t lies strictly inside (t_min, t_max)."""
        return (t > self.t_min) & (t < self.t_max)

    def drop_labels(self, labels: Tensor | None, t: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """labels [B] with the dropped rows set to ``NULL_LABEL``; t: [B]. One uniform u_i per row either way:
        "project" drops row i where u_i < label_dropout and t_min < t_i < t_max; "official_jax" drops rows
        i < k = #{j: u_j < label_dropout} (on the device, no host sync)."""
        if labels is None or self.label_dropout == 0.0:
            return labels
        u = torch.rand(labels.shape[0], generator=generator, device=labels.device)
        if self.dropout_style == "official_jax":
            drop = torch.arange(labels.shape[0], device=labels.device) < (u < self.label_dropout).sum()
        else:
            drop = (u < self.label_dropout) & self.window(t)
        return torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)

    def guided_velocity(self, net: Net, z: Tensor, t: Tensor, v: Tensor, labels: Tensor | None) -> Tensor:
        """ṽ [B, ...] from v [B, ...]; network passes at r = t, no gradient, skipped when their weight is 0.

        The window rows depend on the values of t, so they are found by one ``nonzero`` (the step's one
        host sync when guiding); the rest is index_select / index_copy. The passes run under
        ``target_pass`` (no grad, autocast without its weight cache: ``alphaflow.core.amp``). With
        ``dropout_style="official_jax"`` the rows whose label is ∅ (the dropped ones) keep ṽ = v.
        """
        if not self.guides:
            return v
        rows = self.window(t).nonzero().squeeze(1)  # [P]
        P = rows.shape[0]
        if P == 0:
            return v
        guided = self._window_velocity(net, z, t, v, labels, rows)
        if self.dropout_style == "official_jax" and labels is not None:
            dropped = (labels == NULL_LABEL).reshape(-1, *([1] * (v.ndim - 1)))
            guided = torch.where(dropped, v, guided)
        return guided

    def _window_velocity(self, net: Net, z: Tensor, t: Tensor, v: Tensor, labels: Tensor | None,
                         rows: Tensor) -> Tensor:
        """v [B, ...] with the guided velocity on the window rows ``rows`` ([P] int64, P > 0)."""
        P = rows.shape[0]
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
