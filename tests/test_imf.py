"""Improved MeanFlow (arXiv 2512.02012): the DiT's velocity head and guidance conditioning, and the objective's
identities (its tangent and guided target, MeanFlow when the head is the exact velocity)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.config import ConfigError, from_dict, validate
from alphaflow.core.conventions import NULL_LABEL, interpolate, velocity
from alphaflow.models import build_model
from alphaflow.objectives import build_objective
from alphaflow.objectives.imf import guidance_inputs
from alphaflow.objectives.meanflow import target_from_dudt

DT = torch.float64


def dit(seed: int = 3, **options) -> nn.Module:
    net = build_model("DiT-N/2", input_size=4, in_channels=1, num_classes=3, **options).double()
    with torch.no_grad():
        for p in net.parameters():  # off the zero init, the same values for every option
            p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(seed + p.numel()))
    return net


def inputs(B: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, 1, 4, 4, generator=g, dtype=DT)
    t = torch.rand(B, generator=g, dtype=DT)
    r = t * torch.rand(B, generator=g, dtype=DT)
    return z, r, t, torch.randint(0, 3, (B,), generator=g)


# ----------------------------------------------------------------------------- the DiT options

def test_without_the_options_the_dit_has_no_new_weights_and_the_head_does_not_touch_u():
    plain, with_head = dit(), dit(aux_head_depth=1)
    assert set(dit(aux_head_depth=None).state_dict()) == set(plain.state_dict())
    extra = set(with_head.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith(("v_blocks.", "v_final_layer.")) for k in extra)
    with_head.load_state_dict(plain.state_dict(), strict=False)
    z, r, t, y = inputs()
    u, v_hat = with_head(z, r, t, y, velocity=True)
    assert torch.equal(u, plain(z, r, t, y)) and torch.equal(with_head(z, r, t, y), u)
    # dit() seeds each weight by its size, so the v branch holds the u branch's last block and final layer:
    # forked after depth − 1 blocks, it must then give u itself
    torch.testing.assert_close(v_hat, u, rtol=1e-12, atol=1e-13)
    with torch.no_grad():
        with_head.v_final_layer.linear.bias.add_(1.0)
    assert not torch.allclose(with_head(z, r, t, y, velocity=True)[1], u)
    fresh = build_model("DiT-N/2", input_size=4, in_channels=1, num_classes=3, aux_head_depth=2)
    assert torch.equal(fresh(z.float(), r.float(), t.float(), y, velocity=True)[1], torch.zeros(6, 1, 4, 4))


@pytest.mark.parametrize("aux", [0, 2])
def test_the_tangent_mode_with_the_velocity_head_and_guidance_is_the_jvp_of_u(aux):
    net = dit(aux_head_depth=aux, guidance_embed=True)
    z, r, t, y = inputs()
    g = torch.Generator().manual_seed(5)
    guide = torch.stack([1 + 7 * torch.rand(6, generator=g), 0.5 * torch.rand(6, generator=g),
                         0.5 + 0.5 * torch.rand(6, generator=g)], 1).to(DT)
    dz = torch.randn(6, 1, 4, 4, generator=g, dtype=DT)
    u, v_hat = net(z, r, t, y, guide=guide, velocity=True)
    rows = torch.tensor([1, 3, 4])
    pu, du, pv = net(z, r, t, y, (rows, dz[rows], torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT)), guide=guide,
                     velocity=True)
    with sdpa_kernel([SDPBackend.MATH]):
        _, ref = torch.func.jvp(lambda zz, tt: net(zz, r, tt, y, guide=guide), (z, t), (dz, torch.ones_like(t)))
    assert torch.equal(pu, u) and torch.equal(pv, v_hat)
    torch.testing.assert_close(du, ref[rows], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(net(z, r, t, y), u), "the guidance conditioning changes u"


def test_the_dit_refuses_what_it_was_not_built_for():
    z, r, t, y = inputs()
    with pytest.raises(ValueError, match="velocity=True needs a DiT with a velocity head"):
        dit()(z, r, t, y, velocity=True)
    with pytest.raises(ValueError, match="guide= needs a DiT with guidance conditioning"):
        dit()(z, r, t, y, guide=torch.ones(6, 3, dtype=DT))
    with pytest.raises(ValueError, match=r"guide must have shape \[6, 3\]"):
        dit(guidance_embed=True)(z, r, t, y, guide=torch.ones(6, 2, dtype=DT))
    with pytest.raises(ValueError, match="aux_head_depth must lie in"):
        dit(aux_head_depth=5)
    with pytest.raises(ValueError, match="do not combine"):
        dit(aux_head_depth=1, decouple_at=1)


def test_preflight_asks_for_the_head_and_the_guidance_conditioning():
    from alphaflow.train.build import preflight

    base = {"model": {"name": "DiT-XT/2"}, "objective": {"name": "imf"}}
    with pytest.raises(ConfigError, match="model.aux_head_depth=K"):
        preflight(from_dict(base))
    with pytest.raises(ConfigError, match="set model.guidance_embed=true"):
        preflight(from_dict({"model": {"name": "DiT-XT/2", "aux_head_depth": 1},
                             "objective": {"name": "imf", "omega_max": 8.0}}))
    with pytest.raises(ConfigError, match=r"model.aux_head_depth must lie in \[0, 4\]"):
        preflight(from_dict({"model": {"name": "DiT-XT/2", "aux_head_depth": 9}, "objective": {"name": "imf"}}))
    preflight(from_dict({"model": {"name": "DiT-XT/2", "aux_head_depth": 1, "guidance_embed": True},
                         "objective": {"name": "imf", "omega_max": 8.0}}))
    with pytest.raises(ValueError, match="takes guidance as a conditioning input"):
        build_objective("imf", guidance={"omega": 2.0})


@pytest.mark.parametrize("options", [{}, {"aux_head_depth": 1, "guidance_embed": True}], ids=["plain", "imf"])
def test_h_only_conditioning_sees_t_minus_r_alone_and_its_tangent_is_the_jvp(options):
    """model.time_cond=h (the official iMF network): c = emb_Δ(h) + emb_y, so u depends on (r, t) through h = t − r
    only; the tangent mode's du/dt along (dz, 0, 1) is torch.func.jvp's in float64, and equals the derivative along
    (dz, −1, 0) (dh = dt − dr = 1 both ways)."""
    net = dit(time_cond="h", **options)
    assert net.t_embedder is None and not any(k.startswith("t_embedder.") for k in net.state_dict())
    z, r, t, y = inputs()
    g = torch.Generator().manual_seed(8)
    shift = (1 - t) * torch.rand(6, generator=g, dtype=DT)  # t + shift ≤ 1
    with torch.no_grad():
        torch.testing.assert_close(net(z, r + shift, t + shift, y), net(z, r, t, y), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(net(z, r, t, y), net(z, 0.5 * r, t, y)), "u must depend on h"
    rows = torch.tensor([0, 2, 5])
    dz = torch.randn(3, 1, 4, 4, generator=g, dtype=DT)
    zeros, ones = torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT)
    u, du = net(z, r, t, y, (rows, dz, zeros, ones))
    assert torch.equal(u, net(z, r, t, y)), "the tangent mode's prediction is the ordinary forward's"
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        _, ref = torch.func.jvp(lambda zz, tt: net(zz, r[rows], tt, y[rows]), (z[rows], t[rows]), (dz, ones))
    torch.testing.assert_close(du, ref, rtol=1e-10, atol=1e-12)
    assert ref.abs().max() > 1e-3, "the tangent is trivially small; the test would not discriminate"
    _, du_r = net(z, r, t, y, (rows, dz, -ones, zeros))
    torch.testing.assert_close(du_r, du, rtol=1e-12, atol=1e-13)
    if options:
        pu, pdu, pv = net(z, r, t, y, (rows, dz, zeros, ones), velocity=True)
        assert torch.equal(pu, u) and torch.equal(pdu, du) and torch.equal(pv, net(z, r, t, y, velocity=True)[1])


def test_time_cond_is_refused_by_name_and_where_it_does_not_apply():
    from alphaflow.train.build import preflight

    with pytest.raises(ValueError, match=r"model.time_cond.* must be one of \['t_and_h', 'h'\], got 't'"):
        dit(time_cond="t")
    with pytest.raises(ValueError, match="time_cond='h' .* and decouple_at .* do not combine"):
        dit(time_cond="h", decouple_at=1)
    with pytest.raises(ConfigError, match=r"model.time_cond must be one of \['t_and_h', 'h'\].*got 'th'"):
        validate(from_dict({"model": {"time_cond": "th"}}))
    with pytest.raises(ConfigError, match="model.time_cond=h is an option of the DiT models, not of "
                                          "model.name='MLP-B'"):
        preflight(from_dict({"model": {"name": "MLP-B", "time_cond": "h"}, "data": {"name": "toy2d"}}))
    with pytest.raises(ConfigError, match="model.time_cond=h and model.decouple_at do not combine"):
        preflight(from_dict({"model": {"name": "DiT-XT/2", "time_cond": "h", "decouple_at": 2}}))
    assert dit().t_embedder is not None and dit().time_cond == "t_and_h"


# ----------------------------------------------------------------------------- the objective

class ExactHead(nn.Module):
    """A DiT whose velocity head is replaced by a given tensor (the sample's ε − x)."""

    aux_head_depth, supports_tangent = 0, True

    def __init__(self, net: nn.Module, v: torch.Tensor) -> None:
        super().__init__()
        self.net, self.v = net, v

    def forward(self, z, r, t, labels=None, tangent=None, *, guide=None, velocity=False):
        out = self.net(z, r, t, labels) if tangent is None else self.net(z, r, t, labels, tangent)
        if not velocity:
            return out
        return (*out, self.v) if tangent is not None else (out, self.v)


def test_imf_with_the_exact_velocity_as_its_head_is_meanflow_in_loss_and_gradient(batch):
    x, y = batch
    imf = build_objective("imf", label_dropout=0.0)
    sample = imf.draw(x, y, generator=torch.Generator().manual_seed(2))
    net = ExactHead(dit(), velocity(x, sample.eps))
    a = imf(net, x, sample=sample)
    b = build_objective("meanflow", ratio_fm=0.5)(net.net, x, sample=sample)
    assert torch.equal(a.target, b.target) and torch.equal(a.pred, b.pred)
    assert torch.equal(a.components["aux"], torch.zeros(8, dtype=DT))
    params = list(net.parameters())
    for ga, gb in zip(torch.autograd.grad(a.loss.mean(), params), torch.autograd.grad(b.loss.mean(), params)):
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)


