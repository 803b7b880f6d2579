"""The MeanFlow-family objectives that followed α-Flow (docs/objectives.md#the-meanflow-family), said out loud in
float64: their identities on a flow known in closed form, and the decomposition the probes and the conflict
interventions rely on."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.core.conventions import interpolate, velocity
from alphaflow.objectives import OBJECTIVES, Sample, build_objective
from alphaflow.objectives.base import regression_components
from alphaflow.train.split_backward import weighted_extra, weighted_parts
from flows import GaussianOracle  # tests/flows.py

DT = torch.float64
SHAPE = (2, 3, 3)


@pytest.fixture
def oracle() -> GaussianOracle:
    return GaussianOracle(torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=DT), s=0.5)


def pairs_sample(n: int, *, seed: int = 1, split: torch.Tensor | None = None) -> tuple[torch.Tensor, Sample]:
    """Data x [n, *SHAPE] and a sample with r < t on every row (split: SplitMeanFlow's λ, or None)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(n, generator=g, dtype=DT), torch.rand(n, generator=g, dtype=DT)
    t, r = torch.maximum(a, b) * 0.9 + 0.05, torch.minimum(a, b) * 0.9 + 0.05
    x = torch.randn((n, *SHAPE), generator=g, dtype=DT)
    return x, Sample(t=t, r=r, eps=torch.randn_like(x), split=split, num_fm=0)


# ----------------------------------------------------------------------------- SplitMeanFlow (arXiv 2507.16884)

@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_splitmeanflow_target_from_the_exact_average_velocity_is_that_velocity(oracle, lam):
    """(t − r)·u(r, t) = (t − s)·u(s, t) + (s − r)·u(r, s) on the exact flow, for every λ."""
    n = 6
    x, sample = pairs_sample(n, split=torch.full((n,), lam, dtype=DT))
    terms = build_objective("splitmeanflow")(oracle, x, sample=sample)
    z = interpolate(x, sample.eps, sample.t)
    torch.testing.assert_close(terms.target, oracle(z, sample.r, sample.t), rtol=1e-10, atol=1e-12)


def test_splitmeanflow_regresses_the_velocity_on_r_equals_t_rows_and_draws_its_lambda(oracle):
    x, sample = pairs_sample(4)
    sample.r[:2] = sample.t[:2]
    sample.num_fm = 2
    terms = build_objective("splitmeanflow")(oracle, x, sample=sample)
    torch.testing.assert_close(terms.target[:2], velocity(x, sample.eps)[:2], rtol=0, atol=0)
    objective = build_objective("splitmeanflow")
    drawn = objective.draw(x, generator=torch.Generator().manual_seed(3))
    again = objective.draw(x, generator=torch.Generator().manual_seed(3))
    assert drawn.split.shape == (4,) and torch.equal(drawn.split, again.split), "λ comes from the caller's generator"
    assert bool(((drawn.split >= 0) & (drawn.split <= 1)).all())


def test_a_sample_split_outside_the_unit_interval_is_refused(oracle):
    x, sample = pairs_sample(3, split=torch.tensor([0.5, 1.5, 0.2], dtype=DT))
    with pytest.raises(ValueError, match=r"sample.split must be a \[3\] or \[3, k\] tensor of values in \[0, 1\]"):
        build_objective("splitmeanflow")(oracle, x, sample=sample)


# ----------------------------------------------------------------------------- every objective with tfm and tcc

FAMILY = sorted(n for n, cls in OBJECTIVES.items() if cls.conflict_parts)


class WithLogVariance(torch.nn.Module):
    """A network with a learned log-variance lv(r, t) = a·t + b·r + c beside it (Decoupled MeanFlow's head)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.coef = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=DT))

    def forward(self, z, r, t, labels=None):
        return self.net(z, r, t, labels)

    def log_variance(self, r, t):
        return self.coef[0] * t + self.coef[1] * r + self.coef[2]


@pytest.mark.parametrize("name", FAMILY)
def test_every_objective_splits_its_weighted_loss_into_tfm_and_tcc_exactly(name, tiny_net, batch):
    """∇loss = ∇L_TFM^w + ∇L_TCC^w (the probes and conflict.mode rely on it) and mse = tfm + tcc + a θ-free
    constant, which for a stop-gradient target T is ‖T‖² − ‖ṽ‖² per sample."""
    x, y = batch
    options = {"lam": 0.5} if name == "modular_meanflow" else {}  # its default starts at λ = 0 (MeanFlow)
    net = WithLogVariance(tiny_net) if OBJECTIVES[name].needs_logvar else tiny_net
    if OBJECTIVES[name].needs_velocity_head:  # iMF reads a DiT's velocity head
        net = _dit(aux_head_depth=1)
    terms = build_objective(name, **options)(net, x, y, step=0, generator=torch.Generator().manual_seed(0))
    params = list(net.parameters())
    loss_grad = torch.autograd.grad(terms.loss.mean(), params, retain_graph=True)
    part_tfm, part_tcc = weighted_parts(terms)
    grad = lambda value: torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)  # noqa: E731
    extra = weighted_extra(terms)
    g1, g2 = grad(part_tfm), grad(part_tcc)
    g3 = grad(extra) if extra is not None else [None] * len(params)
    for total, *pieces in zip(loss_grad, g1, g2, g3):
        torch.testing.assert_close(sum(0 if g is None else g for g in pieces), total, rtol=1e-10, atol=1e-13)
    v = velocity(x, terms.sample.eps)
    parts = regression_components(terms.pred, terms.target, v)
    const = (terms.target ** 2 - v ** 2).flatten(1).mean(1)
    torch.testing.assert_close(terms.components["mse"], parts["tfm"] + parts["tcc"] + const, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- Modular MeanFlow (arXiv 2508.17426)

def test_modular_meanflow_at_lambda_zero_is_meanflow_in_loss_and_gradient(tiny_net, batch):
    x, y = batch
    sample = build_objective("meanflow").draw(x, y, generator=torch.Generator().manual_seed(4))
    mf = build_objective("meanflow")(tiny_net, x, sample=sample)
    mod = build_objective("modular_meanflow", lam=0.0)(tiny_net, x, sample=sample)
    assert torch.equal(mf.loss, mod.loss) and torch.equal(mf.target, mod.target) and mod.extra == ()
    params = list(tiny_net.parameters())
    for a, b in zip(torch.autograd.grad(mf.loss.mean(), params), torch.autograd.grad(mod.loss.mean(), params)):
        assert torch.equal(a, b)


def primitive_layer_norm(x, eps):
    """LayerNorm in primitive ops: aten's fused one is silently wrong at third order (pytorch/pytorch#175754),
    which the double-vjp reference below reaches."""
    centred = x - x.mean(-1, keepdim=True)
    return centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + eps)


def reference_modular_loss(net, x, sample, lam):
    """‖u + Δ·SG_λ[D] − v‖² per sample, D from torch.autograd.functional.jvp(create_graph=True): the double-vjp
    trick, reverse mode only, so independent of the forward-mode rules the objective uses."""
    z = interpolate(x, sample.eps, sample.t)
    v = velocity(x, sample.eps)
    r, t, labels = sample.r, sample.t, sample.labels
    with sdpa_kernel([SDPBackend.MATH]):  # the fused kernels have no double backward
        _, dudt = torch.autograd.functional.jvp(lambda z_, t_: net(z_, r, t_, labels), (z, t),
                                                (v, torch.ones_like(t)), create_graph=True)
    gap = (t - r).reshape(-1, *[1] * (x.ndim - 1))
    total = net(z, r, t, labels) + gap * (lam * dudt + (1 - lam) * dudt.detach())
    return ((total - v) ** 2).flatten(1).mean(1)


@pytest.mark.parametrize("model", ["tiny", "dit"])
@pytest.mark.parametrize("lam", [0.25, 1.0])
def test_modular_meanflow_gradient_flows_through_the_jvp_and_splits_in_three(model, lam, tiny_net, batch):
    """The loss's gradient matches the reference built by reverse mode alone (on the DiT too: its LayerNorm is
    differentiated through the forward-mode rule), and ∇mse = ∇tfm + ∇tcc + ∇d exactly."""
    if model == "dit":
        from alphaflow.models import build_model

        net = build_model("DiT-N/2", input_size=4, in_channels=1, num_classes=3).double()
        with torch.no_grad():
            for p in net.parameters():  # the zero-initialised output layers would hide every path
                p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
        x = torch.randn(6, 1, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(5))
        y = torch.tensor([0, 1, 2, 0, 1, 2])
    else:
        (x, y), net = batch, tiny_net
    objective = build_objective("modular_meanflow", lam=lam, adaptive_p=0.0)
    sample = objective.draw(x, y, generator=torch.Generator().manual_seed(6))
    terms = objective(net, x, sample=sample)
    assert terms.extra == ("d",)
    params = [p for p in net.parameters() if p.requires_grad]
    grad = lambda value: torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)  # noqa: E731
    flat = lambda gs: torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()  # noqa: E731
                                 for g, p in zip(gs, params)])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("alphaflow.models.dit_layers.layer_norm", primitive_layer_norm)
        reference = reference_modular_loss(net, x, sample, lam)
    torch.testing.assert_close(terms.components["mse"], reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(flat(grad(terms.loss.mean())), flat(grad(reference.mean())), rtol=1e-8, atol=1e-11)
    parts = sum(flat(grad(terms.components[k].mean())) for k in ("tfm", "tcc", "d"))
    torch.testing.assert_close(parts, flat(grad(terms.components["mse"].mean())), rtol=1e-10, atol=1e-12)
    assert flat(grad(terms.components["d"].mean())).abs().max() > 0, "λ > 0: a gradient through the JVP"


def test_the_probes_report_modular_meanflows_third_part(tiny_net, batch):
    from alphaflow.train.probes import term_losses

    x, y = batch
    objective = build_objective("modular_meanflow", lam=0.5)
    sample = objective.draw(x, y, generator=torch.Generator().manual_seed(7))
    terms = term_losses(tiny_net, x, sample, training=objective)
    assert {"tfm", "tcc", "loss", "d"} <= set(terms)
    torch.testing.assert_close(terms["d"], objective(tiny_net, x, sample=sample).components["d"].mean())
    assert "d" not in term_losses(tiny_net, x, sample, training=build_objective("modular_meanflow", lam=0.0))


@pytest.mark.parametrize("every", [1, 3])
def test_a_conflict_rule_passes_modular_meanflows_third_part_unchanged(every, tiny_net, batch):
    """CAGrad with c = 0 returns the plain sum g_TFM + g_TCC, so with g_D added the update is ∇loss exactly, on an
    exact step and on a step that reuses the coefficients."""
    from alphaflow.config.schema import ConflictConfig
    from alphaflow.train.split_backward import ConflictCombiner
    from alphaflow.train.distributed import DistInfo
    from alphaflow.train.step import LoopState

    x, y = batch
    objective = build_objective("modular_meanflow", lam=0.5)
    params = list(tiny_net.parameters())
    combiner = ConflictCombiner(ConflictConfig(mode="cagrad", c=0.0, every=every), tiny_net, params, DistInfo())
    state = LoopState()
    for step in range(2):
        terms = objective(tiny_net, x, y, generator=torch.Generator().manual_seed(step))
        expected = torch.autograd.grad(terms.loss.mean(), params, retain_graph=True)
        for p in params:
            p.grad = None
        combiner.backward(terms, step, state)
        combiner.commit(state)
        for p, g in zip(params, expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- Decoupled MeanFlow (arXiv 2510.24474)

def _dit(decouple_at=None, seed=8, logvar=False, **options):
    from alphaflow.models import build_model

    net = build_model("DiT-N/2", input_size=4, in_channels=1, num_classes=3, decouple_at=decouple_at,
                      logvar=logvar, **options).double()
    with torch.no_grad():
        for p in net.parameters():  # off the zero init, the same values for every decouple_at
            p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed + p.numel()))
    return net


@pytest.mark.parametrize("k", [0, 1, 2])
def test_a_decoupled_dit_is_the_plain_dit_on_r_equals_t_and_conditions_its_late_blocks_on_r(k):
    plain, decoupled = _dit(), _dit(k)
    assert set(plain.state_dict()) == set(decoupled.state_dict()), "the same weights: a flow-matching model loads"
    decoupled.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(9)
    z = torch.randn(5, 1, 4, 4, dtype=DT, generator=g)
    t = torch.rand(5, dtype=DT, generator=g)
    r = t * torch.rand(5, dtype=DT, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(decoupled(z, t, t, y), plain(z, t, t, y), rtol=1e-12, atol=1e-13)
    assert not torch.allclose(decoupled(z, r, t, y), decoupled(z, t, t, y)), "r reaches the late blocks"
    # tangent mode gives the JVP of this forward along (dz, dr, dt)
    dz, dr, dt = torch.randn_like(z), torch.randn(5, dtype=DT, generator=g), torch.randn(5, dtype=DT, generator=g)
    u, du = decoupled(z, r, t, y, tangent=(None, dz, dr, dt))
    with sdpa_kernel([SDPBackend.MATH]):
        _, ref = torch.func.jvp(lambda z_, r_, t_: decoupled(z_, r_, t_, y), (z, r, t), (dz, dr, dt))
    torch.testing.assert_close(u, decoupled(z, r, t, y), rtol=0, atol=0)
    torch.testing.assert_close(du, ref, rtol=1e-10, atol=1e-12)


def test_decouple_at_is_checked_before_a_run():
    from alphaflow.train.build import preflight
    from alphaflow.config import load_config

    with pytest.raises(ValueError, match=r"model.decouple_at must lie in \[0, 4\]"):
        preflight(load_config(None, ["model.decouple_at=5"]))
    with pytest.raises(ValueError, match="model.decouple_at is an option of the DiT models"):
        preflight(load_config(None, ["model.name=MLP-B", "data.name=toy2d", "model.decouple_at=1"]))


def test_splitmeanflow_on_a_sample_without_lambda_leaves_the_global_random_stream_alone(tiny_net, batch):
    x, y = batch
    sample = build_objective("meanflow").draw(x, y, generator=torch.Generator().manual_seed(10))  # no sample.split
    assert sample.split is None
    before = torch.get_rng_state()
    a = build_objective("splitmeanflow")(tiny_net, x, sample=sample)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_objective("splitmeanflow")(tiny_net, x, sample=sample)
    assert torch.equal(a.target, b.target), "the fallback λ is reproducible"
    sample.split = torch.full((x.shape[0],), 0.5, dtype=x.dtype)
    c = build_objective("splitmeanflow")(tiny_net, x, sample=sample)
    assert not torch.equal(a.target, c.target), "λ matters on this network"


def test_decoupled_meanflow_is_meanflow_under_the_learned_uncertainty_weighting(tiny_net, batch):
    """ℓ = log(e^(−lv)·mse + c) + lv per row with MeanFlow's target; lv's own gradient is the lv component's."""
    x, y = batch
    net = WithLogVariance(tiny_net)
    sample = build_objective("meanflow").draw(x, y, generator=torch.Generator().manual_seed(11))
    mf = build_objective("meanflow")(tiny_net, x, sample=sample)
    terms = build_objective("decoupled_meanflow")(net, x, sample=sample)
    torch.testing.assert_close(terms.target, mf.target, rtol=0, atol=0)
    lv = net.log_variance(sample.r, sample.t)
    expected = torch.log(torch.exp(-lv) * mf.components["mse"] + 0.01) + lv
    torch.testing.assert_close(terms.loss, expected, rtol=1e-12, atol=1e-14)
    (g_loss,) = torch.autograd.grad(terms.loss.mean(), [net.coef], retain_graph=True)
    (g_lv,) = torch.autograd.grad(terms.components["lv"].mean(), [net.coef])
    torch.testing.assert_close(g_loss, g_lv, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="needs a network with a log-variance head"):
        build_objective("decoupled_meanflow")(tiny_net, x, sample=sample)


def test_the_log_variance_head_starts_at_zero_and_preflight_asks_for_it():
    from alphaflow.train.build import preflight
    from alphaflow.config import load_config

    net = _dit(logvar=True)
    with torch.no_grad():
        net.logvar_head.linear.weight.zero_()
        net.logvar_head.linear.bias.zero_()
    t = torch.rand(4, dtype=DT)
    assert torch.equal(net.log_variance(t / 2, t), torch.zeros(4, dtype=DT))
    with pytest.raises(ValueError, match="set model.logvar=true"):
        preflight(load_config(None, ["objective.name=decoupled_meanflow"]))
    preflight(load_config(None, ["objective.name=decoupled_meanflow", "model.logvar=true", "model.decouple_at=3"]))
