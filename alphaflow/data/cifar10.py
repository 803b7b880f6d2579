"""CIFAR-10 (training split) from a local copy of the python batches; nothing is downloaded.

``path`` is the ``cifar-10-batches-py`` folder unpacked from ``cifar-10-python.tar.gz``: five
pickled dicts ``data_batch_1..5`` with b"data" uint8 [n, 3072] (1024 red, 1024 green, 1024 blue
bytes, each a row-major 32×32 plane) and b"labels" (n ints in 0..9).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from alphaflow.data.base import InMemoryData, existing_dir

BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch → (pixels uint8 [n, 3, 32, 32], labels int64 [n]); ValueError naming a malformed file."""
    expected = "a pickled dict with b'data' (uint8 [n, 3072]) and b'labels' (n ints in 0..9)"
    try:
        with open(file, "rb") as f:
            # the official batches are Python-2 pickles: bytes keys, hence encoding="bytes"
            batch = pickle.load(f, encoding="bytes")
    except Exception as err:  # any unpickling failure means the file is not a CIFAR batch
        raise ValueError(f"cifar10: cannot read {file} ({type(err).__name__}: {err}); expected {expected}") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"cifar10: {file} holds {keys}; expected {expected}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"cifar10: {file} b'data' is {data.dtype} {data.shape}; expected {expected}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"cifar10: {file} b'labels' has shape {labels.shape} ({labels.dtype}) for "
                         f"{data.shape[0]} images; expected {expected}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"cifar10: {file} has labels in [{labels.min()}, {labels.max()}]; expected 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def find_batches(path: str | Path) -> Path:
    """The folder holding ``data_batch_1..5``: ``path`` itself or its ``cifar-10-batches-py`` child."""
    root = existing_dir(path, "cifar10 path")
    if not (root / BATCHES[0]).exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"  # accept the folder the tarball was unpacked into, too
    missing = [name for name in BATCHES if not (root / name).is_file()]
    if missing:
        raise ValueError(f"cifar10: {root} lacks {', '.join(missing)}; expected the five training batches "
                         f"data_batch_1..data_batch_5 of the python version (cifar-10-batches-py)")
    return root


class Cifar10Data(InMemoryData):
    """CIFAR-10 training images: shape (3, 32, 32) in [−1, 1] (pixel p → p / 127.5 − 1), 10 classes.

    Kept as uint8 in memory (150 MB for 50,000 images) and mapped to float per fetched batch.
    """

    options = ("path",)
    needs_path = "the cifar-10-batches-py folder (data_batch_1..5)"

    @classmethod
    def planned_shape(cls, resolution: int) -> tuple[tuple[int, ...], int]:
        """Always (3, 32, 32) with 10 classes; ``resolution`` is not read."""
        return (3, 32, 32), 10

    def __init__(self, path: str | Path) -> None:
        root = find_batches(path)
        parts = [read_batch(root / name) for name in BATCHES]
        pixels = torch.from_numpy(np.concatenate([p for p, _ in parts]))
        labels = torch.from_numpy(np.concatenate([y for _, y in parts]))
        super().__init__(pixels, labels, num_classes=10, shape=(3, 32, 32))
        self.classes = list(CLASSES)
