"""Samplers against a network whose average velocity is known in closed form (docs/conventions.md#samplers).

Oracle: data x ~ N(μ, s²I) with z_t = (1 − t)x + tε. The probability-flow ODE maps z_1 to
z_t = (1 − t)μ + σ_t·z_1 with σ_t = sqrt((1 − t)²s² + t²), so the flow map from t to r is

    Φ(z_t, r, t) = (1 − r)μ + (σ_r/σ_t)(z_t − (1 − t)μ),

the exact average velocity is u(z_t, r, t) = (z_t − Φ(z_t, r, t))/(t − r), and at r = t it is
v(z_t, t) = −μ + (σ̇_t/σ_t)(z_t − (1 − t)μ) with σ̇_t = (t − (1 − t)s²)/σ_t. Every average-velocity
sampler is therefore exact on this oracle (x_0 = μ + s·z_1), and Euler is not.
"""

from __future__ import annotations

import pytest
import torch

from alphaflow.core.sampling import (
    SAMPLERS,
    generate,
    sample_average_velocity,
    sample_euler,
    sample_one_step,
    sample_two_step_consistency,
    sample_two_step_ode,
    time_grid,
)

from flows import GaussianOracle  # tests/flows.py

DT = torch.float64
SHAPE = (3, 4, 4)
B = 5


@pytest.fixture
def oracle() -> GaussianOracle:
    g = torch.Generator().manual_seed(0)
    return GaussianOracle(torch.randn(SHAPE, generator=g, dtype=DT), s=0.5)


