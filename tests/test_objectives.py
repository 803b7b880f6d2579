"""The theory, said out loud in float64 on a tiny smooth network (docs/objectives.md;
arXiv 2510.20771 §2–3, Definition 1, Theorem 1)."""

from __future__ import annotations

import pytest
import torch

from alphaflow.core.conventions import NULL_LABEL, interpolate, velocity
from alphaflow.core.jvp import average_velocity_jvp
from alphaflow.objectives import (Guidance, AlphaFlow, FlowMatching, MeanFlow, Sample, Shortcut, TrajectoryFlowMatching,
                                  build_objective)
from alphaflow.core.schedules import sigmoid


def make_sample(x, labels, *, all_pairs=False, seed=2) -> Sample:
    """Half the rows r = t, half r < t (or every row r < t)."""
    g = torch.Generator().manual_seed(seed)
    b = x.shape[0]
    a, c = torch.rand(b, generator=g, dtype=x.dtype), torch.rand(b, generator=g, dtype=x.dtype)
    t, r = torch.maximum(a, c), torch.minimum(a, c)
    if not all_pairs:
        r[: b // 2] = t[: b // 2]
    return Sample(t=t, r=r, eps=torch.randn(x.shape, generator=g, dtype=x.dtype), labels=labels)


def grad_of(net, scalar) -> torch.Tensor:
    grads = torch.autograd.grad(scalar, [p for p in net.parameters()], retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, net.parameters())])


# ----------------------------------------------------------------------------- unification (Theorem 1)

@pytest.mark.parametrize("guidance", [None, Guidance(omega=1.0, kappa=0.5)])
def test_alpha_one_is_trajectory_flow_matching(tiny_net, batch, guidance):
    x, y = batch
    sample = make_sample(x, y)
    a1 = AlphaFlow(alpha=1.0, clip=None, guidance=guidance)(tiny_net, x, sample=sample)
    tfm = TrajectoryFlowMatching(guidance=guidance)(tiny_net, x, sample=sample)
    torch.testing.assert_close(a1.loss, tfm.loss, rtol=0, atol=1e-14)
    torch.testing.assert_close(grad_of(tiny_net, a1.loss.mean()), grad_of(tiny_net, tfm.loss.mean()), rtol=0, atol=1e-14)
    torch.testing.assert_close(a1.components["tfm"], a1.components["mse"])


def test_alpha_to_zero_gradient_approaches_meanflow(tiny_net, batch):
    """∇(α⁻¹·‖u − u_tgt^α‖²) → ∇L_MF, with an error that shrinks linearly in α (App. D.2)."""
    x, y = batch
    sample = make_sample(x, y, all_pairs=True)
    mf = MeanFlow(adaptive_p=0.0)(tiny_net, x, sample=sample)
    g_mf = grad_of(tiny_net, mf.components["mf"].mean())
    errors = []
    for alpha in (1e-1, 1e-2, 1e-3):
        terms = AlphaFlow(alpha=alpha, clip=None, adaptive_p=0.0)(tiny_net, x, sample=sample)
        g_alpha = grad_of(tiny_net, terms.components["mse"].mean() / alpha)
        errors.append(float((g_alpha - g_mf).norm() / g_mf.norm()))
    assert errors[0] < 0.2, errors
    assert errors[1] < 0.15 * errors[0] and errors[2] < 0.15 * errors[1], errors


def test_alpha_zero_falls_back_to_meanflow_jvp(tiny_net, batch):
    x, y = batch
    sample = make_sample(x, y)
    late = 1_000_000
    af = AlphaFlow(alpha=sigmoid(0, 1000))(tiny_net, x, sample=sample, step=late)
    mf = MeanFlow()(tiny_net, x, sample=sample)
    assert af.logs["alpha"] == 0.0
    torch.testing.assert_close(af.target, mf.target, rtol=0, atol=0)
    torch.testing.assert_close(af.loss, mf.loss, rtol=0, atol=0)
    torch.testing.assert_close(af.components["mf"], mf.components["mf"])


