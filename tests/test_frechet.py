"""The Fréchet distance against closed forms, float64 throughout.

For N(μ_a, Σ_a), N(μ_b, Σ_b): d² = ‖Δμ‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^{1/2}). When Σ_a and Σ_b
commute (share an eigenbasis) the trace term is Σ_i (√λ_a,i − √λ_b,i)², so diagonal and
rotated-diagonal covariances have exact answers; the general case is checked against
scipy's sqrtm, used only here as an independent reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from alphaflow.metrics import FeatureStats, StatsAccumulator, frechet_distance


def random_spd(rng: np.random.Generator, d: int, cond: float = 10.0) -> np.ndarray:
    """A random SPD matrix [d, d] with eigenvalues spread over [1, cond] in a random basis."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, cond, d)) @ q.T


def sqrtm_reference(a: FeatureStats, b: FeatureStats) -> float:
    covmean = scipy.linalg.sqrtm(a.cov @ b.cov).real
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(covmean))


def test_identical_stats_give_zero():
    rng = np.random.default_rng(0)
    s = FeatureStats(rng.standard_normal(12), random_spd(rng, 12), count=100)
    assert frechet_distance(s, s) == pytest.approx(0.0, abs=1e-10)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    d = 10
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    sd_a, sd_b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    a = FeatureStats(mu_a, np.diag(sd_a**2), count=2)
    b = FeatureStats(mu_b, np.diag(sd_b**2), count=2)
    exact = np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-12, abs=1e-12)


def test_commuting_covariances_closed_form():
    rng = np.random.default_rng(2)
    d = 16
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam_a, lam_b = rng.uniform(0.01, 5.0, d), rng.uniform(0.01, 5.0, d)
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    a = FeatureStats(mu_a, (q * lam_a) @ q.T, count=2)
    b = FeatureStats(mu_b, (q * lam_b) @ q.T, count=2)
    exact = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(lam_a) - np.sqrt(lam_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-10)


def test_one_dimensional():
    a = FeatureStats(np.array([1.5]), np.array([[4.0]]), count=2)
    b = FeatureStats(np.array([-0.5]), np.array([[0.25]]), count=2)
    assert frechet_distance(a, b) == pytest.approx(2.0**2 + (2.0 - 0.5) ** 2, rel=1e-14)


def test_symmetric_in_its_arguments():
    rng = np.random.default_rng(3)
    a = FeatureStats(rng.standard_normal(8), random_spd(rng, 8), count=2)
    b = FeatureStats(rng.standard_normal(8), random_spd(rng, 8), count=2)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-12)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_agrees_with_sqrtm_on_non_commuting_spd(seed):
    rng = np.random.default_rng(seed)
    d = 20
    a = FeatureStats(rng.standard_normal(d), random_spd(rng, d, cond=100.0), count=2)
    b = FeatureStats(rng.standard_normal(d), random_spd(rng, d, cond=100.0), count=2)
    assert not np.allclose(a.cov @ b.cov, b.cov @ a.cov)  # the general, non-commuting case
    assert frechet_distance(a, b) == pytest.approx(sqrtm_reference(a, b), rel=1e-8)


def test_rank_deficient_covariance_is_finite_and_non_negative():
    # D > N: both covariances are singular (rank ≤ N − 1), where sqrtm(Σ_a Σ_b) is ill-conditioned.
    rng = np.random.default_rng(7)
    d, n = 64, 10
    a = FeatureStats.from_features(rng.standard_normal((n, d)))
    b = FeatureStats.from_features(rng.standard_normal((n, d)) + 0.5)
    assert np.linalg.matrix_rank(a.cov) < d
    for x, y in [(a, b), (b, a), (a, a)]:
        d2 = frechet_distance(x, y)
        assert isinstance(d2, float) and np.isfinite(d2) and d2 >= 0.0
    assert frechet_distance(a, a) < 1e-6 * np.trace(a.cov)


def test_large_samples_with_shared_covariance_give_mean_distance():
    rng = np.random.default_rng(8)
    d, n = 6, 50_000
    cov = random_spd(rng, d, cond=5.0)
    mu1, mu2 = np.zeros(d), np.full(d, 0.8)  # ‖Δμ‖² = 3.84
    a = FeatureStats.from_features(rng.multivariate_normal(mu1, cov, size=n))
    b = FeatureStats.from_features(rng.multivariate_normal(mu2, cov, size=n))
    assert frechet_distance(a, b) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=0.03)


def test_from_features_matches_numpy_and_accepts_torch():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 5)) * 3 + 100
    s = FeatureStats.from_features(x)
    assert s.count == 50 and s.mean.dtype == np.float64
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False, ddof=1), rtol=1e-12)
    t = FeatureStats.from_features(torch.from_numpy(x))
    np.testing.assert_array_equal(t.cov, s.cov)


def test_accumulator_equals_from_features_on_concatenation():
    rng = np.random.default_rng(10)
    # Uneven batch sizes, including a single row, and a large offset that would break raw sums.
    batches = [rng.standard_normal((n, 7)) + 1e4 for n in (1, 13, 5, 64, 2)]
    acc = StatsAccumulator()
    for i, batch in enumerate(batches):
        acc.update(torch.from_numpy(batch).float() if i == 2 else batch)
    batches[2] = batches[2].astype(np.float32).astype(np.float64)  # what the torch float32 batch carried
    ref = FeatureStats.from_features(np.concatenate(batches))
    got = acc.finalize()
    assert got.count == ref.count == 85
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-13)
    np.testing.assert_allclose(got.cov, ref.cov, rtol=1e-9, atol=1e-12)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    s = FeatureStats.from_features(rng.standard_normal((30, 4)))
    path = tmp_path / "ref_stats.npz"
    s.save(path)
    t = FeatureStats.load(path)
    np.testing.assert_array_equal(t.mean, s.mean)
    np.testing.assert_array_equal(t.cov, s.cov)
    assert t.count == s.count == 30
    s.save(tmp_path / "no_suffix")  # written at exactly the given path
    assert FeatureStats.load(tmp_path / "no_suffix").count == 30


def test_errors_name_the_problem():
    rng = np.random.default_rng(12)
    a = FeatureStats.from_features(rng.standard_normal((10, 3)))
    b = FeatureStats.from_features(rng.standard_normal((10, 4)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        frechet_distance(a, b)
    with pytest.raises(ValueError, match="features.*at least 2"):
        FeatureStats.from_features(np.ones((1, 3)))
    bad = rng.standard_normal((10, 3))
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="features contains non-finite"):
        FeatureStats.from_features(bad)
    with pytest.raises(ValueError, match=r"features must have shape \[N, D\]"):
        FeatureStats.from_features(np.ones(5))
    acc = StatsAccumulator()
    with pytest.raises(ValueError, match="batch contains non-finite"):
        acc.update(bad)
    acc.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        acc.finalize()
    with pytest.raises(ValueError, match="feature dimension 4"):
        acc.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match="cov must have shape"):
        FeatureStats(np.zeros(3), np.eye(4), count=2)