@pytest.fixture
def noise() -> torch.Tensor:
    return torch.randn((B, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=DT)


def exact(oracle: GaussianOracle, noise: torch.Tensor) -> torch.Tensor:
    return oracle.mu + oracle.s * noise


def full(v: float, n: int = B) -> torch.Tensor:
    return torch.full((n,), v, dtype=DT)


# ----------------------------------------------------------------------------- the oracle itself

def test_oracle_velocity_is_derivative_of_flow(oracle, noise):
    t = torch.linspace(0.1, 0.9, B, dtype=DT)
    h = 1e-5
    fd = (oracle.flow(noise, t + h, t) - oracle.flow(noise, t - h, t)) / (2 * h)
    torch.testing.assert_close(oracle(noise, t, t), fd, rtol=0, atol=1e-8)


def test_oracle_average_velocity_is_path_integral(oracle, noise):
    z, r, t = noise[:1], 0.15, 0.85
    taus = torch.linspace(r, t, 4001, dtype=DT)
    path = oracle.flow(z.expand(len(taus), *SHAPE), taus, torch.full_like(taus, t))
    integral = torch.trapezoid(oracle.inst(path, taus), taus, dim=0)
    torch.testing.assert_close((t - r) * oracle(z, full(r, 1), full(t, 1))[0], integral, rtol=0, atol=1e-7)


def test_oracle_flow_endpoint(oracle, noise):
    torch.testing.assert_close(oracle.flow(noise, full(0.0), full(1.0)), exact(oracle, noise), rtol=0, atol=1e-13)


# ----------------------------------------------------------------------------- exactness

def test_one_step_is_exact(oracle, noise):
    torch.testing.assert_close(sample_one_step(oracle, noise), exact(oracle, noise), rtol=0, atol=1e-12)


@pytest.mark.parametrize("t_mid", [0.1, 0.5, 0.55, 0.9])
def test_two_step_ode_is_exact(oracle, noise, t_mid):
    torch.testing.assert_close(sample_two_step_ode(oracle, noise, t_mid=t_mid), exact(oracle, noise), rtol=0, atol=1e-12)
    assert [float(c[1][0]) for c in oracle.calls] == [1.0, t_mid]
    assert [float(c[0][0]) for c in oracle.calls] == [t_mid, 0.0]


@pytest.mark.parametrize("kw", [dict(steps=3), dict(steps=7), dict(times=[1, 0.9, 0.42, 0.1, 0]), dict(times=[1, 0.01, 0])])
def test_average_velocity_is_exact_on_any_grid(oracle, noise, kw):
    out = sample_average_velocity(oracle, noise, **kw)
    torch.testing.assert_close(out, exact(oracle, noise), rtol=0, atol=1e-12)


def test_euler_is_first_order(oracle, noise):
    ref = exact(oracle, noise)
    errs = [float((sample_euler(oracle, noise, steps=n) - ref).abs().max()) for n in (4, 8, 16, 32, 64, 128, 256, 512)]
    assert errs[0] > 1e-3, "Euler should not be exact on a curved flow"
    for coarse, fine in zip(errs, errs[1:]):
        assert fine < 0.6 * coarse, errs
    assert errs[-1] < 1e-2, errs  # converges to the exact endpoint ...
    assert 0.45 < errs[-1] / errs[-2] < 0.55, errs  # ... at first order: error ∝ 1/N
    assert all(bool((c[0] == c[1]).all()) for c in oracle.calls), "Euler must query u(z, t, t)"


def test_consistency_matches_hand_formula(oracle, noise):
    t_m = 0.55
    eps2 = torch.randn(noise.shape, generator=torch.Generator().manual_seed(7), dtype=DT)
    out = sample_two_step_consistency(oracle, noise, t_mid=t_m, renoise=eps2)
    x_hat = oracle.mu + oracle.s * noise
    z_m = (1 - t_m) * x_hat + t_m * eps2
    sig_m = (((1 - t_m) * oracle.s) ** 2 + t_m**2) ** 0.5
    torch.testing.assert_close(out, oracle.mu + oracle.s * (z_m - (1 - t_m) * oracle.mu) / sig_m, rtol=0, atol=1e-12)
    assert [(float(r[0]), float(t[0])) for r, t, _ in oracle.calls] == [(0.0, 1.0), (0.0, t_m)]
    # the generator path draws ε′ = randn(noise.shape) from it
    again = sample_two_step_consistency(oracle, noise, t_mid=t_m, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again, out)


def test_time_tensors_and_labels_reach_the_net(oracle):
    z = torch.randn((2, *SHAPE), dtype=torch.float32)
    oracle.mu = oracle.mu.float()
    labels = torch.tensor([3, 1])
    out = sample_average_velocity(oracle, z, labels, steps=3)
    assert out.shape == z.shape and out.dtype == torch.float32
    for r, t, lab in oracle.calls:
        assert r.shape == t.shape == (2,) and r.dtype == t.dtype == torch.float32 and r.device == z.device
        assert lab is labels


# ----------------------------------------------------------------------------- grid and dispatch

def test_time_grid_values():
    assert time_grid(1) == [1.0, 0.0]
    assert time_grid(2) == [1.0, 0.5, 0.0]
    assert time_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert time_grid(2, t_mid=0.55) == [1.0, 0.55, 0.0]


def test_generate_dispatches(oracle, noise):
    assert set(SAMPLERS) == {"ode", "consistency", "euler"}
    assert torch.equal(generate(oracle, noise, nfe=1), sample_one_step(oracle, noise))
    assert torch.equal(generate(oracle, noise, nfe=2, t_mid=0.3), sample_two_step_ode(oracle, noise, t_mid=0.3))
    assert torch.equal(generate(oracle, noise, nfe=4), sample_average_velocity(oracle, noise, steps=4))
    assert torch.equal(generate(oracle, noise, nfe=3, sampler="euler"), sample_euler(oracle, noise, steps=3))
    assert torch.equal(generate(oracle, noise, nfe=1, sampler="euler"), sample_euler(oracle, noise, steps=1))
    assert torch.equal(generate(oracle, noise, nfe=1, sampler="consistency"), sample_one_step(oracle, noise))
    got = generate(oracle, noise, nfe=2, sampler="consistency", t_mid=0.55, generator=torch.Generator().manual_seed(3))
    want = sample_two_step_consistency(oracle, noise, t_mid=0.55, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, want)
    oracle.calls.clear()
    generate(oracle, noise, nfe=5)
    assert len(oracle.calls) == 5


# ----------------------------------------------------------------------------- bad input

BAD = [
    ("steps", lambda n, z: time_grid(0)),
    ("steps", lambda n, z: sample_average_velocity(n, z, steps=0)),
    ("steps", lambda n, z: sample_euler(n, z, steps=0)),
    ("steps", lambda n, z: sample_average_velocity(n, z, times=[1, 0.5, 0], steps=3)),
    ("t_mid", lambda n, z: time_grid(2, t_mid=1.0)),
    ("t_mid", lambda n, z: time_grid(3, t_mid=0.5)),
    ("t_mid", lambda n, z: sample_two_step_ode(n, z, t_mid=0.0)),
    ("t_mid", lambda n, z: sample_two_step_consistency(n, z, t_mid=1.5)),
    ("t_mid", lambda n, z: generate(n, z, nfe=2, t_mid=-0.1)),
    ("times", lambda n, z: sample_average_velocity(n, z, times=[1, 0.6, 0.7, 0])),
    ("times", lambda n, z: sample_average_velocity(n, z, times=[1, 0.5, 0.5, 0])),
    ("times", lambda n, z: sample_average_velocity(n, z, times=[0.9, 0.5, 0])),
    ("times", lambda n, z: sample_average_velocity(n, z, times=[1, 0.5])),
    ("times", lambda n, z: sample_average_velocity(n, z, times=[1, 1.2, 0])),
    ("times", lambda n, z: sample_average_velocity(n, z, times=[1])),
    ("sampler", lambda n, z: generate(n, z, nfe=2, sampler="heun")),
    ("nfe", lambda n, z: generate(n, z, nfe=3, sampler="consistency")),
    ("nfe", lambda n, z: generate(n, z, nfe=0)),
    ("renoise", lambda n, z: sample_two_step_consistency(n, z, renoise=z[:1])),
]


@pytest.mark.parametrize("name,call", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_input_names_the_argument(oracle, noise, name, call):
    with pytest.raises(ValueError, match=name):
        call(oracle, noise)


def test_error_messages_say_what_was_expected(oracle, noise):
    with pytest.raises(ValueError, match=r"start at 1 .* end at 0"):
        sample_average_velocity(oracle, noise, times=[0.9, 0])
    with pytest.raises(ValueError, match="consistency.*euler.*ode"):
        generate(oracle, noise, nfe=2, sampler="nope")