def test_the_tangent_and_the_guided_target_are_the_heads_velocities(batch):
    """v_g = v + (1 − 1/ω_w)(v̂_c − v̂_u) with ω_w = ω inside [t_min, t_max], the JVP along v̂_c."""
    x, y = batch
    net = dit(aux_head_depth=1, guidance_embed=True)
    imf = build_objective("imf", omega_max=8.0, label_dropout=0.0)
    sample = imf.draw(x, y, generator=torch.Generator().manual_seed(6))
    terms = imf(net, x, sample=sample)
    r, t = sample.r, sample.t
    z, v = interpolate(x, sample.eps, t), velocity(x, sample.eps)
    guide = guidance_inputs(sample.split, r, t, 8.0, True)
    omega_w = torch.where((t >= guide[:, 1]) & (t <= guide[:, 2]), guide[:, 0], torch.ones_like(t))
    assert (omega_w > 1).any() and (omega_w == 1).any(), "the draw has rows in and out of the interval"
    ones, zeros = torch.ones_like(t), torch.zeros_like(t)
    with torch.no_grad():
        v_c = net(z, t, t, y, guide=torch.stack([omega_w, zeros, ones], 1), velocity=True)[1]
        v_u = net(z, t, t, torch.full_like(y, NULL_LABEL), guide=torch.stack([ones, zeros, ones], 1), velocity=True)[1]
        with sdpa_kernel([SDPBackend.MATH]):
            _, dudt = torch.func.jvp(lambda zz, tt: net(zz, r, tt, y, guide=guide), (z, t), (v_c, ones))
    v_g = v + (1 - 1 / omega_w).view(-1, 1, 1, 1) * (v_c - v_u)
    torch.testing.assert_close(terms.pred, net(z, r, t, y, guide=guide), rtol=1e-12, atol=1e-13)
    rows = torch.arange(sample.num_fm, 8)
    torch.testing.assert_close(terms.target, target_from_dudt(v_g, r, t, rows, dudt[rows]), rtol=1e-9, atol=1e-11)
    _, v_hat = net(z, r, t, y, guide=guide, velocity=True)
    torch.testing.assert_close(terms.components["mse_v"], ((v_hat - v_g) ** 2).flatten(1).mean(1), rtol=1e-9,
                               atol=1e-11)


