"""Time samplers and the (r, t) pairing rule (docs/conventions.md#time-sampling)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from alphaflow.core.timesteps import (LogitNormal, TimeConfig, Uniform, build_time_sampler, num_fm_rows,
                                 sample_time_pairs)

N = 200_000  # samples for the moment checks; tolerances below are ≥ 5 standard errors


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- one-dimensional samplers

def test_logit_normal_defaults_are_the_paper_s():
    s = LogitNormal()
    assert (s.mu, s.sigma) == (-0.4, 1.0), f"default must be lognorm(μ = −0.4, σ = 1), got ({s.mu}, {s.sigma})"


@pytest.mark.parametrize("mu, sigma", [(-0.4, 1.0), (0.7, 0.5)])
def test_logit_normal_logits_have_mean_mu_and_std_sigma(mu, sigma):
    t = LogitNormal(mu, sigma)(N, generator=gen(0), dtype=torch.float64)
    assert t.shape == (N,) and bool(((t > 0) & (t < 1)).all()), "logit-normal samples must lie in (0, 1)"
    z = torch.logit(t)
    mean, std = float(z.mean()), float(z.std())
    se_mean, se_std = sigma / math.sqrt(N), sigma / math.sqrt(2 * N)
    assert abs(mean - mu) < 5 * se_mean, f"mean of logit(t) = {mean:.4f}, expected μ = {mu} ± {5 * se_mean:.4f}"
    assert abs(std - sigma) < 5 * se_std, f"std of logit(t) = {std:.4f}, expected σ = {sigma} ± {5 * se_std:.4f}"
    median = float(t.median())
    assert abs(median - 1 / (1 + math.exp(-mu))) < 0.005, f"median of t must be σ(μ), got {median:.4f}"


def test_uniform_range_and_moments():
    low, high = 0.2, 0.9
    t = Uniform(low, high)(N, generator=gen(1), dtype=torch.float64)
    assert float(t.min()) >= low and float(t.max()) <= high, f"uniform samples must lie in [{low}, {high}]"
    width = high - low
    se = width / math.sqrt(12 * N)
    assert abs(float(t.mean()) - (low + high) / 2) < 5 * se, f"uniform mean must be {(low + high) / 2}"
    assert float(t.var()) == pytest.approx(width**2 / 12, rel=0.02), "uniform variance must be (high − low)²/12"
    assert float(t.min()) < low + 1e-3 and float(t.max()) > high - 1e-3, "uniform samples must fill the whole range"


@pytest.mark.parametrize("sampler", [LogitNormal(), Uniform(0.1, 0.6)], ids=["logit_normal", "uniform"])
def test_samplers_are_reproducible_and_honour_dtype_and_device(sampler):
    a = sampler(64, generator=gen(5), dtype=torch.float64, device="cpu")
    b = sampler(64, generator=gen(5), dtype=torch.float64, device="cpu")
    c = sampler(64, generator=gen(6), dtype=torch.float64, device="cpu")
    assert torch.equal(a, b), "the same seed must give the same times"
    assert not torch.equal(a, c), "different seeds must give different times"
    assert a.dtype == torch.float64 and a.device.type == "cpu", f"dtype/device not honoured: {a.dtype}, {a.device}"
    assert sampler(3).dtype == torch.float32, "the default dtype must be float32"


# ----------------------------------------------------------------------------- (r, t) pairs

def redraw(batch, ratio_fm, sampler, seed, dtype=torch.float32):
    """The documented rule by hand, with the same generator calls: t_fm, then a, then b."""
    g = gen(seed)
    n_fm = num_fm_rows(batch, ratio_fm)
    t_fm = sampler(n_fm, generator=g, dtype=dtype)
    a = sampler(batch - n_fm, generator=g, dtype=dtype)
    b = sampler(batch - n_fm, generator=g, dtype=dtype)
    return n_fm, t_fm, a, b


@pytest.mark.parametrize("batch, ratio_fm, n_fm", [(64, 0.25, 16), (64, 0.75, 48), (10, 0.5, 5), (7, 0.29, 2)])
def test_pairs_split_rows_and_follow_the_min_max_rule(batch, ratio_fm, n_fm):
    sampler = LogitNormal()
    t, r = sample_time_pairs(batch, ratio_fm, sampler, generator=gen(11))
    assert t.shape == r.shape == (batch,), f"t and r must be [B] = [{batch}], got {tuple(t.shape)}, {tuple(r.shape)}"
    assert torch.equal(t[:n_fm], r[:n_fm]), f"the first ⌊B·ratio_fm⌋ = {n_fm} rows must have r == t"
    assert bool((r[n_fm:] < t[n_fm:]).all()), "the min–max rows must have r < t"
    assert bool(((r >= 0) & (t <= 1)).all()), "all times must lie in [0, 1]"
    k, t_fm, a, b = redraw(batch, ratio_fm, sampler, seed=11)
    assert k == n_fm
    assert torch.equal(t[:n_fm], t_fm), "r = t rows must be the first draw from the generator"
    assert torch.equal(t[n_fm:], torch.maximum(a, b)), "t must be max(a, b) of the two following draws"
    assert torch.equal(r[n_fm:], torch.minimum(a, b)), "r must be min(a, b) of the two following draws"


def test_pairs_honour_dtype_and_device():
    t, r = sample_time_pairs(16, 0.5, Uniform(), generator=gen(2), dtype=torch.float64, device="cpu")
    assert t.dtype == r.dtype == torch.float64, f"dtype not honoured: {t.dtype}, {r.dtype}"
    assert t.device.type == r.device.type == "cpu"
    _, t_fm, a, b = redraw(16, 0.5, Uniform(), seed=2, dtype=torch.float64)
    assert torch.equal(t, torch.cat([t_fm, torch.maximum(a, b)])), "float64 draws must follow the same rule"


def test_ratio_zero_gives_only_pairs_and_ratio_one_only_flow_matching_rows():
    t, r = sample_time_pairs(32, 0.0, LogitNormal(), generator=gen(3))
    assert bool((r < t).all()), "ratio_fm = 0: every row must be a min–max pair with r < t"
    t, r = sample_time_pairs(32, 1.0, LogitNormal(), generator=gen(3))
    assert torch.equal(t, r), "ratio_fm = 1: every row must have r == t"
    _, t_fm, _, _ = redraw(32, 1.0, LogitNormal(), seed=3)
    assert torch.equal(t, t_fm), "ratio_fm = 1: t must be the single draw of 32 times"


def test_batch_of_one():
    t, r = sample_time_pairs(1, 0.5, LogitNormal(), generator=gen(4))
    assert t.shape == (1,) and bool(r[0] < t[0]), "B = 1, ratio ½: ⌊0.5⌋ = 0 rows r = t, so the row is a pair"


# ----------------------------------------------------------------------------- MeanFlow's JAX pairs (fm_time)

@pytest.mark.parametrize("batch, ratio_fm, n_fm", [(64, 0.75, 48), (7, 0.29, 2), (5, 1.0, 5), (5, 0.0, 0)])
def test_max_of_pair_draws_every_row_as_a_pair_and_sets_r_to_t_on_the_leading_rows(batch, ratio_fm, n_fm):
    """MeanFlow's JAX ``sample_tr``: a, b for all B rows, t = max, r = min, then r := t on the first n_fm rows."""
    sampler = LogitNormal()
    t, r = sample_time_pairs(batch, ratio_fm, sampler, fm_time="max_of_pair", generator=gen(12))
    g = gen(12)
    a, b = sampler(batch, generator=g), sampler(batch, generator=g)
    assert torch.equal(t, torch.maximum(a, b)), "every row's t must be the max of its pair, the r = t rows' too"
    assert torch.equal(r[:n_fm], t[:n_fm]), f"the first {n_fm} rows must have r == t"
    assert torch.equal(r[n_fm:], torch.minimum(a, b)[n_fm:]), "the other rows' r must be the min of the pair"


