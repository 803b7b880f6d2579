"""Feature extractors for Fréchet distances: a small interface, a registry, and the digits classifier.

An extractor maps images [B, C, H, W] in [−1, 1] to features [B, dim] (float32, no grad); the Fréchet
distance is computed on those features elsewhere. Nothing can be downloaded here, so every extractor takes
its weights from an explicit local file. The embedded default, ``"digits"``, is a small CNN trained once,
deterministically, on scikit-learn's 8×8 digits and cached under ``$ALPHAFLOW_CACHE`` (or ``~/.cache/alphaflow``);
``"inception"`` (FID, ``inception.py``) and ``"dinov2"`` (FDD, ``dinov2.py``) load real weights.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from alphaflow.run.files import save_torch_atomic
from alphaflow.metrics.dinov2 import dinov2_extractor
from alphaflow.metrics.inception import inception_extractor

FORMAT_VERSION = 1
FEATURE_DIM = 64


@runtime_checkable
class FeatureExtractor(Protocol):
    """images [B, C, H, W] in [−1, 1] → features [B, dim], float32, computed without grad."""

    name: str
    dim: int

    def __call__(self, images: Tensor) -> Tensor: ...


class DigitsClassifier(nn.Module):
    """A small CNN for 1×8×8 digits: conv 32 → conv 64 → pool → Linear 64 (the features) → Linear 10."""

    heldout_accuracy: float  # set by ``train_digits_classifier`` (a plain attribute, not a buffer)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),   # [B, 32, 8, 8]
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),  # [B, 64, 8, 8]
            nn.MaxPool2d(2), nn.Flatten(),               # [B, 64·4·4]
            nn.Linear(64 * 4 * 4, FEATURE_DIM), nn.ReLU(),  # [B, 64]: post-ReLU, like Inception's pool3
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """x [B, 1, 8, 8] → penultimate activations [B, 64]."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 1, 8, 8] → logits [B, 10]."""
        return self.head(self.body(x))


@contextlib.contextmanager
def _deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed the global RNG (forked), fix the thread count and force deterministic kernels; restore all after."""
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det)
            torch.set_num_threads(prev_threads)


def _stratified_split(labels: Tensor, holdout: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """labels [N] → (train indices, held-out indices): ``holdout`` of each class, chosen by ``gen``."""
    train, held = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = round(holdout * len(idx))
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def train_digits_classifier(seed: int = 0, epochs: int = 15, threads: int = 1,
                            holdout: float = 0.2) -> DigitsClassifier:
    """Train the digits classifier, bitwise-reproducibly for a given (seed, epochs, threads).

    Adam (lr 1e-3), batch 64, cross-entropy on a stratified 80/20 split fixed by ``seed``. The returned
    model is in eval mode and carries ``heldout_accuracy`` (float, on the 20 % never trained on).
    """
    from alphaflow.data.digits import load_digits

    x, y = load_digits()  # [1797, 1, 8, 8] in [−1, 1], [1797]
    gen = torch.Generator().manual_seed(seed)
    tr, ho = _stratified_split(y, holdout, gen)
    with _deterministic(seed, threads):
        model = DigitsClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            for b in tr[torch.randperm(len(tr), generator=gen)].split(64):
                loss = nn.functional.cross_entropy(model(x[b]), y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x[ho]).argmax(1) == y[ho]).float().mean().item()
    model.heldout_accuracy = acc
    return model


class DigitsFeatures:
    """The ``"digits"`` extractor: images [B, 1, 8, 8] in [−1, 1] → penultimate features [B, 64]."""

    name: str = "digits"
    dim: int = FEATURE_DIM

    def __init__(self, model: DigitsClassifier, heldout_accuracy: float, weights_path: Path | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.heldout_accuracy, self.weights_path = heldout_accuracy, weights_path

    def __call__(self, images: Tensor) -> Tensor:
        """images [B, 1, 8, 8] → features [B, 64] float32 on the images' device; chunked to bound memory."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
            raise ValueError(f"images must have shape [B, 1, 8, 8], got {list(images.shape)}")
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            out = [self.model.features(c.to(dev, torch.float32)) for c in images.split(1024)]
        return torch.cat(out).to(images.device) if out else images.new_zeros(0, self.dim, dtype=torch.float32)


def default_cache_dir() -> Path:
    """``$ALPHAFLOW_CACHE`` if set, else ``~/.cache/alphaflow``."""
    return Path(os.environ.get("ALPHAFLOW_CACHE") or Path.home() / ".cache" / "alphaflow")


def _load_cache(path: Path) -> DigitsFeatures:
    """Read a cache file written by ``digits_extractor``; raises on any mismatch or corruption."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT_VERSION:
        raise ValueError(f"unexpected cache format in {path}")
    model = DigitsClassifier()
    model.load_state_dict(blob["state_dict"])
    return DigitsFeatures(model, float(blob["heldout_accuracy"]), path)


def digits_extractor(cache_dir: str | Path | None = None, *, seed: int = 0) -> FeatureExtractor:
    """The digits feature extractor, from ``cache_dir/digits_classifier-seed{seed}.pt``.

    On first use (or if the file is unreadable, with a printed warning) the classifier is trained and the
    file written atomically: {"format", "seed", "state_dict", "heldout_accuracy"}.
    """
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"digits_classifier-seed{seed}.pt"
    if path.exists():
        try:
            return _load_cache(path)
        except Exception as e:  # noqa: BLE001 - any failure to read means: retrain and overwrite
            msg = f"digits feature cache {path} is unreadable ({type(e).__name__}: {e}); retraining"
            print(f"warning: {msg}")
            warnings.warn(msg, stacklevel=2)
    model = train_digits_classifier(seed=seed)
    acc = float(model.heldout_accuracy)
    save_torch_atomic({"format": FORMAT_VERSION, "seed": seed, "state_dict": model.state_dict(),
                  "heldout_accuracy": acc}, path)
    return DigitsFeatures(model, acc, path)


# Extractor name → constructor, and the metric name its Fréchet distance is reported under. "digits" takes a
# cache folder; "inception" and "dinov2" take an explicit local weights path (nothing is downloaded) and a device.
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "digits": digits_extractor, "inception": inception_extractor, "dinov2": dinov2_extractor,
}
METRIC_NAMES: dict[str, str] = {"digits": "fd_digits", "inception": "fid", "dinov2": "fdd"}