def test_a_dropped_label_regresses_the_unguided_velocity(batch):
    x, y = batch
    net = dit(aux_head_depth=0, guidance_embed=True)
    imf = build_objective("imf", omega_max=8.0, label_dropout=1.0)
    sample = imf.draw(x, y, generator=torch.Generator().manual_seed(7))
    terms = imf(net, x, sample=sample)
    z, v = interpolate(x, sample.eps, sample.t), velocity(x, sample.eps)
    guide = guidance_inputs(sample.split, sample.r, sample.t, 8.0, True)
    pred = net(z, sample.r, sample.t, torch.full_like(y, NULL_LABEL), guide=guide)
    torch.testing.assert_close(terms.pred, pred, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(terms.components["tfm"], ((pred - v) ** 2).flatten(1).mean(1), rtol=1e-10, atol=1e-12)


def test_the_guidance_draw_is_log_uniform_with_the_whole_interval_on_r_equals_t_rows():
    u = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.5, 0.2, 0.6]], dtype=DT)
    t = torch.tensor([0.3, 0.4, 0.5, 0.6], dtype=DT)
    r = torch.tensor([0.1, 0.2, 0.5, 0.1], dtype=DT)
    g = guidance_inputs(u, r, t, 8.0, True)
    torch.testing.assert_close(g[:, 0], torch.tensor([1.0, 8.0, math.sqrt(8.0), math.sqrt(8.0)], dtype=DT))
    torch.testing.assert_close(g[:, 1:], torch.tensor([[0.0, 0.5], [0.5, 1.0], [0.0, 1.0], [0.1, 0.8]], dtype=DT))
    assert torch.equal(guidance_inputs(u, r, t, 8.0, False)[:, 1:], torch.tensor([[0.0, 1.0]] * 4, dtype=DT))