def test_max_of_pair_gives_the_r_equals_t_rows_the_law_of_a_maximum():
    """P(t ≤ median of one draw) is ½ for a single draw and ¼ = ½² for the max of two, on the r = t rows."""
    sampler, median = LogitNormal(), 1 / (1 + math.exp(0.4))
    single, _ = sample_time_pairs(N, 1.0, sampler, generator=gen(13), dtype=torch.float64)
    paired, r = sample_time_pairs(N, 1.0, sampler, fm_time="max_of_pair", generator=gen(13), dtype=torch.float64)
    assert torch.equal(paired, r)
    se = math.sqrt(0.25 * 0.75 / N)
    assert abs(float((single <= median).double().mean()) - 0.5) < 5 * math.sqrt(0.25 / N)
    assert abs(float((paired <= median).double().mean()) - 0.25) < 5 * se, "the r = t rows must have CDF F(τ)²"


def test_fm_time_defaults_to_the_single_draw_and_is_refused_by_name():
    assert TimeConfig().fm_time == "single"
    t, _ = sample_time_pairs(16, 0.5, LogitNormal(), generator=gen(14))
    t_default, _ = sample_time_pairs(16, 0.5, LogitNormal(), fm_time="single", generator=gen(14))
    assert torch.equal(t, t_default)
    with pytest.raises(ValueError, match=r"objective.time.fm_time .* must be one of \['single', 'max_of_pair'\], "
                                         r"got 'max'"):
        sample_time_pairs(8, 0.5, LogitNormal(), fm_time="max")
    with pytest.raises(ValueError, match=r"objective.time.fm_time"):
        TimeConfig(fm_time="pairs").build()


