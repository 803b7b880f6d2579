"""The time convention, pinned once (docs/conventions.md#the-time-axis): t = 0 is data, t = 1 is noise, v = ε − x."""

from __future__ import annotations

import pytest
import torch

from alphaflow.core.conventions import NULL_LABEL, check_times, expand_time, interpolate, velocity

DT = torch.float64


def draw(shape=(4, 3, 5, 5), seed=0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    eps = torch.randn(shape, generator=g, dtype=dtype)
    return x, eps


# ----------------------------------------------------------------------------- the interpolant

def test_t_zero_is_data_and_t_one_is_noise_exactly():
    x, eps = draw()
    b = x.shape[0]
    z0 = interpolate(x, eps, torch.zeros(b, dtype=DT))
    z1 = interpolate(x, eps, torch.ones(b, dtype=DT))
    assert torch.equal(z0, x), "interpolate(x, ε, t=0) must be the data x exactly (t = 0 is data)"
    assert torch.equal(z1, eps), "interpolate(x, ε, t=1) must be the noise ε exactly (t = 1 is noise)"


def test_interpolate_is_the_straight_line_at_an_interior_time():
    x, eps = draw()
    t = torch.full((x.shape[0],), 0.3, dtype=DT)
    torch.testing.assert_close(interpolate(x, eps, t), 0.7 * x + 0.3 * eps, rtol=0, atol=1e-15,
                               msg="z_t must be (1 − t)·x + t·ε")


def test_velocity_is_noise_minus_data():
    x, eps = draw()
    assert torch.equal(velocity(x, eps), eps - x), "the conditional velocity must be ε − x (pointing to noise)"


def test_time_derivative_of_interpolant_is_velocity_by_autograd():
    x, eps = draw()
    t = torch.tensor([0.0, 0.2, 0.65, 1.0], dtype=DT)
    # Row i of z depends only on t_i, so a JVP with tangent 1 in every row gives dz_i/dt_i.
    _, dz_dt = torch.func.jvp(lambda tt: interpolate(x, eps, tt), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(dz_dt, velocity(x, eps), rtol=0, atol=1e-14,
                               msg="d z_t / dt must equal velocity(x, ε) = ε − x")


def test_time_derivative_of_interpolant_is_velocity_by_finite_difference():
    x, eps = draw(seed=3)
    t = torch.tensor([0.1, 0.4, 0.5, 0.9], dtype=DT)
    h = 1e-4
    fd = (interpolate(x, eps, t + h) - interpolate(x, eps, t - h)) / (2 * h)
    torch.testing.assert_close(fd, velocity(x, eps), rtol=0, atol=1e-9,
                               msg="central difference of z_t in t must equal ε − x")


def test_a_jump_along_the_conditional_velocity_lands_on_the_interpolant():
    # z_r = z_t − (t − r)·v: the jump convention (docs/conventions.md#average-velocity-and-the-network-call)
    # agrees with the interpolant.
    x, eps = draw(seed=5)
    t = torch.tensor([0.9, 0.5, 1.0, 0.3], dtype=DT)
    r = torch.tensor([0.1, 0.5, 0.0, 0.25], dtype=DT)
    jumped = interpolate(x, eps, t) - expand_time(t - r, x) * velocity(x, eps)
    torch.testing.assert_close(jumped, interpolate(x, eps, r), rtol=0, atol=1e-14,
                               msg="z_t − (t − r)·(ε − x) must equal z_r")


def test_per_sample_times_broadcast_row_by_row():
    x, eps = draw(shape=(4, 2, 3, 3), seed=7)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=DT)
    z = interpolate(x, eps, t)
    assert z.shape == x.shape, f"interpolate must keep the shape [B, C, H, W], got {tuple(z.shape)}"
    for i in range(4):
        expected = (1 - t[i]) * x[i] + t[i] * eps[i]
        torch.testing.assert_close(z[i], expected, rtol=0, atol=1e-15,
                                   msg=f"row {i} must use its own time t[{i}] = {float(t[i])}")


def test_expand_time_shape_and_dtype():
    like = torch.zeros(4, 3, 8, 8, dtype=torch.float32)
    t = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DT)
    tt = expand_time(t, like)
    assert tt.shape == (4, 1, 1, 1), f"expand_time must give [B, 1, 1, 1] for a 4-D tensor, got {tuple(tt.shape)}"
    assert tt.dtype == like.dtype, f"expand_time must cast to the data dtype {like.dtype}, got {tt.dtype}"
    assert torch.equal(tt.flatten(), t.float()), "expand_time must not reorder or change the times"


def test_null_label_is_minus_one():
    assert NULL_LABEL == -1 and isinstance(NULL_LABEL, int), f"NULL_LABEL must be the int −1, got {NULL_LABEL!r}"


# ----------------------------------------------------------------------------- check_times

def test_check_times_accepts_the_closed_interval_and_r_equal_t():
    t = torch.tensor([0.0, 0.5, 1.0, 1.0])
    r = torch.tensor([0.0, 0.5, 0.0, 1.0])
    check_times(t, r, batch=4)  # boundaries and r == t are legal
    check_times(t)  # r is optional


@pytest.mark.parametrize("t, r, batch, match", [
    (torch.tensor([0.2, 1.5]), None, None, r"^t must lie in \[0, 1\]"),
    (torch.tensor([-0.1, 0.5]), None, None, r"^t must lie in \[0, 1\]"),
    (torch.tensor([0.5, 0.5]), torch.tensor([-0.2, 0.1]), None, r"^r must lie in \[0, 1\]"),
    (torch.tensor([0.5, 0.5]), torch.tensor([0.1, 0.6]), None, r"^r must satisfy r <= t"),
    (torch.tensor([[0.5, 0.5]]), None, None, r"^t must be a 1-D tensor"),
    (torch.tensor(0.5), None, None, r"^t must be a 1-D tensor"),
    (torch.tensor([0.5, 0.5]), torch.tensor([[0.1], [0.2]]), None, r"^r must be a 1-D tensor"),
    (torch.tensor([0.5, 0.5, 0.5]), None, 4, r"^t has 3 rows but the batch has 4"),
    (torch.tensor([0.5] * 4), torch.tensor([0.1] * 3), 4, r"^r has 3 rows but the batch has 4"),
    (torch.tensor([0.5, float("nan")]), None, None, r"^t contains non-finite"),
    (torch.tensor([0.5, 0.5]), torch.tensor([float("inf"), 0.1]), None, r"^r contains non-finite"),
], ids=["t>1", "t<0", "r<0", "r>t", "t-2d", "t-0d", "r-2d", "t-batch", "r-batch", "t-nan", "r-inf"])
def test_check_times_refuses_and_names_the_argument(t, r, batch, match):
    with pytest.raises(ValueError, match=match):
        check_times(t, r, batch=batch)


@pytest.mark.parametrize("r_rows", [1, 3])
def test_check_times_refuses_r_and_t_of_different_lengths(r_rows):
    t = torch.full((4,), 0.5)
    r = torch.full((r_rows,), 0.1)
    with pytest.raises(ValueError, match=r"\br\b"):
        check_times(t, r)


def test_check_times_accepts_an_empty_batch():
    check_times(torch.empty(0), torch.empty(0))  # nothing to check, and no crash inside torch.min
