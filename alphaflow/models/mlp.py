"""An MLP average-velocity network for vector data (the 2-D toy sets): u(z, r, t | y), z: [B, D].

Conditioning mirrors the DiT (docs/conventions.md#the-backbone): sinusoidal embeddings of t and t − r plus a label table
with a null row (index num_classes; NULL_LABEL maps there). The output layer is zero-initialised,
so u ≡ 0 at initialisation, like the DiT. Its Linear layers skip the zero weight tangent under
``torch.func.jvp`` (``alphaflow.models.tangent.Linear``); it has no tangent mode of its own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alphaflow.core.conventions import NULL_LABEL
from alphaflow.models.dit import TimestepEmbedder
from alphaflow.models.tangent import Linear


class MLP(nn.Module):
    """z [B, D], r, t [B], labels [B] or None → u [B, D]. ``depth`` SiLU layers of width ``hidden``."""

    def __init__(self, *, dim: int = 2, hidden: int = 256, depth: int = 4, num_classes: int = 0,
                 time_scale: float = 1.0) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.t_embedder = TimestepEmbedder(hidden, time_scale=time_scale)
        self.d_embedder = TimestepEmbedder(hidden, time_scale=time_scale)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden)
        self.inp = Linear(dim, hidden)
        self.layers = nn.ModuleList([Linear(hidden, hidden) for _ in range(depth)])
        self.out = Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape [B, {self.dim}], got {tuple(z.shape)}")
        if labels is None:
            labels = torch.full((z.shape[0],), NULL_LABEL, dtype=torch.long, device=z.device)
        idx = torch.where(labels == NULL_LABEL, torch.full_like(labels, self.num_classes), labels)
        c = self.t_embedder(t) + self.d_embedder(t - r) + self.y_embedder(idx)  # [B, hidden]
        h = self.inp(z) + c
        for layer in self.layers:
            h = h + layer(nn.functional.silu(h))  # residual keeps deep stacks trainable
        return self.out(nn.functional.silu(h))
