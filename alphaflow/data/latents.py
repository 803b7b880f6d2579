"""Pre-extracted VAE latents: the on-disk format, loading a local VAE, and ``extract_latents``.

Images are encoded once by the SD-VAE (ft-EMA; docs/conventions.md#latent-data-and-normalisation) and the posterior *mean and
log-variance* are stored per image, so training can draw a fresh posterior sample every time an
image is loaded. A latents folder holds

    meta.json     {"format", "version", "num", "shape": [C, H, W], "num_classes", "classes",
                   "resolution", "vae_path", "dtype"}
    mean.npy      float16 [num, C, H, W]   raw ``latent_dist.mean`` (no 0.18215 scaling:
    logvar.npy    float16 [num, C, H, W]   training normalises per element instead)
    labels.npy    int64   [num]

The reader is ``alphaflow.data.latent_data.LatentData``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from alphaflow.data.imagefolder import ImageFolderData

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

FORMAT, VERSION = "alphaflow-latents", 1
META, MEAN, LOGVAR, LABELS = "meta.json", "mean.npy", "logvar.npy", "labels.npy"


def load_vae(vae_path: str | Path, device: str | torch.device = "cpu") -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` from a LOCAL folder (config.json + weights), in eval mode on ``device``.

    Nothing is downloaded: get the weights once (e.g. ``stabilityai/sd-vae-ft-ema``) and point here.
    """
    path = Path(vae_path).expanduser()
    if not (path / "config.json").is_file():
        state = "is not a folder" if not path.is_dir() else "has no config.json"
        if not path.exists():
            state = "does not exist"
        raise ValueError(f"vae_path {str(path)!r} {state}; the VAE weights must be a local diffusers folder "
                         f"(config.json + diffusion_pytorch_model.safetensors), e.g. SD-VAE ft-EMA "
                         f"(stabilityai/sd-vae-ft-ema) saved with save_pretrained; nothing is downloaded")
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ImportError("latents need the `diffusers` package (pip install diffusers) for the VAE") from err
    # low_cpu_mem_usage=False: the default wants `accelerate` and warns when it is absent
    vae = AutoencoderKL.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
    return vae.to(device).eval().requires_grad_(False)


class _Batches(torch.utils.data.Dataset[tuple[Tensor, Tensor]]):
    """Consecutive row batches of an image folder, so DataLoader workers can decode while the VAE encodes."""

    def __init__(self, images: ImageFolderData, batch_size: int) -> None:
        self.images, self.batch_size = images, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        start = i * self.batch_size
        return self.images.get(range(start, min(start + self.batch_size, len(self.images))))


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out {str(out)!r} already exists and is not an empty folder; "
                         f"refusing to overwrite it (remove it or pick another path)")


@torch.no_grad()
def _encode_all(images: ImageFolderData, vae: AutoencoderKL, folder: Path, *, batch_size: int, device: str,
                num_workers: int) -> tuple[int, ...]:
    """Encode every image into ``folder``/mean.npy, logvar.npy (float16, written in chunks); returns (C, H, W)."""
    loader = torch.utils.data.DataLoader(_Batches(images, batch_size), batch_size=None, num_workers=num_workers)
    arrays: dict[str, np.memmap] = {}
    start = 0
    for x, _ in loader:
        posterior = vae.encode(x.to(device, vae.dtype)).latent_dist
        for name, value in ((MEAN, posterior.mean), (LOGVAR, posterior.logvar)):
            if name not in arrays:  # the latent shape is known only after the first batch
                arrays[name] = np.lib.format.open_memmap(folder / name, mode="w+", dtype=np.float16,
                                                         shape=(len(images), *value.shape[1:]))
            arrays[name][start:start + len(x)] = value.float().cpu().numpy().astype(np.float16)
        start += len(x)
    for array in arrays.values():
        array.flush()
    shape = tuple(arrays[MEAN].shape[1:])
    del arrays  # closes the memmaps before the folder is renamed
    return shape


def extract_latents(image_root: str | Path, vae_path: str | Path, out: str | Path, *, resolution: int = 256,
                    batch_size: int = 32, device: str = "cpu", num_workers: int = 0) -> Path:
    """Encode an ImageNet-layout folder with a local VAE into a latents folder at ``out``; returns ``out``.

    Images get the same preprocessing as the ``imagefolder`` dataset (ADM centre crop to
    ``resolution``), are encoded in eval mode under no_grad, and the posterior mean and log-variance
    [N, C, R/f, R/f] are stored as float16 (f = the VAE's downsampling factor, 8 for SD-VAE).
    Everything is written under a hidden temporary name and renamed at the end, so a crash never
    leaves a folder that looks complete. ``out`` must not exist or be an empty folder.
    """
    out = Path(out).expanduser()
    _check_out(out)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    images = ImageFolderData(image_root, resolution)
    vae = load_vae(vae_path, device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % factor:
        raise ValueError(f"resolution {resolution} is not a multiple of the VAE's downsampling factor {factor}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)  # a leftover of this very process id: never a finished folder
    tmp.mkdir()
    try:
        shape = _encode_all(images, vae, tmp, batch_size=batch_size, device=device, num_workers=num_workers)
        np.save(tmp / LABELS, images.labels.astype(np.int64))
        meta = dict(format=FORMAT, version=VERSION, num=len(images), shape=list(shape),
                    num_classes=images.num_classes, classes=images.classes, resolution=resolution,
                    vae_path=str(Path(vae_path).expanduser().resolve()), dtype="float16")
        (tmp / META).write_text(json.dumps(meta, indent=1))
        _check_out(out)  # someone may have filled it while we encoded
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