def test_an_imf_network_samples_with_its_u_alone(batch):
    from alphaflow.core.sampling import generate

    x, y = batch
    net = dit(aux_head_depth=1)
    noise = torch.randn_like(x)
    for nfe in (1, 2):
        out = generate(net, noise, y, nfe=nfe)
        assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(generate(net, noise, y, nfe=1), noise - net(noise, torch.zeros(8, dtype=DT),
                                                                            torch.ones(8, dtype=DT), y))


def test_with_guidance_hands_the_scale_and_interval_to_every_call(batch):
    from alphaflow.core.sampling import generate, with_guidance

    x, y = batch
    net = dit(aux_head_depth=0, guidance_embed=True)
    noise = torch.randn_like(x)
    guide = torch.tensor([[4.0, 0.1, 0.9]] * 8, dtype=DT)
    ones, zeros = torch.ones(8, dtype=DT), torch.zeros(8, dtype=DT)
    expected = noise - net(noise, zeros, ones, y, guide=guide)
    torch.testing.assert_close(generate(with_guidance(net, 4.0, 0.1, 0.9), noise, y, nfe=1), expected)
    assert not torch.allclose(generate(net, noise, y, nfe=1), expected)
    with pytest.raises(ValueError, match="omega .* must be >= 1"):
        with_guidance(net, 0.5)
