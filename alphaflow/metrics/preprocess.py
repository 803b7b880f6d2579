"""Image preprocessing shared by the real-weight extractors (Inception for FID, DINOv2 for FDD).

The reference protocols measure *image files*: samples are written as 8-bit PNGs and read back. So the
first step here is always the same 8-bit quantisation the PNG writer applies (EDM's
``(x · 127.5 + 128).clip(0, 255).to(uint8)``, i.e. round half up), which makes features of in-memory
samples equal to features of their saved files. Real data loaded from 8-bit files is already on that grid,
and quantising it again changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_uint8_levels(images: Tensor) -> Tensor:
    """images [B, C, H, W] in [−1, 1] → float32 [B, C, H, W] holding integers 0..255 (the saved PNG's values).

    u = clamp(floor((x + 1) · 127.5 + ½), 0, 255): the inverse of the loaders' u / 127.5 − 1 on the 8-bit grid.
    """
    x = images.to(torch.float32)
    return torch.floor((x + 1.0) * 127.5 + 0.5).clamp_(0.0, 255.0)


def quantize_8bit(images: Tensor) -> Tensor:
    """images [B, C, H, W] in [−1, 1] → the same images on the 8-bit grid, still in [−1, 1]; idempotent."""
    return to_uint8_levels(images) / 127.5 - 1.0


def as_rgb(images: Tensor) -> Tensor:
    """images [B, 1 or 3, H, W] → [B, 3, H, W]; grayscale is repeated over the three channels."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [B, 1 or 3, H, W], got {list(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def inception_input(images: Tensor, size: int = 299) -> Tensor:
    """images [B, 1|3, H, W] in [−1, 1] → Inception input [B, 3, size, size] in [−1, 1].

    pytorch-fid's path on PNG files: 8-bit values / 255 → bilinear resize (align_corners=False, no
    antialias) → 2x − 1. (The original TensorFlow graph resizes with TF1's bilinear kernel and scales by
    (u − 128) / 128; both differ from this by a small fraction of a FID point, as pytorch-fid documents.)
    """
    x = to_uint8_levels(as_rgb(images)) / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


def dinov2_input(images: Tensor, size: int = 224) -> Tensor:
    """images [B, 1|3, H, W] in [−1, 1] → DINOv2 input [B, 3, size, size], ImageNet-normalised.

    The FDD protocol of Stein et al. 2023 as the EDM2 code runs it: 8-bit values / 255 → bicubic resize
    with antialiasing (torch's, EDM2's default "torch" mode) → (x − mean) / std with ImageNet mean/std.
    No clamping after the bicubic kernel's overshoot, as in EDM2.
    """
    x = to_uint8_levels(as_rgb(images)) / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std
