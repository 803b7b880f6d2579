"""The conflict interventions stated as identities in float64 (alphaflow/core/conflict.py, docs/conflict.md): what each
rule does to g_TFM and g_TCC, CAGrad against a brute-force search, and the split of the loss's gradient."""

from __future__ import annotations

import math

import pytest
import torch

from alphaflow.core.conflict import MODES, cagrad_coefficients, coefficients, conflict_stats
from alphaflow.objectives import build_objective
from alphaflow.train.split_backward import weighted_parts


def gram_of(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.stack([g1 @ g1, g1 @ g2]), torch.stack([g1 @ g2, g2 @ g2])])[None]


def pair(cos: float, n1: float = 1.0, n2: float = 2.0, dim: int = 7, seed: int = 0):
    """Two vectors of norms n1, n2 whose cosine is ``cos``."""
    gen = torch.Generator().manual_seed(seed)
    e1, e2 = torch.linalg.qr(torch.randn(dim, 2, generator=gen, dtype=torch.float64))[0].T
    g1 = n1 * e1
    g2 = n2 * (cos * e1 + math.sqrt(1 - cos * cos) * e2)
    return g1, g2


def update(g1, g2, mode, c=0.4):
    a, b = coefficients(gram_of(g1, g2), mode, c)[0]
    return a * g1 + b * g2, a, b


@pytest.mark.parametrize("cos", [-0.95, -0.5, -0.01])
def test_pcgrad_projects_each_part_onto_the_normal_plane_of_the_other(cos):
    g1, g2 = pair(cos)
    u, a, b = update(g1, g2, "pcgrad")
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g1 @ g2) / (g1 @ g1) * g1
    assert abs(p1 @ g2) < 1e-12 and abs(p2 @ g1) < 1e-12
    assert torch.allclose(u, p1 + p2, atol=1e-12)


@pytest.mark.parametrize("mode", ["pcgrad", "project_tcc"])
def test_agreeing_gradients_are_left_alone(mode):
    g1, g2 = pair(0.3)
    u, a, b = update(g1, g2, mode)
    assert a == 1 and b == 1 and torch.equal(u, g1 + g2)


def test_project_tcc_keeps_flow_matching_and_removes_the_conflicting_component():
    g1, g2 = pair(-0.7)
    u, a, b = update(g1, g2, "project_tcc")
    assert b == 1
    kept = u - g1  # the projected g_TCC
    assert abs(kept @ g1) < 1e-12 and torch.allclose(kept, g2 - (g1 @ g2) / (g1 @ g1) * g1, atol=1e-12)


@pytest.mark.parametrize("cos", [-0.9, 0.0, 0.8])
def test_balance_gives_both_parts_the_mean_norm(cos):
    g1, g2 = pair(cos, n1=0.3, n2=5.0)
    _, a, b = update(g1, g2, "balance")
    assert math.isclose(float((a * g1).norm()), 2.65, rel_tol=1e-12)
    assert math.isclose(float((b * g2).norm()), 2.65, rel_tol=1e-12)


def test_none_is_the_sum_and_every_rule_is_a_combination_of_the_two_parts():
    g1, g2 = pair(-0.4)
    assert torch.equal(update(g1, g2, "none")[0], g1 + g2)
    assert set(MODES) == {"none", "pcgrad", "project_tcc", "balance", "cagrad"}
    with pytest.raises(ValueError, match="conflict.mode must be one of"):
        coefficients(gram_of(g1, g2), "mgda")


def cagrad_direction(g1, g2, c):
    """d before the official rescale: coefficients × (1 + c²)/2."""
    a, b = cagrad_coefficients(gram_of(g1, g2), c)[0] * (1 + c * c) / 2
    return a * g1 + b * g2


def brute_force_best(g1, g2, c, n=200_000):
    """max over the ball ‖d − g₀‖ ≤ c‖g₀‖ (its boundary, in the plane of g1 and g2) of min(⟨g1, d⟩, ⟨g2, d⟩)."""
    g0 = (g1 + g2) / 2
    e1 = g1 / g1.norm()
    e2 = g2 - (g2 @ e1) * e1
    e2 = e2 / e2.norm()
    theta = torch.linspace(0, 2 * math.pi, n, dtype=torch.float64)
    d = g0 + c * g0.norm() * (torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2)
    return torch.minimum(d @ g1, d @ g2).max()


