"""2-D toy point sets, for watching a few-step sampler transport mass in the plane.

Each set is drawn once, deterministically from ``seed``, and standardised per coordinate
(zero mean, unit std) so the same network and noise scale suit all three.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alphaflow.core.conventions import NULL_LABEL
from alphaflow.data.base import InMemoryData


def _moons(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two interleaved half circles (as scikit-learn's make_moons), noise 0.05; label = which moon."""
    label = torch.randint(0, 2, (n,), generator=g)
    angle = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    points = torch.where(label[:, None] == 0, upper, lower)
    return points + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64), label


def _gaussians8(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Eight Gaussians (std 0.1) centred on the unit circle; label = which component."""
    label = torch.randint(0, 8, (n,), generator=g)
    angle = label.to(torch.float64) * (2 * math.pi / 8)
    centres = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64), label


def _checkerboard(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform on the dark squares of a 4×4 board over [−2, 2]²; unconditional."""
    x = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2
    # a unit square at height [0, 1) or [−2, −1), lifted by one in odd columns: the squares alternate
    y = torch.rand(n, generator=g, dtype=torch.float64) - 2 * torch.randint(0, 2, (n,), generator=g)
    y = y + torch.floor(x) % 2
    return torch.stack([x, y], dim=1), torch.full((n,), NULL_LABEL, dtype=torch.int64)


# kind → (sampler, num_classes)
TOYS = {"moons": (_moons, 2), "gaussians8": (_gaussians8, 8), "checkerboard": (_checkerboard, 0)}


def make_toy(kind: str, size: int, seed: int = 0) -> tuple[Tensor, Tensor, int]:
    """Draw ``size`` points of toy ``kind`` → (x [size, 2] float32 standardised, labels [size] int64, num_classes)."""
    if kind not in TOYS:
        raise ValueError(f"unknown toy {kind!r} (data.toy); valid: {', '.join(sorted(TOYS))}")
    if size < 2:
        raise ValueError(f"toy_size must be at least 2 points, got {size}")
    sampler, num_classes = TOYS[kind]
    x, labels = sampler(size, torch.Generator().manual_seed(seed))
    x = (x - x.mean(0)) / x.std(0)
    return x.to(torch.float32), labels, num_classes


class Toy2DData(InMemoryData):
    """``toy_size`` points of one toy set: shape (2,), per-coordinate std 1.

    num_classes: moons 2 (which moon), gaussians8 8 (which component), checkerboard 0 (labels −1).
    """

    options = ("toy", "toy_size", "seed")

    @classmethod
    def planned_shape(cls, resolution: int) -> tuple[tuple[int, ...], int]:
        """(2,), planned unconditional: a toy set's few classes add a negligible label embedding."""
        return (2,), 0

    def __init__(self, toy: str = "moons", toy_size: int = 8192, seed: int = 0) -> None:
        x, labels, num_classes = make_toy(toy, toy_size, seed)
        super().__init__(x, labels, num_classes=num_classes, shape=(2,))
        self.toy = toy
