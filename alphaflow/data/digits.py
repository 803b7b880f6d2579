"""The embedded default dataset: scikit-learn's 8×8 digits (no download needed).

Images are scaled to [−1, 1], the range the samplers' outputs are read in.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from alphaflow.data.base import InMemoryData


def load_digits(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled digits: 1,797 images → x [1797, 1, 8, 8] in [−1, 1], labels [1797] int64 (10 classes).

    Read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels 0..16, then the
    label, per line) without importing scikit-learn, which would pull in scipy and pandas (a second of start-up).
    """
    table = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float64)
    x = torch.as_tensor(table[:, :64].reshape(-1, 1, 8, 8), dtype=dtype) / 16.0 * 2.0 - 1.0  # pixels are 0..16
    y = torch.as_tensor(table[:, 64].astype(np.int64))
    return x, y


def _digits_file() -> Path:
    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise RuntimeError("the embedded digits come with scikit-learn (sklearn/datasets/data/digits.csv.gz): "
                           "pip install scikit-learn, or `make setup`")
    return path


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