@pytest.mark.parametrize("cos,n1,n2,c", [(-0.9, 1.0, 2.0, 0.4), (-0.3, 1.0, 1.0, 0.4), (0.2, 3.0, 0.5, 0.4),
                                         (-0.99, 1.0, 1.5, 0.8), (0.7, 1.0, 4.0, 0.1), (-0.6, 2.0, 0.1, 0.5)])
def test_cagrad_maximises_the_worst_improvement_over_its_ball(cos, n1, n2, c):
    g1, g2 = pair(cos, n1, n2, seed=3)
    d = cagrad_direction(g1, g2, c)
    g0 = (g1 + g2) / 2
    assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9), "inside the ball"
    worst = torch.minimum(d @ g1, d @ g2)
    best = brute_force_best(g1, g2, c)
    assert float(worst) >= float(best) - 1e-7 * float(g0.norm()) ** 2, (float(worst), float(best))


def test_cagrad_with_c_zero_is_the_sum_and_with_agreeing_gradients_points_along_the_average():
    g1, g2 = pair(-0.5)
    assert torch.allclose(update(g1, g2, "cagrad", c=0.0)[0], g1 + g2, atol=1e-14)
    g1 = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    u, _, _ = update(g1, 3 * g1, "cagrad", c=0.4)
    average = 2 * g1
    assert torch.allclose(u / u.norm(), average / average.norm(), atol=1e-12)


def test_the_rule_runs_per_group_as_on_each_group_alone():
    g1, g2 = pair(-0.8, seed=1)
    h1, h2 = pair(0.4, 2.0, 1.0, seed=2)
    grams = torch.cat([gram_of(g1, g2), gram_of(h1, h2)])
    for mode in MODES:
        both = coefficients(grams, mode)
        assert torch.allclose(both[0], coefficients(gram_of(g1, g2), mode)[0], atol=1e-15)
        assert torch.allclose(both[1], coefficients(gram_of(h1, h2), mode)[0], atol=1e-15)


def test_conflict_stats_measure_the_cosine_the_norm_ratio_and_the_change():
    g1, g2 = pair(-0.6, 1.0, 2.0)
    coef = coefficients(gram_of(g1, g2), "pcgrad")
    stats = conflict_stats(gram_of(g1, g2), coef)
    u = coef[0, 0] * g1 + coef[0, 1] * g2
    assert math.isclose(float(stats["cos"]), -0.6, rel_tol=1e-12)
    assert math.isclose(float(stats["ratio"]), float((g1 + g2).norm() / 3.0), rel_tol=1e-12)
    assert math.isclose(float(stats["change"]), float((u - g1 - g2).norm() / (g1 + g2).norm()), rel_tol=1e-10)
    assert float(stats["changed"]) == 1.0 and float(conflict_stats(gram_of(g1, g2), coef * 0 + 1)["changed"]) == 0


@pytest.mark.parametrize("spec", [{"name": "meanflow"}, {"name": "alphaflow", "alpha": 0.0},
                                  {"name": "alphaflow", "alpha": 0.5}, {"name": "alphaflow", "alpha": 1.0},
                                  {"name": "shortcut"}, {"name": "shortcut", "adaptive_p": 1.0}, {"name": "tfm"}])
def test_the_weighted_parts_gradients_sum_to_the_gradient_of_the_loss(spec, batch, tiny_net):
    x, y = batch
    net = tiny_net
    objective = build_objective(spec.pop("name"), **spec)
    terms = objective(net, x, y, step=0, generator=torch.Generator().manual_seed(0))
    params = list(net.parameters())
    loss_grad = torch.autograd.grad(terms.loss.mean(), params, retain_graph=True)
    part_tfm, part_tcc = weighted_parts(terms)
    g1 = torch.autograd.grad(part_tfm, params, retain_graph=True)
    g2 = torch.autograd.grad(part_tcc, params)
    for total, a, b in zip(loss_grad, g1, g2):
        assert torch.allclose(a + b, total, rtol=1e-10, atol=1e-13)
