"""Training on pre-extracted latents: a fresh posterior sample per load, normalised per element.

``get`` returns the stored posterior [b, 2C, H, W] (mean ‖ log-variance on dim 1) from lazily
opened memmaps; ``prepare`` draws z = mean + exp(½·logvar)·ε on the training device with the
trainer's generator and normalises z per element (c, h, w) with statistics fitted once from 2048
posterior samples (``fit_stats``) and carried in checkpoints (``state_dict``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from alphaflow.core.conventions import NULL_LABEL
from alphaflow.data.base import TrainData, as_index, check_batch, existing_dir
from alphaflow.data.latents import FORMAT, LABELS, LOGVAR, MEAN, META, load_vae

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

STAT_KEYS = ("latent_mean", "latent_std")


def read_meta(root: Path) -> dict[str, Any]:
    """``root``/meta.json as a dict, checked for the keys the reader needs."""
    file = root / META
    if not file.is_file():
        raise ValueError(f"latents path {str(root)!r} has no {META}; expected a folder written by extract_latents")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{file} holds a JSON {type(meta).__name__}; expected the object written by extract_latents")
    missing = [k for k in ("num", "shape", "num_classes") if k not in meta]
    if missing or meta.get("format", FORMAT) != FORMAT:
        raise ValueError(f"{file} is not alphaflow latents metadata (missing keys {missing}, "
                         f"format {meta.get('format')!r}, expected {FORMAT!r})")
    shape, counts = meta["shape"], (meta["num"], meta["num_classes"])
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ValueError(f"{file}: shape must be [C, H, W] of positive ints, got {shape!r}")
    if not all(isinstance(c, int) and c >= 0 for c in counts):
        raise ValueError(f"{file}: num and num_classes must be non-negative ints, got {counts}")
    return meta


def _open(file: Path, shape: tuple[int, ...], kinds: str) -> np.ndarray:
    """Memory-map one .npy file, refusing a missing file, a wrong shape or a wrong dtype kind."""
    if not file.is_file():
        raise ValueError(f"latents file {file} is missing")
    try:
        array: np.ndarray = np.load(file, mmap_mode="r")
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"cannot read {file} as a .npy array ({type(err).__name__}: {err})") from err
    if array.shape != shape or array.dtype.kind not in kinds:
        raise ValueError(f"{file} holds {array.dtype} {array.shape}; meta.json says {shape} "
                         f"({'float' if kinds == 'f' else 'integer'})")
    return array


# (device, dtype) → the fitted statistics and their mean and std there (``LatentData._stats_like``)
_StatsCache = tuple[tuple[torch.device, torch.dtype], dict[str, Tensor], Tensor, Tensor]


class LatentData(TrainData):
    """A latents folder: shape (C, H, W); ``get`` gives raw [b, 2C, H, W], ``prepare`` the model input.

    Samples are normalised latents: ``attach_decoder`` loads the VAE that turns them into images, and
    evaluation references come from the images the latents were encoded from.
    """

    options = ("path",)
    needs_path = "a folder written by extract_latents (meta.json, mean.npy, logvar.npy, labels.npy)"
    decodes_samples = True
    reference_from_source_images = True

    @classmethod
    def planned_shape(cls, resolution: int) -> tuple[tuple[int, ...], int]:
        """Planned as ImageNet's SD-VAE latents of R² images: (4, R/8, R/8), 1000 classes."""
        return (4, resolution // 8, resolution // 8), 1000

    def __init__(self, path: str | Path) -> None:
        self.root = existing_dir(path, "latents path").resolve()
        meta = read_meta(self.root)
        self.num, self.shape = int(meta["num"]), tuple(meta["shape"])
        self.num_classes = int(meta["num_classes"])
        self.classes = list(meta.get("classes", []))
        self.meta = meta
        if self.num == 0:  # metadata only (an imported network's run folder): it samples, it has nothing to train on
            self.labels = np.zeros(0, dtype=np.int64)
        else:
            for name in (MEAN, LOGVAR):  # validate now; the memmaps themselves are opened per process in get
                _open(self.root / name, (self.num, *self.shape), "f")
            self.labels = np.array(_open(self.root / LABELS, (self.num,), "iu"), dtype=np.int64)
        if self.num_classes > 0:
            valid = (self.labels >= 0) & (self.labels < self.num_classes)
        else:  # unconditional: every label is the null label
            valid = self.labels == NULL_LABEL
        if not valid.all():
            raise ValueError(f"{self.root / LABELS} has labels in [{self.labels.min()}, {self.labels.max()}] "
                             f"but meta.json says num_classes = {self.num_classes}")
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.stats: dict[str, Tensor] | None = None
        self.decoder: AutoencoderKL | None = None
        self.decode_batch_size = 32
        self._stats_cache: _StatsCache | None = None  # the statistics on the training device (see _stats_like)

    def __getstate__(self) -> dict[str, Any]:
        # memmaps are reopened in each worker; the decoder is for sample grids, not for workers
        return {**self.__dict__, "_arrays": None, "decoder": None, "_stats_cache": None}

    def __len__(self) -> int:
        return self.num

    def get(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``indices`` [b] → (raw [b, 2C, H, W] float32 = mean ‖ logvar on dim 1, labels [b] int64)."""
        if self.num == 0:
            raise ValueError(f"{self.root} holds no latents, only their shape (an imported network's run folder): "
                             "set data.path to a folder written by `alphaflow extract-latents`")
        idx = as_index(indices, len(self))
        if self._arrays is None:
            self._arrays = (np.load(self.root / MEAN, mmap_mode="r"), np.load(self.root / LOGVAR, mmap_mode="r"))
        mean, logvar = self._arrays
        raw = np.concatenate([mean[idx], logvar[idx]], axis=1).astype(np.float32)
        return torch.from_numpy(raw), torch.from_numpy(self.labels[idx])

    def sample_posterior(self, raw: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + exp(½·logvar)·ε, ε ~ N(0, I) from ``generator`` (on raw's device).

        raw [b, 2C, H, W] → z [b, C, H, W] (not normalised).
        """
        check_batch(raw, (2 * self.shape[0], *self.shape[1:]), "raw")
        mean, logvar = raw.chunk(2, dim=1)
        noise = torch.randn(mean.shape, generator=generator, device=raw.device, dtype=raw.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def _fitted(self) -> dict[str, Tensor]:
        if self.stats is None:
            raise RuntimeError("latent statistics not fitted: call fit_stats(generator) at the start of training, "
                               "or load_state_dict(...) with the statistics saved in the checkpoint")
        return self.stats

    def _stats_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) on x's device and dtype, copied there once and reused (not a host copy every step)."""
        stats = self._fitted()
        key = (x.device, x.dtype)
        cached = self._stats_cache
        if cached is None or cached[0] != key or cached[1] is not stats:
            cached = self._stats_cache = (key, stats, stats["latent_mean"].to(x), stats["latent_std"].to(x))
        return cached[2], cached[3]

    def prepare(self, raw: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """raw [b, 2C, H, W] on the training device → (z − mean) / std, [b, C, H, W], per element (c, h, w)."""
        z = self.sample_posterior(raw, generator)
        mean, std = self._stats_like(z)
        return (z - mean) / std

    def fit_stats(self, generator: torch.Generator, num_samples: int = 2048) -> None:
        """Per-element mean/std [C, H, W] of ``num_samples`` posterior samples of random rows (CPU ``generator``).

        Rows are drawn without replacement when the dataset is large enough. Every process that calls
        this with the same generator state gets the same statistics (or broadcast rank 0's).
        """
        if generator.device.type != "cpu":
            raise ValueError(f"fit_stats needs a CPU generator, got one on {generator.device}")
        if num_samples < 2:
            raise ValueError(f"num_samples must be at least 2 to estimate a std, got {num_samples}")
        if num_samples <= self.num:
            rows = torch.randperm(self.num, generator=generator)[:num_samples]
        else:
            rows = torch.randint(self.num, (num_samples,), generator=generator)
        raw, _ = self.get(rows.sort().values)  # sorted: sequential memmap reads; the set is unchanged
        std, mean = torch.std_mean(self.sample_posterior(raw.double(), generator), dim=0)
        # a constant element (possible in tiny test VAEs) would divide by zero
        self.stats = {"latent_mean": mean.float(), "latent_std": std.clamp_min(1e-6).float()}

    def state_dict(self) -> dict[str, Tensor]:
        """{"latent_mean", "latent_std"} as [C, H, W] float32 copies, or {} before the statistics exist."""
        return {} if self.stats is None else {k: v.clone() for k, v in self.stats.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore statistics from ``state_dict()``; refuses missing/extra keys, wrong shapes, non-positive std."""
        if set(state) != set(STAT_KEYS):
            raise ValueError(f"latent statistics must have exactly the keys {list(STAT_KEYS)}, got {sorted(state)}")
        stats = {k: torch.as_tensor(state[k]).detach().to("cpu", torch.float32).clone() for k in STAT_KEYS}
        for key, value in stats.items():
            if tuple(value.shape) != self.shape:
                raise ValueError(f"{key} has shape {tuple(value.shape)} but this dataset's latents are {self.shape}")
        if not (stats["latent_std"] > 0).all():
            raise ValueError("latent_std must be positive everywhere")
        self.stats = stats

    def source_resolution(self, default: int) -> int:
        """The resolution the latents were encoded at (meta.json), or ``default`` if the folder does not say."""
        return int(self.meta.get("resolution", default))

    def attach_decoder(self, vae_path: str | Path, device: str | torch.device = "cpu", *,
                       batch_size: int = 32) -> None:
        """Load the VAE (local diffusers folder) so ``to_images`` can decode latents into pixels,
        ``batch_size`` latents at a time (the fp32 SD-VAE decoder keeps ≈ 0.24 GiB of activations per
        256² image: 256 at once would need ≈ 61 GiB)."""
        if batch_size < 1:
            raise ValueError(f"the decode batch size must be >= 1, got {batch_size}")
        self.decode_batch_size = batch_size
        vae = load_vae(vae_path, device)
        if vae.config.latent_channels != self.shape[0]:
            raise ValueError(f"the VAE at {vae_path!r} has {vae.config.latent_channels} latent channels, "
                             f"these latents have {self.shape[0]}")
        self.decoder = vae

    @torch.no_grad()
    def to_images(self, x: Tensor) -> Tensor | None:
        """Normalised latents [b, C, H, W] → decoded images [b, 3, H·f, W·f] in [−1, 1]; None without decoder."""
        check_batch(x, self.shape, "x")
        if self.decoder is None:
            return None
        mean, std = self._stats_like(x)
        z = x * std + mean
        images = [self.decoder.decode(part.to(self.decoder.device, self.decoder.dtype)).sample.float().clamp(-1, 1)
                  for part in z.split(self.decode_batch_size)]
        return torch.cat(images).to(x.device)
