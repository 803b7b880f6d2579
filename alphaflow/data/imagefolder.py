"""Images in the ImageNet layout ``root/<class_name>/<image files>``, decoded and resized on fetch.

Classes are the sorted folder names → indices 0..K−1. Each image becomes RGB, then the ADM
(guided-diffusion) centre crop: halve with a box filter while the short side is at least twice
the target (cheap and alias-free), bicubic-resize so the short side equals ``resolution``, and
crop the centre square. A derivative of the official code resizes with Lanczos
(docs/official_code.md#image-preprocessing); ADM's recipe is the one the DiT/SiT/MeanFlow latent
pipelines share, so it is used here and in ``extract_latents``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image

_Size = tuple[int, int]  # (width, height) of an image

from alphaflow.data.base import TrainData, as_index, existing_dir, uint8_to_unit

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def scan_image_folder(root: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """List ``root/<class>/**/<image>`` → (classes sorted, files relative to root sorted, labels int64 [n]).

    Hidden folders/files (a leading dot) are skipped. ValueError if there are no class folders, no
    images, or a class folder without images (its index would silently mean nothing).
    """
    root = existing_dir(root, "image folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class folders; expected the ImageNet layout "
                         f"<root>/<class_name>/<image files> ({', '.join(EXTENSIONS)})")
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        found = []
        for folder, subdirs, names in os.walk(root / name):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            found += [os.path.join(folder, n) for n in names
                      if not n.startswith(".") and n.lower().endswith(EXTENSIONS)]
        if not found:
            empty.append(name)
        found = sorted(os.path.relpath(f, root) for f in found)
        files += found
        labels += [index] * len(found)
    if not files:
        raise ValueError(f"image folder {str(root)!r} has class folders but no images "
                         f"(extensions {', '.join(EXTENSIONS)}, any case)")
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(f"image folder {str(root)!r}: class folders without images: {shown}")
    return classes, files, np.asarray(labels, dtype=np.int64)


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """ADM centre crop of a PIL image → PIL image of ``resolution`` × ``resolution`` (same mode)."""
    from PIL import Image

    while min(image.size) >= 2 * resolution:
        image = image.resize(cast(_Size, tuple(s // 2 for s in image.size)), resample=Image.Resampling.BOX)
    scale = resolution / min(image.size)
    image = image.resize(cast(_Size, tuple(round(s * scale) for s in image.size)), resample=Image.Resampling.BICUBIC)
    left, top = (image.size[0] - resolution) // 2, (image.size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def load_image(file: str | Path, resolution: int) -> Tensor:
    """Decode one image file → float32 [3, resolution, resolution] in [−1, 1]."""
    from PIL import Image

    image: Image.Image  # the opened file, then its crop
    try:
        with Image.open(file) as image:
            image = center_crop_resize(image.convert("RGB"), resolution)
    except Exception as err:  # truncated/corrupt files: say which one
        raise ValueError(f"cannot decode image {str(file)!r} ({type(err).__name__}: {err})") from err
    return uint8_to_unit(np.asarray(image).transpose(2, 0, 1).copy())


class ImageFolderData(TrainData):
    """An ImageNet-layout folder: shape (3, R, R) in [−1, 1], ``num_classes`` = number of class folders.

    Only the file list is held in memory; ``get`` decodes, so use DataLoader workers for throughput.
    """

    options = ("path", "resolution")
    needs_path = "an ImageNet-layout folder <path>/<class_name>/<images>"

    @classmethod
    def planned_shape(cls, resolution: int) -> tuple[tuple[int, ...], int]:
        """(3, R, R), planned with ImageNet's 1000 classes (the class count is known only from the folder)."""
        return (3, resolution, resolution), 1000

    def __init__(self, path: str | Path, resolution: int = 256) -> None:
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        self.root = Path(path).expanduser()
        self.classes, self.files, self.labels = scan_image_folder(self.root)
        self.resolution = resolution
        self.num_classes, self.shape = len(self.classes), (3, resolution, resolution)

    def __len__(self) -> int:
        return len(self.files)

    def get(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``indices`` [b] → (images [b, 3, R, R] float32 in [−1, 1], labels [b] int64)."""
        idx = as_index(indices, len(self))
        images = [load_image(self.root / self.files[i], self.resolution) for i in idx]
        x = torch.stack(images) if images else torch.empty(0, *self.shape)
        return x, torch.from_numpy(self.labels[idx])
