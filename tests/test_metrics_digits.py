"""The Fréchet distance in digits-classifier space tells digits from non-digits by a wide margin."""

from __future__ import annotations

import torch

from alphaflow.data import load_digits
from alphaflow.metrics import FeatureStats, digits_extractor, frechet_distance
import pytest

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`


def test_digit_halves_are_close_and_noise_is_far(tmp_path):
    extract = digits_extractor(tmp_path)
    x, _ = load_digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    half_a, half_b = x[perm[: len(x) // 2]], x[perm[len(x) // 2:]]
    noise = torch.rand(len(half_b), 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(half_b, 3, stride=1, padding=1)  # digit-like but degraded
    stats = {name: FeatureStats.from_features(extract(images))
             for name, images in (("a", half_a), ("b", half_b), ("noise", noise), ("blurred", blurred))}
    same = frechet_distance(stats["a"], stats["b"])
    degraded = frechet_distance(stats["a"], stats["blurred"])
    junk = frechet_distance(stats["a"], stats["noise"])
    assert 0 <= same < degraded < junk, (same, degraded, junk)
    assert junk > 20 * same, (same, junk)
