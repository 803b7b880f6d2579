"""The embedded default dataset: scikit-learn's 8×8 digits (no download needed).

Images are scaled to [−1, 1], the range the samplers' outputs are read in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alphaflow.data.base import InMemoryData


def load_digits(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled digits: 1,797 images → x [1797, 1, 8, 8] in [−1, 1], labels [1797] int64 (10 classes)."""
    from sklearn.datasets import load_digits as _load  # local import: sklearn is slow to import

    bunch = _load()
    x = torch.as_tensor(bunch.images, dtype=dtype).unsqueeze(1) / 16.0 * 2.0 - 1.0  # pixels are 0..16
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return x, y


class DigitsData(InMemoryData):
    """The digits as a ``TrainData``: 1,797 samples of shape (1, 8, 8) in [−1, 1], 10 classes."""

    options = ()

    @classmethod
    def planned_shape(cls, resolution: int) -> tuple[tuple[int, ...], int]:
        """Always (1, 8, 8) with 10 classes; ``resolution`` is not read."""
        return (1, 8, 8), 10

    def __init__(self) -> None:
        x, y = load_digits()
        super().__init__(x, y, num_classes=10, shape=(1, 8, 8))
