"""Training data: a registry of datasets behind one ``TrainData`` contract (see ``base.py``).

    data = build_dataset("cifar10", path="~/data/cifar-10-batches-py")
    raw, labels = data.get(indices)          # deterministic, CPU, fine in DataLoader workers
    x = data.prepare(raw.to(device), gen)    # model input [b, *data.shape]

Names: digits (embedded 8×8), toy2d (moons / gaussians8 / checkerboard), cifar10 (python batches),
imagefolder (ImageNet layout), latents (a folder written by ``extract_latents``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from alphaflow.data.base import TrainData
from alphaflow.data.cifar10 import Cifar10Data
from alphaflow.data.digits import DigitsData, load_digits
from alphaflow.data.imagefolder import ImageFolderData
from alphaflow.data.latent_data import LatentData
from alphaflow.data.latents import extract_latents
from alphaflow.data.toy2d import Toy2DData


# Each factory takes the full set of data options and uses the ones its dataset needs.
def _digits(*, path: Path | None, resolution: int, toy: str, toy_size: int, seed: int) -> TrainData:
    return DigitsData()


def _toy2d(*, path: Path | None, resolution: int, toy: str, toy_size: int, seed: int) -> TrainData:
    return Toy2DData(toy=toy, toy_size=toy_size, seed=seed)


def _cifar10(*, path: Path | None, resolution: int, toy: str, toy_size: int, seed: int) -> TrainData:
    return Cifar10Data(path)


def _imagefolder(*, path: Path | None, resolution: int, toy: str, toy_size: int, seed: int) -> TrainData:
    return ImageFolderData(path, resolution=resolution)


def _latents(*, path: Path | None, resolution: int, toy: str, toy_size: int, seed: int) -> TrainData:
    return LatentData(path)


DATASETS: dict[str, Callable[..., TrainData]] = {
    "digits": _digits, "toy2d": _toy2d, "cifar10": _cifar10, "imagefolder": _imagefolder, "latents": _latents,
}
# what data.path must point at, for the datasets that read files
NEEDS_PATH = {
    "cifar10": "the cifar-10-batches-py folder (data_batch_1..5)",
    "imagefolder": "an ImageNet-layout folder <path>/<class_name>/<images>",
    "latents": "a folder written by extract_latents (meta.json, mean.npy, logvar.npy, labels.npy)",
}


def check_data_options(name: str, path: str | Path | None) -> Path | None:
    """Refuse an unknown ``data.name`` (with close matches) or a missing ``data.path``; return the path."""
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), list(DATASETS), n=3)
        hint = f". Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown dataset {name!r} (data.name); valid: {', '.join(DATASETS)}{hint}")
    if name in NEEDS_PATH:
        if path is None or str(path) == "":
            raise ValueError(f"dataset {name!r} needs data.path: {NEEDS_PATH[name]}")
        folder = Path(path).expanduser()
        if not folder.exists():
            raise ValueError(f"data.path {str(folder)!r} does not exist (dataset {name!r} expects "
                             f"{NEEDS_PATH[name]})")
        return folder
    return None


def build_dataset(name: str, *, path: str | Path | None = None, resolution: int = 256, toy: str = "moons",
                  toy_size: int = 8192, seed: int = 0) -> TrainData:
    """The dataset registered as ``name`` (``DATASETS``), built from the ``data.*`` options.

    ``path`` is read by cifar10, imagefolder and latents; ``resolution`` by imagefolder; ``toy``,
    ``toy_size`` and ``seed`` by toy2d. Raises ValueError for an unknown name (with close matches)
    and for a missing or non-existent ``data.path``.
    """
    folder = check_data_options(name, path)
    return DATASETS[name](path=folder, resolution=resolution, toy=toy, toy_size=toy_size, seed=seed)


__all__ = ["DATASETS", "NEEDS_PATH", "TrainData", "build_dataset", "extract_latents", "load_digits",
           "DigitsData", "Toy2DData", "Cifar10Data", "ImageFolderData", "LatentData"]
