"""The digits feature extractor: deterministic training, the on-disk cache, and features that mean something."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alphaflow.data.digits import load_digits
from alphaflow.metrics import features as F

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture(scope="module")
def extractor(cache_dir: Path) -> F.DigitsFeatures:
    """Trained once per module (≈ 2 s) and written to ``cache_dir``."""
    return F.digits_extractor(cache_dir, seed=0)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return load_digits()


def test_training_is_bitwise_reproducible(extractor: F.DigitsFeatures) -> None:
    again = F.train_digits_classifier(seed=0)
    ref = extractor.model.state_dict()
    assert ref.keys() == again.state_dict().keys()
    assert all(torch.equal(ref[k], v) for k, v in again.state_dict().items())
    assert again.heldout_accuracy == extractor.heldout_accuracy
    assert not torch.are_deterministic_algorithms_enabled()  # the context restored global state


def test_heldout_accuracy(extractor: F.DigitsFeatures) -> None:
    assert extractor.heldout_accuracy > 0.95


def test_stratified_split_is_disjoint_and_balanced(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, y = digits
    tr, ho = F._stratified_split(y, 0.2, torch.Generator().manual_seed(0))
    assert len(set(tr.tolist()) & set(ho.tolist())) == 0 and len(tr) + len(ho) == len(y)
    frac = torch.bincount(y[ho], minlength=10) / torch.bincount(y, minlength=10)
    assert torch.all((frac - 0.2).abs() < 0.02)


def test_cache_is_written_and_reloaded_without_training(
    extractor: F.DigitsFeatures, cache_dir: Path, digits: tuple[torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = cache_dir / "digits_classifier-seed0.pt"
    assert path.is_file() and not list(cache_dir.glob("*.tmp"))
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == F.FORMAT_VERSION and blob["heldout_accuracy"] == extractor.heldout_accuracy

    def boom(**_: object) -> None:
        raise AssertionError("should have loaded the cache, not trained")

    monkeypatch.setattr(F, "train_digits_classifier", boom)
    loaded = F.digits_extractor(cache_dir, seed=0)
    x = digits[0][:100]
    assert torch.equal(loaded(x), extractor(x))
    assert loaded.heldout_accuracy == extractor.heldout_accuracy


def test_corrupt_cache_is_retrained_and_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "digits_classifier-seed3.pt"
    path.write_bytes(b"not a torch file")
    calls: list[int] = []

    def fake_train(seed: int = 0, **_: object) -> F.DigitsClassifier:  # a stand-in: keeps the test fast
        calls.append(seed)
        model = F.DigitsClassifier().eval()
        model.heldout_accuracy = 0.5
        return model

    monkeypatch.setattr(F, "train_digits_classifier", fake_train)
    with pytest.warns(UserWarning, match="unreadable"):
        ext = F.digits_extractor(tmp_path, seed=3)
    assert calls == [3] and "warning" in capsys.readouterr().out
    assert torch.load(path, weights_only=True)["heldout_accuracy"] == 0.5
    assert ext.heldout_accuracy == 0.5


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALPHAFLOW_CACHE", str(tmp_path))
    assert F.default_cache_dir() == tmp_path
    monkeypatch.delenv("ALPHAFLOW_CACHE")
    assert F.default_cache_dir() == Path.home() / ".cache" / "alphaflow"


def test_features_shape_and_class_separation(extractor: F.DigitsFeatures,
                                             digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    f = extractor(x)
    assert f.shape == (len(x), 64) and f.dtype == torch.float32 and not f.requires_grad
    assert torch.isfinite(f).all()
    d = torch.cdist(f, f)
    same = y[:, None] == y[None, :]
    off_diag = ~torch.eye(len(y), dtype=torch.bool)
    within, between = d[same & off_diag].mean(), d[~same].mean()
    assert within < 0.5 * between


def test_noise_is_far_from_digits(extractor: F.DigitsFeatures, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The Fréchet mean term: noise vs digits ≫ one random half of the digits vs the other."""
    x, _ = digits
    g = torch.Generator().manual_seed(0)
    f = extractor(x[torch.randperm(len(x), generator=g)])
    half_gap = (f[: len(f) // 2].mean(0) - f[len(f) // 2:].mean(0)).norm()
    noise = torch.rand(500, 1, 8, 8, generator=g) * 2 - 1
    assert (extractor(noise).mean(0) - f.mean(0)).norm() > 5 * half_gap


def test_interface(extractor: F.DigitsFeatures) -> None:
    assert isinstance(extractor, F.FeatureExtractor)
    assert extractor.name == "digits" and extractor.dim == 64
    assert F.EXTRACTORS["digits"] is F.digits_extractor
    x64 = torch.zeros(3, 1, 8, 8, dtype=torch.float64)
    assert extractor(x64).dtype == torch.float32
    assert extractor(torch.zeros(0, 1, 8, 8)).shape == (0, 64)
    for bad in (torch.zeros(1, 8, 8), torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 16, 16)):
        with pytest.raises(ValueError, match="images"):
            extractor(bad)
