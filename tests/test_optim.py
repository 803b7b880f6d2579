"""EMA half-life with ramp-up, linear warm-up, gradient hygiene (docs/conventions.md#optimiser-ema-and-precision)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alphaflow.train.optim import EMA, sanitize_and_clip, warmup_factor


def test_ema_beta_follows_the_halflife_and_ramp():
    ema = EMA(nn.Linear(2, 2), halflife_steps=100, rampup_ratio=0.05)
    assert ema.beta(0) == 0.0  # the first update copies the weights
    assert ema.beta(200) == pytest.approx(0.5 ** (1 / 10))  # ramp: h = 0.05·200 = 10 steps
    assert ema.beta(10_000) == pytest.approx(0.5 ** (1 / 100))  # capped at the half-life
    no_ramp = EMA(nn.Linear(2, 2), halflife_steps=100, rampup_ratio=None)
    assert no_ramp.beta(1) == pytest.approx(0.5 ** (1 / 100))


def test_ema_halves_the_gap_after_one_halflife():
    model = nn.Linear(3, 1)
    ema = EMA(model, halflife_steps=8, rampup_ratio=None)
    start = ema.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for step in range(1, 9):
        ema.update(model, step)
    gap = (model.weight - ema.model.weight).detach()
    torch.testing.assert_close(gap, 0.5 * (model.weight.detach() - start))
    assert not ema.model.weight.requires_grad


def test_warmup_is_linear_then_flat():
    assert [warmup_factor(k, 4) for k in range(6)] == [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    # the official scheduler: LinearLR from lr/W over W steps, then constant
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / 10, end_factor=1.0, total_iters=10)
    for k in range(14):
        assert warmup_factor(k, 10) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-15), f"step {k}"
        opt.step()
        sched.step()


def test_sanitize_replaces_nan_and_inf_then_clips():
    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.0])
    norm = sanitize_and_clip([p], max_norm=1.0)
    assert norm == pytest.approx(math.sqrt(2e10 + 9))  # measured after the replacement, before clipping
    expected = torch.tensor([0.0, 1e5, -1e5, 3.0]) / math.sqrt(2e10 + 9)
    torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-9)
    q = nn.Parameter(torch.zeros(2))
    q.grad = torch.tensor([3.0, 4.0])
    assert sanitize_and_clip([q], None) == pytest.approx(5.0) and torch.equal(q.grad, torch.tensor([3.0, 4.0]))
