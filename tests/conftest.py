"""Shared fixtures: a tiny smooth network for the float64 identity tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alphaflow.conventions import NULL_LABEL


class TinyNet(nn.Module):
    """u(z, r, t | y): an MLP on (flattened z, t, t − r, label embedding), tanh so every derivative is smooth.

    Depends on z, r, t and the label, so MeanFlow, TFM and FM targets all differ.
    """

    def __init__(self, shape: tuple[int, ...] = (1, 4, 4), hidden: int = 32, num_classes: int = 3) -> None:
        super().__init__()
        self.shape, self.num_classes = shape, num_classes
        dim = int(torch.tensor(shape).prod())
        self.label = nn.Embedding(num_classes + 1, 4)
        self.body = nn.Sequential(nn.Linear(dim + 2 + 4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None):
        if labels is None:
            labels = torch.full((z.shape[0],), NULL_LABEL, device=z.device)
        idx = torch.where(labels < 0, self.num_classes, labels)
        h = torch.cat([z.flatten(1), t[:, None], (t - r)[:, None], self.label(idx)], dim=1)
        return self.body(h).view_as(z)


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().double()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 3, (8,), generator=g)
    return x, y