def test_shortcut_is_half_alpha_flow_at_one_half(tiny_net, batch):
    """Theorem 1: L_SC = ½·L_{1/2} with ṽ_{s,t} = u_θ⁻(z_t, s, t), Def. 1 written out independently here."""
    x, y = batch
    sample = make_sample(x, y, all_pairs=True)
    sc = Shortcut()(tiny_net, x, sample=sample)
    t, r = sample.t, sample.r
    z = interpolate(x, sample.eps, t)
    with torch.no_grad():
        alpha = 0.5
        s = alpha * r + (1 - alpha) * t
        v_shift = tiny_net(z, s, t, y)
        z_s = z - (t - s).view(-1, 1, 1, 1) * v_shift
        target = alpha * v_shift + (1 - alpha) * tiny_net(z_s, r, s, y)
    l_half = ((tiny_net(z, r, t, y) - target) ** 2).flatten(1).mean(1) / alpha
    torch.testing.assert_close(sc.loss, 0.5 * l_half, rtol=1e-12, atol=1e-14)
    via_alpha = AlphaFlow(alpha=0.5, shift="model", clip=None, adaptive_p=0.0)(tiny_net, x, sample=sample)
    torch.testing.assert_close(via_alpha.target, sc.target, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- MeanFlow

@pytest.mark.parametrize("objective", [MeanFlow(), AlphaFlow(alpha=0.3, clip=None), AlphaFlow(alpha=0.0)])
def test_gradient_decomposition_mf_is_tfm_plus_tcc(tiny_net, batch, objective):
    """L_MF = L_TFM + L_TCC + C(θ-free): values up to C, gradients exactly
    (docs/objectives.md#trajectory-flow-matching-and-trajectory-consistency; arXiv 2510.20771 Eq. 6–7)."""
    x, y = batch
    terms = objective(tiny_net, x, sample=make_sample(x, y))
    comp = terms.components
    g_sum = grad_of(tiny_net, comp["tfm"].mean()) + grad_of(tiny_net, comp["tcc"].mean())
    torch.testing.assert_close(grad_of(tiny_net, comp["mse"].mean()), g_sum, rtol=1e-10, atol=1e-13)
    z_t = interpolate(x, terms.sample.eps, terms.sample.t)
    v = velocity(x, terms.sample.eps)
    const = (terms.target ** 2 - v ** 2).flatten(1).mean(1)
    torch.testing.assert_close(comp["mse"], comp["tfm"] + comp["tcc"] + const, rtol=1e-10, atol=1e-12)
    assert z_t.shape == x.shape


def test_tcc_is_the_paper_expression(tiny_net, batch):
    """For MeanFlow, tcc = 2(t − r)·u_θ·sg(du/dt) and it is 0 on r = t rows."""
    x, y = batch
    sample = make_sample(x, y)
    terms = MeanFlow()(tiny_net, x, sample=sample)
    z = interpolate(x, sample.eps, sample.t)
    _, dudt = average_velocity_jvp(tiny_net, z, sample.r, sample.t, y, velocity(x, sample.eps))
    expected = 2 * ((sample.t - sample.r).view(-1, 1, 1, 1) * terms.pred * dudt).flatten(1).mean(1)
    torch.testing.assert_close(terms.components["tcc"], expected, rtol=1e-10, atol=1e-13)
    assert (terms.components["tcc"][sample.r == sample.t] == 0).all()


def test_meanflow_at_r_equals_t_is_flow_matching(tiny_net, batch):
    x, y = batch
    sample = make_sample(x, y)
    sample.r = sample.t.clone()
    mf = MeanFlow()(tiny_net, x, sample=sample)
    fm = FlowMatching()(tiny_net, x, sample=sample)
    torch.testing.assert_close(mf.loss, fm.loss, rtol=0, atol=0)
    torch.testing.assert_close(grad_of(tiny_net, mf.loss.mean()), grad_of(tiny_net, fm.loss.mean()), rtol=0, atol=0)


def test_jvp_matches_central_finite_difference(tiny_net, batch):
    x, y = batch
    sample = make_sample(x, y, all_pairs=True)
    z, v = interpolate(x, sample.eps, sample.t), velocity(x, sample.eps)
    r, t = sample.r, sample.t
    u, dudt = average_velocity_jvp(tiny_net, z, r, t, y, v)
    h = 1e-5
    with torch.no_grad():
        fd = (tiny_net(z + h * v, r, t + h, y) - tiny_net(z - h * v, r, t - h, y)) / (2 * h)
        torch.testing.assert_close(u, tiny_net(z, r, t, y), rtol=0, atol=1e-14)
    torch.testing.assert_close(dudt, fd, rtol=1e-7, atol=1e-9)
    # the MeanFlow target is ṽ − (t − r)·du/dt on these rows
    terms = MeanFlow()(tiny_net, x, sample=sample)
    torch.testing.assert_close(terms.target, v - (t - r).view(-1, 1, 1, 1) * fd, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- α-Flow target and weights

def test_alpha_target_is_euler_step_plus_model_jump(tiny_net, batch):
    """u_tgt = [(t − s)·ṽ + (s − r)·u(z_s, r, s)]/(t − r), the equivalent view of Def. 1."""
    x, y = batch
    sample = make_sample(x, y)
    alpha = 0.3
    terms = AlphaFlow(alpha=alpha, clip=None)(tiny_net, x, sample=sample)
    t, r = sample.t, sample.r
    z, v = interpolate(x, sample.eps, t), velocity(x, sample.eps)
    s = t - alpha * (t - r)
    e = lambda a: a.view(-1, 1, 1, 1)  # noqa: E731
    with torch.no_grad():
        z_s = z - e(t - s) * v
        pair = r < t
        expected = v.clone()
        expected[pair] = ((e(t - s) * v + e(s - r) * tiny_net(z_s, r, s, y)) / e(t - r))[pair]
    torch.testing.assert_close(terms.target, expected, rtol=1e-12, atol=1e-12)


def test_alpha_weights_and_clip(tiny_net, batch):
    x, y = batch
    sample = make_sample(x, y)
    pair = sample.r < sample.t
    plain = AlphaFlow(alpha=0.25, adaptive_p=0.0, clip=None)(tiny_net, x, sample=sample)
    ratio = plain.loss / plain.components["mse"]
    torch.testing.assert_close(ratio[pair], torch.full_like(ratio[pair], 0.25))
    torch.testing.assert_close(ratio[~pair], torch.ones_like(ratio[~pair]))
    clipped = AlphaFlow(alpha=0.25, clip=0.05)(tiny_net, x, sample=sample)
    assert clipped.target[pair].abs().max() <= 0.05
    torch.testing.assert_close(clipped.target[~pair], velocity(x, sample.eps)[~pair])  # r = t rows never clipped


def test_adaptive_weight_value_and_gradient(tiny_net, batch):
    """loss = mse/(sg(mse) + c): its value and its gradient w·∇mse with w = 1/(mse + c)."""
    x, y = batch
    sample = make_sample(x, y)
    terms = MeanFlow(adaptive_c=1e-3)(tiny_net, x, sample=sample)
    mse = terms.components["mse"]
    torch.testing.assert_close(terms.loss, mse / (mse.detach() + 1e-3))
    w = 1 / (mse.detach() + 1e-3)
    torch.testing.assert_close(grad_of(tiny_net, terms.loss.sum()), grad_of(tiny_net, (w * mse).sum()))


# ----------------------------------------------------------------------------- Guidance and sampling

def test_guided_velocity_formula(tiny_net, batch):
    x, y = batch
    sample = make_sample(x, y)
    sample.r = sample.t.clone()  # FM rows: the target is ṽ itself
    guidance = Guidance(omega=0.2, kappa=0.92, t_min=0.0, t_max=0.6)
    terms = FlowMatching(guidance=guidance)(tiny_net, x, sample=sample)
    t = sample.t
    z, v = interpolate(x, sample.eps, t), velocity(x, sample.eps)
    null = torch.full_like(y, NULL_LABEL)
    with torch.no_grad():
        guided = 0.2 * v + 0.92 * tiny_net(z, t, t, y) + (1 - 0.2 - 0.92) * tiny_net(z, t, t, null)
    inside = (t > 0.0) & (t < 0.6)
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(terms.target[inside], guided[inside])
    torch.testing.assert_close(terms.target[~inside], v[~inside])


def test_label_dropout_only_inside_window(batch):
    x, y = batch
    obj = MeanFlow(guidance=Guidance(t_min=0.0, t_max=0.5, label_dropout=1.0))
    sample = obj.draw(x, y, generator=torch.Generator().manual_seed(0))
    inside = sample.t < 0.5
    assert (sample.labels[inside] == NULL_LABEL).all()
    assert torch.equal(sample.labels[~inside], y[~inside])


def test_drawn_sample_follows_ratio_and_is_reproducible(tiny_net, batch):
    x, y = batch
    obj = AlphaFlow(alpha=0.5, ratio_fm=0.25)
    s1 = obj.draw(x, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s1.r[:2], s1.t[:2]) and (s1.r[2:] < s1.t[2:]).all()
    t1 = obj(tiny_net, x, y, generator=torch.Generator().manual_seed(5))
    t2 = obj(tiny_net, x, sample=s1)
    torch.testing.assert_close(t1.loss, t2.loss, rtol=0, atol=0)


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_name_the_argument(tiny_net, batch):
    x, y = batch
    good = make_sample(x, y)
    obj = MeanFlow()
    cases = [
        (Sample(t=good.t + 1.5, r=good.r, eps=good.eps, labels=y), "t must lie in [0, 1]"),
        (Sample(t=good.t, r=good.t + 0.01 * (good.t < 0.99), eps=good.eps, labels=y), "r must satisfy r <= t"),
        (Sample(t=good.t, r=good.r, eps=good.eps[:, :, :2], labels=y), "sample.eps"),
        (Sample(t=good.t, r=good.r, eps=good.eps, labels=y.double()), "sample.labels"),
        (Sample(t=good.t[:3], r=good.r[:3], eps=good.eps, labels=y), "t has 3 rows"),
    ]
    for sample, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            obj(tiny_net, x, sample=sample)
    with pytest.raises(ValueError, match="labels were passed both"):
        obj(tiny_net, x, y, sample=good)
    with pytest.raises(ValueError, match="labels must have shape"):
        obj(tiny_net, x, y[:3])
    with pytest.raises(ValueError, match="did you mean meanflow"):
        build_objective("meanflw")
    with pytest.raises(ValueError, match="alpha must stay in"):
        AlphaFlow(alpha=1.5)
    with pytest.raises(ValueError, match="ratio_fm must stay in"):
        MeanFlow(ratio_fm=-0.1)
    with pytest.raises(ValueError, match="ratio_fm must be 1"):
        FlowMatching(ratio_fm=0.5)
    with pytest.raises(ValueError, match="clip"):
        AlphaFlow(alpha=0.5, clip=0.0)
    with pytest.raises(ValueError, match="shift"):
        AlphaFlow(alpha=0.5, shift="ema")
    with pytest.raises(ValueError, match="adaptive_p"):
        MeanFlow(adaptive_p=-1)
    with pytest.raises(ValueError, match="guidance window"):
        Guidance(t_min=0.8, t_max=0.2)


# ----------------------------------------------------------------------------- which passes run, on which rows

class Recorder:
    """Wraps a net and records the batch size and r == t status of every call."""

    def __init__(self, net):
        self.net, self.calls = net, []

    def __call__(self, z, r, t, labels=None):
        self.calls.append((z.shape[0], bool(torch.all(r == t))))
        return self.net(z, r, t, labels)


def test_jvp_runs_on_the_r_below_t_rows_only(tiny_net, batch):
    x, y = batch
    sample = make_sample(x, y)  # 4 rows r = t, 4 rows r < t
    net = Recorder(tiny_net)
    MeanFlow()(net, x, sample=sample)
    assert net.calls == [(4, False), (8, False)], net.calls  # the JVP on 4 rows, then the prediction on all 8


@pytest.mark.parametrize("omega,kappa,expected", [
    (1.0, 0.0, 0),   # no guidance: no extra pass
    (0.5, 0.5, 1),   # 1 − ω − κ = 0: the unconditional pass is skipped
    (2.0, 0.0, 1),   # κ = 0: the conditional pass is skipped
    (0.2, 0.92, 2),  # both
])
def test_cfg_skips_passes_whose_weight_is_zero(tiny_net, batch, omega, kappa, expected):
    x, y = batch
    sample = make_sample(x, y)
    sample.r = sample.t.clone()
    net = Recorder(tiny_net)
    FlowMatching(guidance=Guidance(omega=omega, kappa=kappa))(net, x, sample=sample)
    guidance_calls = net.calls[:-1]
    assert len(guidance_calls) == expected and all(r_is_t for _, r_is_t in guidance_calls), net.calls


# ----------------------------------------------------------------------------- the official codes' variants

def test_alpha_weight_is_exact_in_a_float64_run(tiny_net, batch):
    """α enters the float64 loss as the float64 α: loss = α·mse/(sg(mse) + c) to round-off, not through float32
    (0.3 → 0.30000001192 would be 4·10⁻⁸ off)."""
    x, y = batch
    sample = make_sample(x, y)
    pair = sample.r < sample.t
    terms = AlphaFlow(alpha=0.3, clip=None)(tiny_net, x, sample=sample)
    mse = terms.components["mse"].detach()
    assert terms.loss.dtype == torch.float64
    torch.testing.assert_close(terms.loss[pair], 0.3 * mse[pair] / (mse[pair] + 1e-3), rtol=1e-15, atol=0)
    torch.testing.assert_close(terms.loss[~pair], mse[~pair] / (mse[~pair] + 1e-3), rtol=1e-15, atol=0)
    torch.testing.assert_close(terms.weight[pair], 0.3 / (mse[pair] + 1e-3), rtol=1e-15, atol=0)
    plain = AlphaFlow(alpha=0.3, clip=None, adaptive_p=0.0)(tiny_net, x, sample=sample)
    torch.testing.assert_close(plain.loss[pair], 0.3 * plain.components["mse"][pair], rtol=1e-15, atol=0)


@pytest.mark.parametrize("objective", [MeanFlow, lambda **kw: AlphaFlow(alpha=0.3, clip=None, **kw)],
                         ids=["meanflow", "alphaflow"])
def test_adaptive_reduce_sum_is_meanflow_s_jax_weight_on_the_element_sum(tiny_net, batch, objective):
    """MeanFlow's JAX loss: S = Σ_elements (u − u_tgt)², loss = w·S/sg(S + c) with c = 0.01; the logged
    components stay element means, and Terms.weight still gives loss = weight·mse and ∇loss = weight·∇mse."""
    x, y = batch
    sample = make_sample(x, y)
    n = x[0].numel()
    built = objective(adaptive_reduce="sum", adaptive_c=0.01)
    summed = built(tiny_net, x, sample=sample)
    meaned = objective()(tiny_net, x, sample=sample)
    pair = sample.r < sample.t
    numerator = torch.ones_like(sample.t).masked_fill(pair, 0.3) if isinstance(built, AlphaFlow) else 1.0
    error = ((summed.pred - summed.target) ** 2).flatten(1).sum(1)  # S, the JAX code's per-sample sum
    torch.testing.assert_close(summed.components["mse"], error / n, rtol=1e-14, atol=0)
    torch.testing.assert_close(summed.components["mse"], meaned.components["mse"], rtol=0, atol=0)
    jax_loss = numerator * error / (error.detach() + 0.01)
    torch.testing.assert_close(summed.loss, jax_loss, rtol=1e-14, atol=0)
    torch.testing.assert_close(summed.loss, summed.weight * summed.components["mse"], rtol=1e-14, atol=0)
    torch.testing.assert_close(grad_of(tiny_net, summed.loss.mean()), grad_of(tiny_net, jax_loss.mean()),
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_of(tiny_net, summed.loss.mean()),
                               grad_of(tiny_net, (summed.weight * summed.components["mse"]).mean()),
                               rtol=1e-12, atol=1e-15)
    assert not torch.allclose(summed.loss, meaned.loss), "the sum's weight must differ from the mean's"
    plain = objective(adaptive_reduce="sum", adaptive_p=0.0)(tiny_net, x, sample=sample)
    torch.testing.assert_close(plain.loss, numerator * error, rtol=1e-14, atol=0)
    as_mean = objective(adaptive_c=0.01 / n)(tiny_net, x, sample=sample)  # at p = 1: the sum with c = the mean with c/n
    torch.testing.assert_close(summed.loss, as_mean.loss, rtol=1e-14, atol=0)
    torch.testing.assert_close(summed.weight, as_mean.weight, rtol=1e-14, atol=0)


def test_adaptive_reduce_is_refused_by_name_and_defaults_to_the_mean(tiny_net, batch):
    from alphaflow.objectives import build_objective

    assert MeanFlow().adaptive_reduce == "mean"
    with pytest.raises(ValueError, match=r"objective.adaptive_reduce .* must be one of \['mean', 'sum'\], got 'max'"):
        MeanFlow(adaptive_reduce="max")
    with pytest.raises(ValueError, match="adaptive_reduce .* decoupled_meanflow weights by its learned log-variance"):
        build_objective("decoupled_meanflow", adaptive_reduce="sum")
    with pytest.raises(RuntimeError, match="only while it evaluates"):
        MeanFlow(adaptive_reduce="sum").weighted(torch.ones(2, dtype=torch.float64))


def test_official_jax_dropout_drops_the_leading_rows_whatever_their_t():
    """MeanFlow's JAX cond_drop: k = #{u_i < p} rows are dropped, rows 0..k−1, inside or outside the window."""
    labels = torch.arange(10) % 3
    t = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    jax_style = Guidance(t_min=0.0, t_max=0.3, label_dropout=0.4, dropout_style="official_jax")
    for seed in range(5):
        dropped = jax_style.drop_labels(labels, t, torch.Generator().manual_seed(seed))
        k = int((torch.rand(10, generator=torch.Generator().manual_seed(seed)) < 0.4).sum())
        assert (dropped[:k] == NULL_LABEL).all() and torch.equal(dropped[k:], labels[k:]), (seed, k, dropped)
    always = Guidance(t_min=0.0, t_max=0.3, label_dropout=1.0, dropout_style="official_jax")
    assert (always.drop_labels(labels, t, None) == NULL_LABEL).all(), "the window does not limit the dropout"
    project = Guidance(t_min=0.0, t_max=0.3, label_dropout=1.0)
    assert torch.equal(project.drop_labels(labels, t, None) == NULL_LABEL, t < 0.3), "the project's: in the window"


@pytest.mark.parametrize("style", ["project", "official_jax"])
def test_a_dropped_row_regresses_v_in_the_jax_style_and_the_guided_velocity_in_the_project_s(tiny_net, batch, style):
    x, y = batch
    sample = make_sample(x, y)
    sample.r = sample.t.clone()  # r = t rows: the target is ṽ itself
    sample.labels = y.clone()
    sample.labels[:3] = NULL_LABEL  # the rows a dropout left unconditional
    guidance = Guidance(omega=0.2, kappa=0.92, label_dropout=0.1, dropout_style=style)
    terms = FlowMatching(guidance=guidance)(tiny_net, x, sample=sample)
    t, z, v = sample.t, interpolate(x, sample.eps, sample.t), velocity(x, sample.eps)
    with torch.no_grad():
        null = torch.full_like(y, NULL_LABEL)
        guided = 0.2 * v + 0.92 * tiny_net(z, t, t, sample.labels) + (1 - 0.2 - 0.92) * tiny_net(z, t, t, null)
    torch.testing.assert_close(terms.target[3:], guided[3:], rtol=1e-14, atol=1e-15)
    expected = v[:3] if style == "official_jax" else guided[:3]
    torch.testing.assert_close(terms.target[:3], expected, rtol=1e-14, atol=1e-15)
    assert not torch.allclose(guided[:3], v[:3])


def test_guidance_dropout_style_is_refused_by_name():
    with pytest.raises(ValueError, match=r"guidance.dropout_style must be one of \['project', 'official_jax'\], "
                                         r"got 'jax'"):
        Guidance(dropout_style="jax")
    assert Guidance().dropout_style == "project"


def test_fm_time_reaches_the_drawn_sample(batch):
    """objective.time.fm_time: the objective's drawn r = t rows take the max of a pair."""
    from alphaflow.core.timesteps import LogitNormal, sample_time_pairs

    x, y = batch
    obj = MeanFlow(ratio_fm=0.5, fm_time="max_of_pair")
    drawn = obj.draw(x, y, generator=torch.Generator().manual_seed(3))
    t, r = sample_time_pairs(8, 0.5, LogitNormal(), fm_time="max_of_pair", generator=torch.Generator().manual_seed(3),
                             dtype=x.dtype)
    assert torch.equal(drawn.t, t) and torch.equal(drawn.r, r) and drawn.num_fm == 4
    from alphaflow.train.probes import probe_sample

    probed = probe_sample(x, y, obj, ratio_fm=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(probed.t, t) and torch.equal(probed.r, r), "the probes draw the objective's pairs too"
    with pytest.raises(ValueError, match="objective.time.fm_time"):
        MeanFlow(fm_time="max")
