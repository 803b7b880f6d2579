"""Training data: a registry of datasets behind one ``TrainData`` contract (see ``base.py``).

    data = build_dataset("cifar10", path="~/data/cifar-10-batches-py")
    raw, labels = data.get(indices)          # deterministic, CPU, fine in DataLoader workers
    x = data.prepare(raw.to(device), gen)    # model input [b, *data.shape]

Names: digits (embedded 8×8), toy2d (moons / gaussians8 / checkerboard), cifar10 (python batches),
imagefolder (ImageNet layout), latents (a folder written by ``extract_latents``).

Each dataset class declares what it reads and what it can do (``TrainData.options``, ``needs_path``,
``decodes_samples``, ``reference_from_source_images``, ``planned_shape``: see ``base.py``), so the
trainer, evaluation and the memory plan ask the class (``dataset_class(name)``) instead of its name.
A run builds its dataset with ``dataset_from_config(cfg.data, cfg.seed)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alphaflow.data.base import TrainData
from alphaflow.data.cifar10 import Cifar10Data
from alphaflow.data.digits import DigitsData, load_digits
from alphaflow.data.imagefolder import ImageFolderData
from alphaflow.data.latent_data import LatentData
from alphaflow.data.latents import extract_latents
from alphaflow.data.toy2d import Toy2DData


DATASETS: dict[str, type[TrainData]] = {
    "digits": DigitsData, "toy2d": Toy2DData, "cifar10": Cifar10Data, "imagefolder": ImageFolderData,
    "latents": LatentData,
}
# every data.* key some dataset reads (``TrainData.options`` less the run's seed), in a fixed order
DATA_OPTIONS: tuple[str, ...] = tuple(dict.fromkeys(o for cls in DATASETS.values() for o in cls.options
                                                    if o != "seed"))


def dataset_class(name: str) -> type[TrainData]:
    """The class registered as ``name``; ValueError for an unknown ``data.name``, naming close matches."""
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), list(DATASETS), n=3)
        hint = f". Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown dataset {name!r} (data.name); valid: {', '.join(DATASETS)}{hint}")
    return DATASETS[name]


def check_data_options(name: str, path: str | Path | None) -> Path | None:
    """Refuse an unknown ``data.name`` (with close matches) or a missing ``data.path``; return the path.

    The path is checked only for a dataset with ``needs_path``; the others return None.
    """
    needs = dataset_class(name).needs_path
    if needs is None:
        return None
    if path is None or str(path) == "":
        raise ValueError(f"dataset {name!r} needs data.path: {needs}")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ValueError(f"data.path {str(folder)!r} does not exist (dataset {name!r} expects {needs})")
    return folder


def build_dataset(name: str, *, seed: int = 0, **options: Any) -> TrainData:
    """The dataset registered as ``name`` (``DATASETS``), built from ``data.*`` options given as keywords.

    Each dataset receives only the options it declares (``TrainData.options``; ``seed`` counts as one)
    and its own defaults for those not given; options other datasets read are ignored. Raises
    ValueError for an option no dataset reads, an unknown name (with close matches) and a missing
    or non-existent ``data.path`` where the dataset needs one.
    """
    unknown = sorted(set(options) - set(DATA_OPTIONS))
    if unknown:
        raise ValueError(f"unknown data option(s) {', '.join(map(repr, unknown))} for build_dataset; "
                         f"datasets read {', '.join(DATA_OPTIONS)}")
    cls = dataset_class(name)
    given = {**options, "seed": seed}
    kwargs = {key: given[key] for key in cls.options if key in given}
    if cls.needs_path is not None:
        kwargs["path"] = check_data_options(name, options.get("path"))
    return cls(**kwargs)


_MISSING = object()


def _field(data_cfg: Any, key: str) -> Any:
    """``data_cfg.key`` (or ``data_cfg[key]`` for a mapping); ``_MISSING`` if it has none, except for the name."""
    value = data_cfg.get(key, _MISSING) if isinstance(data_cfg, Mapping) else getattr(data_cfg, key, _MISSING)
    if key == "name" and value is _MISSING:
        raise ValueError(f"the data section {data_cfg!r} has no name (data.name)")
    return value


def dataset_options(data_cfg: Any) -> dict[str, Any]:
    """The options the dataset named by ``data_cfg.name`` declares, read from ``data_cfg`` (a config's
    ``data`` section: a dataclass or other object with those attributes, or a mapping such as
    ``dataclasses.asdict`` gives). ``seed`` is not read; an option ``data_cfg`` lacks keeps the dataset's default."""
    values = {key: _field(data_cfg, key) for key in dataset_class(_field(data_cfg, "name")).options if key != "seed"}
    return {key: value for key, value in values.items() if value is not _MISSING}


def dataset_from_config(data_cfg: Any, seed: int = 0) -> TrainData:
    """``build_dataset`` for a config's ``data`` section (see ``dataset_options``) and the run's ``seed``."""
    return build_dataset(_field(data_cfg, "name"), seed=seed, **dataset_options(data_cfg))


__all__ = ["DATASETS", "DATA_OPTIONS", "TrainData", "build_dataset", "check_data_options", "dataset_class",
           "dataset_from_config", "dataset_options", "extract_latents", "load_digits",
           "DigitsData", "Toy2DData", "Cifar10Data", "ImageFolderData", "LatentData"]
