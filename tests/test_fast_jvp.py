"""The fast MeanFlow JVP: the Linear forward rule and the DiT's tangent mode equal stock forward AD
(docs/jvp.md#the-zero-weight-tangent, docs/jvp.md#the-dit-tangent-mode)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from alphaflow.core.conventions import NULL_LABEL, interpolate, velocity
from alphaflow.core.jvp import prediction_and_dudt
from alphaflow.models import MLP, build_model
from alphaflow.models import tangent as tangent_module
from alphaflow.models.tangent import Linear
from alphaflow.objectives import AlphaFlow, MeanFlow, Sample
from alphaflow.objectives.base import regression_components
from alphaflow.objectives.meanflow import meanflow_target

F64 = torch.float64


def random_dit(name: str = "DiT-N/1", dtype: torch.dtype = F64, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    net = build_model(name, input_size=8, in_channels=1, num_classes=num_classes).to(dtype)
    with torch.no_grad():  # undo the zero init so every layer matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def random_mlp() -> nn.Module:
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=32, depth=3, num_classes=3).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def times(batch: int, seed: int = 1, dtype: torch.dtype = F64, block: bool = False) -> tuple[torch.Tensor, ...]:
    """t, r with r = t on the even rows and r < t on the odd ones (block: r = t on the first half, as drawn)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(batch, generator=g, dtype=dtype) * 0.8 + 0.1
    r = t * torch.rand(batch, generator=g, dtype=dtype)
    fm = slice(0, batch // 2) if block else slice(None, None, 2)
    r[fm] = t[fm]
    return r, t


def grads(net: nn.Module) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    return out


@pytest.fixture
def stock_linear(monkeypatch):
    """Within the test, ``Linear`` behaves as plain ``nn.Linear`` under forward AD too."""
    def use_stock() -> None:
        monkeypatch.setattr(Linear, "forward", nn.Linear.forward)
    return use_stock


def func_jvp(net, z, r, t, labels, dz, dr, dt):
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        return torch.func.jvp(lambda a, b, c: net(a, b, c, labels), (z, r, t), (dz, dr, dt))


# ----------------------------------------------------------------------------- the Linear rule

@pytest.mark.parametrize("which", ["dit", "mlp"])
def test_linear_rule_equals_stock_forward_ad(which, stock_linear, monkeypatch):
    net = random_dit() if which == "dit" else random_mlp()
    B = 5
    shape = (B, 1, 8, 8) if which == "dit" else (B, 2)
    g = torch.Generator().manual_seed(3)
    z, dz = torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)
    r, t = times(B)
    labels = torch.tensor([0, 1, NULL_LABEL, 2, 1])
    dr, dt = torch.randn(B, generator=g, dtype=F64), torch.randn(B, generator=g, dtype=F64)

    calls = []
    rule = tangent_module._LinearJVP.jvp
    monkeypatch.setattr(tangent_module._LinearJVP, "jvp", staticmethod(lambda *a: calls.append(1) or rule(*a)))
    fast = func_jvp(net, z, r, t, labels, dz, dr, dt)
    assert calls, "the custom rule never ran: Linear did not detect the torch.func transform"
    stock_linear()
    stock = func_jvp(net, z, r, t, labels, dz, dr, dt)
    torch.testing.assert_close(fast[0], stock[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(fast[1], stock[1], rtol=1e-10, atol=1e-12)
    assert fast[1].abs().max() > 1e-3, "the tangent is trivially small; the test would not discriminate"


def test_linear_rule_with_parameter_tangents_and_gradients():
    """Tangents on the weight and bias are honoured, and grad/vmap transforms still work through the Function."""
    torch.manual_seed(0)
    layer = Linear(4, 3).double()
    x, dx = torch.randn(2, 5, 4, dtype=F64), torch.randn(2, 5, 4, dtype=F64)
    params = dict(layer.named_parameters())
    tangents = {k: torch.randn_like(v) for k, v in params.items()}

    def f(x_, p_):
        return torch.func.functional_call(layer, p_, (x_,))

    out, tan = torch.func.jvp(f, (x, params), (dx, tangents))
    expected = dx @ params["weight"].T + x @ tangents["weight"].T + tangents["bias"]
    torch.testing.assert_close(out, layer(x), rtol=0, atol=1e-14)
    torch.testing.assert_close(tan, expected, rtol=1e-12, atol=1e-12)
    gx, gp = torch.func.grad(lambda x_, p_: f(x_, p_).square().sum(), argnums=(0, 1))(x, params)
    dy = 2 * (x @ params["weight"].T + params["bias"])  # ∂(Σy²)/∂y
    torch.testing.assert_close(gx, dy @ params["weight"])
    torch.testing.assert_close(gp["weight"], dy.reshape(-1, 3).T @ x.reshape(-1, 4))
    torch.testing.assert_close(gp["bias"], dy.reshape(-1, 3).sum(0))
    torch.testing.assert_close(torch.func.vmap(layer)(x), layer(x))


# ----------------------------------------------------------------------------- the DiT's tangent mode

ROWS = {"empty": [], "one": [3], "subset": [0, 1, 4], "all-indexed": [0, 1, 2, 3, 4, 5], "all": None,
        "block": slice(2, 5)}


# DiT-T/2 (the size with real width, 12 blocks) in the full run only; DiT-N/1 keeps the identity in the fast tier
@pytest.mark.parametrize("name", ["DiT-N/1", pytest.param("DiT-T/2", marks=pytest.mark.slow)])
@pytest.mark.parametrize("rows_key", list(ROWS))
@pytest.mark.parametrize("with_labels", [True, False])
def test_tangent_mode_equals_func_jvp(name, rows_key, with_labels, stock_linear):
    net = random_dit(name)
    B = 6
    g = torch.Generator().manual_seed(4)
    z = torch.randn(B, 1, 8, 8, generator=g, dtype=F64)
    r, t = times(B)  # r = t on rows 0, 2, 4
    labels = torch.tensor([0, 3, NULL_LABEL, 9, 1, 5]) if with_labels else None
    rows = ROWS[rows_key]
    rows = torch.tensor(rows, dtype=torch.long) if isinstance(rows, list) else rows
    idx = torch.arange(B)[slice(None) if rows is None else rows]
    P = idx.shape[0]
    dz = torch.randn(P, 1, 8, 8, generator=g, dtype=F64)
    dr, dt = torch.randn(P, generator=g, dtype=F64), torch.randn(P, generator=g, dtype=F64)

    u, du = net(z, r, t, labels, tangent=(rows, dz, dr, dt))
    u.square().sum().backward()
    grads_tangent = grads(net)
    plain = net(z, r, t, labels)
    plain.square().sum().backward()
    assert torch.equal(u, plain), "the tangent mode's prediction must be the ordinary forward's"
    assert all(torch.equal(a, b) for a, b in zip(grads_tangent, grads(net))), "and so must its gradients"
    assert du.shape == (P, 1, 8, 8) and not du.requires_grad and du.dtype == F64

    if P:
        stock_linear()  # the reference is stock forward AD, not our Linear rule
        lab = None if labels is None else labels[idx]
        ref_u, ref_du = func_jvp(net, z[idx], r[idx], t[idx], lab, dz, dr, dt)
        torch.testing.assert_close(ref_u, plain[idx].detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(du, ref_du, rtol=1e-10, atol=1e-12)
        assert ref_du.abs().max() > 1e-3


class _NoGradCasts(TorchDispatchMode):
    """Records the dtype pairs of every cast of a token tensor ([P, N, ...], 3-d or more) made under no-grad."""

    def __init__(self) -> None:
        super().__init__()
        self.casts: list[tuple[torch.dtype, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and not torch.is_grad_enabled() and args[0].ndim >= 3:
            self.casts.append((args[0].dtype, out.dtype))
        return out


def test_tangent_mode_under_bf16_autocast_keeps_tangents_in_bf16_and_returns_fp32():
    """The tangent travels in the compute dtype (no cast around its GEMMs); du/dt comes back in fp32, the target's
    dtype; its error against float64 is of the order of the bf16 prediction's own."""
    net = random_dit("DiT-N/2", torch.float32)
    B = 4
    z = torch.randn(B, 1, 8, 8)
    r, t = times(B, dtype=torch.float32)
    rows = torch.tensor([1, 3])
    dz = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16), _NoGradCasts() as spy:
        u, du = net(z, r, t, None, tangent=(rows, dz, torch.zeros(2), torch.ones(2)))
        plain = net(z, r, t, None)
    assert du.dtype == torch.float32 and torch.equal(u, plain)
    # inside the rules, only the math attention's fp32 round trip: q, k, v, dq, dk, dv in, dO out, per block
    depth = len(net.blocks)
    assert spy.casts == ([(torch.bfloat16, torch.float32)] * 6 + [(torch.float32, torch.bfloat16)]) * depth
    ref_u, ref = func_jvp(net.double(), z[rows].double(), r[rows].double(), t[rows].double(), None, dz.double(),
                          torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))
    u_error = float((u[rows].double() - ref_u).norm() / ref_u.norm())
    du_error = float((du.double() - ref).norm() / ref.norm())
    assert du_error < 0.05 and du_error < 3 * u_error + 1e-3, (du_error, u_error)


def test_tangent_mode_refuses_malformed_tangents():
    net = random_dit("DiT-N/2", torch.float32)
    z, (r, t) = torch.randn(3, 1, 8, 8), times(3, dtype=torch.float32)
    rows, dz, d1 = torch.tensor([0, 2]), torch.randn(2, 1, 8, 8), torch.ones(2)
    cases = [
        ((rows, dz, d1), "tangent must be a tuple"),
        ((rows.float(), dz, d1, d1), "tangent rows"),
        (([0, 2], dz, d1, d1), "tangent rows"),
        ((slice(0, 3), dz, d1, d1), "tangent dz"),  # a slice of 3 rows with 2 rows of tangents
        ((rows, torch.randn(3, 1, 8, 8), d1, d1), "tangent dz"),
        ((rows, dz, torch.ones(3), d1), "tangent dr"),
        ((rows, dz, d1, d1[:1]), "tangent dt"),
    ]
    for tangent, message in cases:
        with pytest.raises(ValueError, match=message):
            net(z, r, t, None, tangent=tangent)
    with pytest.raises(ValueError, match="tangent_z"):
        prediction_and_dudt(net, z, r, t, None, torch.randn(3, 1, 8, 8), rows)


def test_row_selection_prefers_views():
    from alphaflow.core.jvp import row_selection

    assert row_selection(torch.arange(6), 6) is None
    assert row_selection(torch.tensor([2, 3, 4]), 6) == slice(2, 5)
    rows = torch.tensor([0, 2, 3])
    assert row_selection(rows, 6) is rows
    assert row_selection(rows[:0], 6).shape == (0,)


# ----------------------------------------------------------------------------- the objectives, old path vs new

def reference_meanflow(net, x, sample, weighted):
    """The old path: no-grad torch.func.jvp target on the r < t rows, then an ordinary forward."""
    z, v = interpolate(x, sample.eps, sample.t), velocity(x, sample.eps)
    target = meanflow_target(net, z, sample.r, sample.t, sample.labels, v, sample.r < sample.t)
    pred = net(z, sample.r, sample.t, sample.labels)
    return weighted(regression_components(pred, target, v)["mse"]), target


@pytest.mark.parametrize("model", ["DiT-N/1", pytest.param("DiT-T/2", marks=pytest.mark.slow), "mlp"])
@pytest.mark.parametrize("objective", [MeanFlow(), AlphaFlow(alpha=0.0)], ids=["meanflow", "alpha0"])
@pytest.mark.parametrize("block", [False, True], ids=["scattered-rows", "row-block"])
def test_objective_loss_and_gradients_match_the_old_path(model, objective, block, stock_linear):
    net = random_mlp() if model == "mlp" else random_dit(model)
    B = 8
    shape = (B, 2) if model == "mlp" else (B, 1, 8, 8)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(shape, generator=g, dtype=F64) * 2 - 1
    r, t = times(B, block=block)
    labels = torch.tensor([0, 1, 2, NULL_LABEL, 1, 0, 2, 1])
    sample = Sample(t=t, r=r, eps=torch.randn(shape, generator=g, dtype=F64), labels=labels)

    terms = objective(net, x, sample=sample)
    terms.loss.sum().backward()
    fast = grads(net)
    stock_linear()
    loss, target = reference_meanflow(net, x, sample, objective.weighted)
    loss.sum().backward()
    torch.testing.assert_close(terms.target, target, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(terms.loss, loss, rtol=1e-10, atol=1e-12)
    for a, b in zip(fast, grads(net)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- through a DDP wrapper

def test_prediction_and_dudt_through_ddp(tmp_path):
    """One forward through the wrapper carries the JVP; gradients reach the module as without DDP."""
    net = random_dit("DiT-N/2", torch.float32)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(net)
        B = 6
        z, (r, t), y = torch.randn(B, 1, 8, 8), times(B, dtype=torch.float32), torch.arange(B)
        rows = (r < t).nonzero().squeeze(1)
        dz = torch.randn(rows.shape[0], 1, 8, 8)
        pred, dudt = prediction_and_dudt(ddp, z, r, t, y, dz, rows)
        pred.square().sum().backward()
        through_ddp = grads(net)
        ref_pred, ref_dudt = prediction_and_dudt(net, z, r, t, y, dz, rows)
        ref_pred.square().sum().backward()
        assert torch.equal(pred, ref_pred) and torch.equal(dudt, ref_dudt)
        assert all(torch.equal(a, b) for a, b in zip(through_ddp, grads(net)))
    finally:
        dist.destroy_process_group()
