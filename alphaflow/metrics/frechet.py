"""Fréchet distance between Gaussians fitted to features (the quantity behind FID and FDD).

For feature distributions summarised by mean μ [D] and covariance Σ [D, D],

    d² = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})

(Dowson & Landau 1982; Heusel et al. 2017 for FID). Everything here is numpy float64: the
trace term is a difference of large, nearly equal numbers, so float32 loses the digits that
separate good models. Torch tensors are accepted and converted on entry.

Statistics are computed once per reference set and cached on disk as ``.npz``
(``FeatureStats.save`` / ``FeatureStats.load``); generated samples are streamed through a
``StatsAccumulator`` so the features never have to sit in memory together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:  # torch is accepted as input, never required by this module
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor"]


def _as_float64(x: ArrayLike, name: str) -> np.ndarray:
    """Convert a numpy array or torch tensor (any device, any float dtype) to a float64 ndarray."""
    if hasattr(x, "detach"):  # torch.Tensor; .double() first because numpy has no bfloat16
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_features(x: np.ndarray, name: str, min_rows: int) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows (samples), got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


@dataclass
class FeatureStats:
    """Mean ``mean`` [D] and unbiased covariance ``cov`` [D, D] of ``count`` feature vectors.

    ``count`` is informational (how many samples the estimate rests on); hand-built
    statistics for closed-form checks may use any non-negative value.
    """

    mean: np.ndarray
    cov: np.ndarray
    count: int

    def __post_init__(self) -> None:
        self.mean = _as_float64(self.mean, "mean")
        self.cov = _as_float64(self.cov, "cov")
        self.count = int(self.count)
        if self.mean.ndim != 1:
            raise ValueError(f"mean must have shape [D], got shape {self.mean.shape}")
        d = self.mean.shape[0]
        if self.cov.shape != (d, d):
            raise ValueError(f"cov must have shape [D, D] = [{d}, {d}] to match mean, got {self.cov.shape}")
        if self.count < 0:
            raise ValueError(f"count must be non-negative, got {self.count}")
        for field in ("mean", "cov"):
            if not np.isfinite(getattr(self, field)).all():
                raise ValueError(f"{field} contains non-finite values (NaN or inf)")

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def from_features(cls, features: ArrayLike) -> FeatureStats:
        """Statistics of ``features`` [N, D]: μ = mean over rows, Σ = (X − μ)ᵀ(X − μ) / (N − 1).

        N − 1 (unbiased) to match the reference FID implementations. Requires N ≥ 2.
        """
        x = _as_float64(features, "features")
        _check_features(x, "features", min_rows=2)
        mean = x.mean(axis=0)
        centred = x - mean  # centre first: Σ xxᵀ/N − μμᵀ cancels catastrophically when |μ| ≫ σ
        cov = centred.T @ centred / (x.shape[0] - 1)
        return cls(mean=mean, cov=(cov + cov.T) / 2, count=x.shape[0])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``mean``, ``cov`` and ``count`` to ``path`` as an uncompressed ``.npz``.

        The file is written at exactly ``path`` (numpy would otherwise append ``.npz``
        to a name without it, and a later ``load(path)`` would miss the file).
        """
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean, cov=self.cov, count=np.int64(self.count))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStats:
        """Read statistics written by ``save``; shapes are re-validated on construction."""
        with np.load(path, allow_pickle=False) as z:
            missing = {"mean", "cov", "count"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a FeatureStats file: missing {sorted(missing)}")
            return cls(mean=z["mean"], cov=z["cov"], count=int(z["count"]))


class StatsAccumulator:
    """Streaming ``FeatureStats``: ``update`` with batches [n, D], then ``finalize``.

    Keeps the count, the running mean [D] and the centred sum of squares M2 = Σ (x − μ)(x − μ)ᵀ
    [D, D] in float64, and merges each batch with Chan et al.'s pairwise update:

        δ = μ_b − μ,  μ ← μ + δ n_b / n,  M2 ← M2 + M2_b + δδᵀ n n_b / (n + n_b)

    Raw sums Σx and Σxxᵀ would be simpler but cancel catastrophically for features whose mean
    is large compared with their spread; the centred form equals ``from_features`` on the
    concatenation up to round-off.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, batch: ArrayLike) -> None:
        """Add ``batch`` [n, D] (n ≥ 1) to the running statistics."""
        x = _as_float64(batch, "batch")
        _check_features(x, "batch", min_rows=1)
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"batch has feature dimension {x.shape[1]}, earlier batches had {self._mean.shape[0]}")
        n_b = x.shape[0]
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self._mean is None:
            self.count, self._mean, self._m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.count * n_b / n)
        self.count = n

    def finalize(self) -> FeatureStats:
        """The statistics of everything seen so far (unbiased covariance, N − 1). Requires N ≥ 2."""
        if self._mean is None or self.count < 2:
            raise ValueError(f"StatsAccumulator needs at least 2 samples before finalize, got {self.count}")
        assert self._m2 is not None  # set together with _mean
        cov = self._m2 / (self.count - 1)
        return FeatureStats(mean=self._mean.copy(), cov=(cov + cov.T) / 2, count=self.count)


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root √Σ [D, D] of a symmetric PSD matrix via eigh; negative round-off clipped to 0."""
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """Tr((Σ_a Σ_b)^{1/2}) = Σ_i sqrt(λ_i(√Σ_a Σ_b √Σ_a)).

    Σ_a Σ_b = √Σ_a (√Σ_a Σ_b) and √Σ_a Σ_b √Σ_a = (√Σ_a Σ_b) √Σ_a: products in either order
    share their eigenvalues, so the non-symmetric Σ_a Σ_b never has to be formed. Why this is
    stable where ``scipy.linalg.sqrtm(Σ_a Σ_b)`` is not:
      * √Σ_a Σ_b √Σ_a is symmetric PSD, so ``eigvalsh`` (backward stable, real output) applies;
        there are no spurious imaginary parts to discard;
      * sqrtm runs a Schur decomposition on the non-symmetric product, whose square root is
        ill-conditioned when Σ is singular (D > N): it returns spurious imaginary parts, and
        for D = 64, N = 10 the sqrtm formula gives d²(a, a) ≈ −3e−6 where this one gives 0;
        here a singular Σ only contributes zero eigenvalues.
    Eigenvalues that round-off pushes slightly below 0 are clipped to 0 before the sqrt.
    """
    sa = _psd_sqrt(cov_a)
    m = sa @ cov_b @ sa
    eig = np.linalg.eigvalsh((m + m.T) / 2)  # re-symmetrise: the products are symmetric only up to round-off
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Squared Fréchet distance d² between N(μ_a, Σ_a) and N(μ_b, Σ_b), both of dimension D.

        d² = ‖μ_a − μ_b‖² + Tr(Σ_a) + Tr(Σ_b) − 2 Tr((Σ_a Σ_b)^{1/2})

    This is the number reported as FID / FDD (no square root is taken). Returns a Python
    float ≥ 0: the exact value is non-negative, and the tiny negative values round-off can
    produce when a ≈ b are clamped to 0.
    """
    if a.dim != b.dim:
        raise ValueError(f"feature dimension mismatch: a has D = {a.dim}, b has D = {b.dim}")
    # Symmetrise: hand-built or loaded covariances may be symmetric only up to round-off.
    cov_a, cov_b = (a.cov + a.cov.T) / 2, (b.cov + b.cov.T) / 2
    diff = a.mean - b.mean
    d2 = float(diff @ diff) + float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * _trace_sqrt_product(cov_a, cov_b)
    return max(d2, 0.0)
