"""Made-up ImageNet for rehearsing the latent path without the real thing: a folder of JPEGs in ImageNet's
layout, a randomly initialised AutoencoderKL with SD-VAE's 8× downsampling and 4 latent channels (so 256 ×
256 images give ImageNet's 4 × 32 × 32 latents), and a randomly initialised FID Inception file.

    python tests/fake_imagenet.py /tmp/fake      # → /tmp/fake/{images,vae,inception.pth}
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

CLASSES = ("n01440764", "n01443537", "n01484850")  # three ImageNet synsets
SIZES = ((300, 260), (256, 256), (400, 280), (260, 330))  # (w, h): not square, as ImageNet's photos


def make_jpegs(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """``root/<synset>/<synset>_<i>.JPEG``: smooth random colour fields (JPEG-friendly), ``per_class`` each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = SIZES[i % len(SIZES)]
            coarse = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
            img.save(root / cls / f"{cls}_{i}.JPEG", quality=90)
    return root


def make_vae(folder: Path, seed: int = 0) -> Path:
    """A random diffusers AutoencoderKL (four 8-channel blocks: 8× down, 4 latent channels) saved at ``folder``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4,
                        norm_num_groups=8, sample_size=256)
    vae.save_pretrained(folder)
    return folder


def make_inception(path: Path, seed: int = 0) -> Path:
    """A randomly initialised FID Inception-v3 state dict with the key set of pytorch-fid's weights file.

    Convolutions get He-normal weights (arXiv 1502.01852), which keep the activations' scale through ReLUs; torch's
    default init shrinks it by about 3× per layer, so 90-odd layers later every image has the same features
    and every Fréchet distance is 0."""
    from alphaflow.metrics.inception import FIDInceptionV3

    torch.manual_seed(seed)
    net = FIDInceptionV3()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def make_all(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {"images": make_jpegs(root / "images"), "vae": make_vae(root / "vae"),
            "inception": make_inception(root / "inception.pth")}


if __name__ == "__main__":
    for key, value in make_all(Path(sys.argv[1])).items():
        print(f"{key}: {value}")
