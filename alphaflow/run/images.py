"""Image grids as PNG (Pillow), for sample grids in run folders."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from alphaflow.run.files import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image


def to_uint8(images: Tensor, low: float = -1.0, high: float = 1.0) -> Tensor:
    """Map [low, high] to 0..255 with clipping. images: [B, C, H, W] float → uint8 of the same shape."""
    scaled = (images.detach().float().cpu() - low) / (high - low)
    return (scaled.clamp(0, 1) * 255).round().to(torch.uint8)


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tile [B, C, H, W] uint8 images row-major into one [C, rows·(H+pad)+pad, nrow·(W+pad)+pad] image."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=images.dtype)
    for i in range(b):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def save_grid_png(images: Tensor, path: str | Path, *, nrow: int | None = None, upscale: int = 1,
                  low: float = -1.0, high: float = 1.0) -> Path:
    """Write float images [B, C, H, W] in [low, high] as one PNG grid; C must be 1 or 3. Returns the path."""
    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1 or 3, H, W] to save as PNG, got shape {tuple(images.shape)}")
    grid = make_grid(to_uint8(images, low, high), nrow=nrow)
    if upscale > 1:
        grid = grid.repeat_interleave(upscale, dim=1).repeat_interleave(upscale, dim=2)
    array = grid.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    return _save_png(image, Path(path), "sample grid")


def save_scatter_png(points: Tensor, path: str | Path, *, size: int = 256, extent: float = 4.0) -> Path:
    """2-D points [N, 2] as a density image over [−extent, extent]², darker where denser."""
    from PIL import Image

    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [N, 2], got shape {tuple(points.shape)}")
    p = points.detach().float().cpu()
    ij = ((p + extent) / (2 * extent) * size).floor().long()
    inside = ((ij >= 0) & (ij < size)).all(dim=1)
    ij = ij[inside]
    counts = torch.zeros(size * size)
    counts.index_add_(0, (size - 1 - ij[:, 1]) * size + ij[:, 0], torch.ones(len(ij)))
    shade = 255 * (1 - (counts / counts.max().clamp(min=1)).sqrt())  # sqrt: faint regions stay visible
    return _save_png(Image.fromarray(shade.round().reshape(size, size).to(torch.uint8).numpy()), Path(path),
                     "sample scatter plot")


def _save_png(image: Image.Image, path: Path, what: str) -> Path:
    """Encode ``image`` as PNG in memory (a grid is small) and write it atomically (``WriteFailed`` on error)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue(), what=f"{what} {path.name}")
    return path
