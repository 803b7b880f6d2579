"""Shared fixtures: a tiny smooth network for the float64 identity tests."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are written to files; no display in CI
# The tests never write into the user's ~/.cache/alphaflow (or their $ALPHAFLOW_CACHE): the digits classifier and
# reference statistics they need are built once into the repository's own .pytest_cache/ and reused from there
# (subprocesses inherit it). ALPHAFLOW_TEST_CACHE moves it.
os.environ["ALPHAFLOW_CACHE"] = os.environ.get("ALPHAFLOW_TEST_CACHE") or str(
    Path(__file__).resolve().parents[1] / ".pytest_cache" / "alphaflow-cache")

import numpy as np
import pytest
import torch
from torch import nn

from alphaflow.core.conventions import NULL_LABEL
from alphaflow.data import extract_latents
from slurm_fixtures import slurm_cluster, slurm_env  # noqa: F401  (shared, session-scoped)
from small_fs import tmpfs  # noqa: F401  (small real file systems for the full-disk tests)


class TinyNet(nn.Module):
    """u(z, r, t | y): an MLP on (flattened z, t, t − r, label embedding), tanh so every derivative is smooth.

    Depends on z, r, t and the label, so MeanFlow, TFM and FM targets all differ.
    """

    def __init__(self, shape: tuple[int, ...] = (1, 4, 4), hidden: int = 32, num_classes: int = 3) -> None:
        super().__init__()
        self.shape, self.num_classes = shape, num_classes
        dim = int(torch.tensor(shape).prod())
        self.label = nn.Embedding(num_classes + 1, 4)
        self.body = nn.Sequential(nn.Linear(dim + 2 + 4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None):
        if labels is None:
            labels = torch.full((z.shape[0],), NULL_LABEL, device=z.device)
        idx = torch.where(labels < 0, self.num_classes, labels)
        h = torch.cat([z.flatten(1), t[:, None], (t - r)[:, None], self.label(idx)], dim=1)
        return self.body(h).view_as(z)


@pytest.fixture(autouse=True)
def no_gpus_assigned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU suite does not depend on the machine's GPU variables: ``train.device=auto`` refuses the CPU where SLURM
    or CUDA_VISIBLE_DEVICES say this process was given GPUs (``alphaflow.train.distributed.assigned_gpus``), and a
    CI machine or a SLURM allocation may set them. Where torch can use a GPU they are left alone."""
    from alphaflow.train.distributed import SLURM_GPU_COUNTS, SLURM_GPU_LISTS

    for name in (*SLURM_GPU_COUNTS, *SLURM_GPU_LISTS):
        monkeypatch.delenv(name, raising=False)
    if not torch.cuda.is_available():
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().double()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 3, (8,), generator=g)
    return x, y


def make_image_folder(root, sizes=((20, 12), (9, 30), (16, 16))):
    """Two class folders (cat, ant) of random RGB images of the given (w, h) sizes, plus a non-image file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, ext in (("cat", ".PNG"), ("ant", ".png")):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}{ext}")
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def latents(tmp_path_factory):
    """A tiny random AutoencoderKL saved locally, and the latents it extracts from a tiny folder."""
    from diffusers import AutoencoderKL  # a declared dev dependency: fail, do not skip, if it is missing

    tmp = tmp_path_factory.mktemp("latents")
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    vae.save_pretrained(tmp / "vae")
    images = make_image_folder(tmp / "imgs", sizes=((20, 12), (9, 30), (16, 16), (33, 33)))
    (tmp / "lat").mkdir()  # an existing empty folder is fine
    out = extract_latents(images, tmp / "vae", tmp / "lat", resolution=16, batch_size=3)
    return tmp, vae.eval(), out


# ----------------------------------------------------------------------------- tiers
# `make test-fast` runs `pytest -m "not slow or fast"`: the identities and unit tests, under a minute. A module that
# trains, submits jobs, starts SLURM, executes notebooks, compiles or runs the GPU-check rehearsal says so itself
# (`pytestmark = pytest.mark.slow`); a quick test inside it is marked `@pytest.mark.fast` and stays in the fast tier.