# ----------------------------------------------------------------------------- ⌊B·ratio_fm⌋

@pytest.mark.parametrize("batch, ratio, expected", [(100, 0.29, 29), (100, 0.57, 57), (7, 0.5, 3), (10, 1.0, 10),
                                                    (10, 0.0, 0), (3, 1 / 3, 1), (256, 0.25, 64), (1, 0.999, 0)])
def test_num_fm_rows(batch, ratio, expected):
    assert num_fm_rows(batch, ratio) == expected, f"⌊{batch}·{ratio}⌋ must be {expected} despite float round-off"


def test_num_fm_rows_is_the_exact_floor_on_decimal_ratios_and_on_n_over_b():
    for batch in range(1, 130):
        for n in range(batch + 1):
            assert num_fm_rows(batch, n / batch) == n, f"num_fm_rows({batch}, {n}/{batch}) must be {n}"
        for pct in range(101):
            exact = math.floor(Fraction(pct, 100) * batch)
            assert num_fm_rows(batch, pct / 100) == exact, f"num_fm_rows({batch}, {pct / 100}) must be {exact}"


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("ratio", [-0.1, 1.1, float("nan")])
def test_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ValueError, match=r"ratio_fm must lie in \[0, 1\]"):
        sample_time_pairs(8, ratio, LogitNormal())
    with pytest.raises(ValueError, match=r"ratio_fm must lie in \[0, 1\]"):
        num_fm_rows(8, ratio)


@pytest.mark.parametrize("batch", [0, -3])
def test_batch_below_one_is_refused(batch):
    with pytest.raises(ValueError, match=r"batch must be >= 1"):
        sample_time_pairs(batch, 0.5, LogitNormal())


@pytest.mark.parametrize("make, match", [
    (lambda: LogitNormal(sigma=0.0), r"logit-normal needs a finite mu and sigma > 0"),
    (lambda: LogitNormal(sigma=-1.0), r"sigma > 0.*sigma=-1.0"),
    (lambda: LogitNormal(mu=float("inf")), r"finite mu.*mu=inf"),
    (lambda: Uniform(0.5, 0.5), r"uniform time sampler needs 0 <= low < high <= 1"),
    (lambda: Uniform(-0.1, 1.0), r"low=-0.1"),
    (lambda: Uniform(0.0, 1.5), r"high=1.5"),
    (lambda: build_time_sampler("uniform", low=0.3, high=0.2), r"low=0.3, high=0.2"),
], ids=["sigma-0", "sigma-neg", "mu-inf", "low=high", "low<0", "high>1", "built-uniform"])
def test_bad_sampler_parameters_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_build_time_sampler_builds_and_refuses_with_a_suggestion():
    assert build_time_sampler("logit_normal", mu=0.1, sigma=2.0) == LogitNormal(0.1, 2.0)
    assert build_time_sampler("uniform") == Uniform(0.0, 1.0)
    with pytest.raises(ValueError, match=r"unknown time sampler 'logit_norm' \(did you mean logit_normal\?\)"):
        build_time_sampler("logit_norm")
    with pytest.raises(ValueError, match=r"did you mean uniform"):
        build_time_sampler("unifrom")
    with pytest.raises(ValueError, match=r"expected one of \['logit_normal', 'uniform'\]"):
        build_time_sampler("beta")
