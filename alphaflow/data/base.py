"""The contract every training dataset meets, and the helpers the datasets share.

A dataset hands the trainer *raw rows* through a deterministic ``get`` (safe in DataLoader
workers) and turns them into model inputs with ``prepare`` on the training device, where the
only randomness (the latent posterior sample) can use the trainer's generator. Pixel and toy
data are already model inputs, so ``prepare`` is the identity for them; only latents override
``prepare``, ``fit_stats`` and the state-dict pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class TrainData:
    """Base class: ``num_classes`` (0 = unconditional) and ``shape`` of one model-facing sample.

    Unconditional datasets return labels filled with ``NULL_LABEL`` (−1), the project's marker for
    the "∅" input (``alphaflow.core.conventions``).

    Capabilities, declared on each dataset class so that callers ask the class instead of testing
    its name or type:

    ``options``
        The ``data.*`` keys the constructor reads, as keyword arguments of the same names, plus
        ``seed`` (the run's seed, not a ``data.*`` key) if it draws its data. ``build_dataset``
        passes a dataset only these.
    ``needs_path``
        What ``data.path`` must point at, for a dataset that reads files; None when it reads none.
    ``decodes_samples``
        Samples are not images yet (latents): ``attach_decoder`` must load a decoder before
        ``to_images`` gives images, for sample grids and evaluation.
    ``reference_from_source_images``
        Evaluation references cannot be computed from this data: they come from the images it was
        encoded from (``alphaflow eval --ref-images``) or from a statistics file.
    ``planned_shape(resolution)``
        (sample shape, class count) a memory plan assumes, without reading any data.
    """

    num_classes: int = 0
    shape: tuple[int, ...] = ()
    options: tuple[str, ...] = ()
    needs_path: str | None = None
    decodes_samples: bool = False
    reference_from_source_images: bool = False

    @classmethod
    def planned_shape(cls, resolution: int) -> tuple[tuple[int, ...], int]:
        """(shape, num_classes) of this dataset at ``data.resolution``, without opening it."""
        raise NotImplementedError(f"{cls.__name__} has no planned shape")

    def attach_decoder(self, vae_path: str | Path, device: str | torch.device = "cpu", *,
                       batch_size: int = 32) -> None:
        """Load the decoder that turns samples into images; only data with ``decodes_samples`` has one."""
        raise TypeError(f"{type(self).__name__} has no decoder to attach: its samples are already in data "
                        f"space (decodes_samples is False; only latent data decodes its samples)")

    def source_resolution(self, default: int) -> int:
        """Resolution of the images this data was made from (latents record theirs); ``default`` if unknown."""
        return default

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Deterministic fetch: raw [b, ...] float32 CPU and labels [b] int64 for rows ``indices`` [b]."""
        raise NotImplementedError

    def prepare(self, raw: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Raw rows (already on the training device) → model input [b, *shape]. Identity here."""
        return raw

    def fit_stats(self, generator: torch.Generator, num_samples: int = 2048) -> None:
        """Estimate normalisation statistics (latents only); nothing to fit for pixel/toy data."""

    def state_dict(self) -> dict[str, Tensor]:
        """Statistics to store in checkpoints; pixel/toy data have none."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore ``state_dict()``; refuses statistics this dataset does not have."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no statistics, but the state to load has keys "
                             f"{sorted(state)} (a checkpoint from a latent-space run?)")

    def to_images(self, x: Tensor) -> Tensor | None:
        """Model outputs [b, *shape] → images [b, C, H, W] in [−1, 1], or None if not image-like."""
        check_batch(x, self.shape, "x")
        return x if len(self.shape) == 3 else None


def as_index(indices: Sequence[int] | Tensor | np.ndarray, length: int) -> np.ndarray:
    """Row indices (list, range, array or tensor) → 1-D int64 array, refusing rows outside [0, length)."""
    if isinstance(indices, Tensor):
        indices = indices.detach().cpu().numpy()
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D (one row index per sample), got shape {idx.shape}")
    if idx.size == 0:
        return idx.astype(np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= length:
        raise IndexError(f"indices must lie in [0, {length}) for this dataset of {length} rows, got [{lo}, {hi}]")
    return idx.astype(np.int64)


def check_batch(x: Tensor, shape: tuple[int, ...], name: str) -> None:
    """Refuse a tensor that is not a batch [b, *shape]."""
    if tuple(x.shape[1:]) != tuple(shape) or x.ndim != len(shape) + 1:
        raise ValueError(f"{name} must be a batch of shape [b, {', '.join(map(str, shape))}], "
                         f"got {tuple(x.shape)}")


def uint8_to_unit(pixels: np.ndarray | Tensor) -> Tensor:
    """uint8 pixels 0..255 → float32 in [−1, 1] (0 → −1, 255 → 1), same shape."""
    return torch.as_tensor(pixels).to(torch.float32) / 127.5 - 1.0


def existing_dir(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or a ValueError naming ``what`` if it is not an existing folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{what} {str(p)!r} does not exist")
    if not p.is_dir():
        raise ValueError(f"{what} {str(p)!r} is not a folder")
    return p


class InMemoryData(TrainData):
    """A dataset held as tensors: x [N, ...] (float32, or uint8 pixels mapped on fetch) and labels [N]."""

    def __init__(self, x: Tensor, labels: Tensor, num_classes: int, shape: tuple[int, ...]) -> None:
        if x.shape[0] != labels.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but labels has {labels.shape[0]}")
        self.x, self.labels = x, labels.to(torch.int64)
        self.num_classes, self.shape = num_classes, tuple(shape)

    def __len__(self) -> int:
        return self.x.shape[0]

    def get(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``indices`` [b] → (x [b, *shape] float32, labels [b] int64), both fresh CPU tensors."""
        idx = torch.from_numpy(as_index(indices, len(self)))
        x = self.x[idx]
        # uint8 storage keeps CIFAR-10 at 150 MB instead of 600 MB; map to [−1, 1] per batch
        x = uint8_to_unit(x) if x.dtype == torch.uint8 else x.to(torch.float32)
        return x, self.labels[idx].clone()
