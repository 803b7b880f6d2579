"""LayerStats: per-layer RMS norms of activations and output gradients, silent on the target passes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.hooks import LayerStats
from alphaflow.jvp import average_velocity_jvp
from alphaflow.models import build_model
from alphaflow.objectives import Guidance, AlphaFlow, MeanFlow


def random_dit() -> nn.Module:
    torch.manual_seed(0)
    net = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10)
    with torch.no_grad():  # undo the zero init so every layer's output and gradient is non-zero
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def inputs(batch: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(batch, 1, 8, 8, generator=g)
    t = torch.rand(batch, generator=g)
    return z, 0.5 * t, t, torch.arange(batch)  # z, r, t, labels


def linear_names(net: nn.Module) -> list[str]:
    return [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]


def hook_count(net: nn.Module) -> int:
    """Every per-module hook dict, summed over modules: 0 on a model nobody instrumented."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")
    return sum(len(getattr(m, k, {})) for m in net.modules() for k in kinds)


def rms(x: torch.Tensor) -> float:
    return (x.double().norm() / math.sqrt(x.numel())).item()


def test_grad_forward_records_every_linear_and_matches_a_hand_computed_layer():
    net, (z, r, t, y) = random_dit(), inputs()
    layer = "blocks.1.mlp.0"
    seen = []  # our own hook, registered first: its output is the same tensor LayerStats sees

    def capture(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:  # None: output unchanged
        out.retain_grad()
        seen.append(out)

    handle = net.get_submodule(layer).register_forward_hook(capture)
    with LayerStats(net) as stats:
        net(z, r, t, y).square().mean().backward()
    handle.remove()
    names = linear_names(net)
    assert len(names) == 2 * 2 + 2 * 5 + 2  # two time MLPs, two blocks (qkv, proj, mlp×2, adaLN), final layer
    assert set(stats.records) == {f"{n}.{s}" for n in names for s in ("act_norm", "grad_norm")}
    assert all(len(v) == 1 and v[0] > 0 for v in stats.records.values())
    (out,) = seen
    summary = stats.summary()
    assert summary[f"{layer}.act_norm"] == pytest.approx(rms(out), rel=1e-6)
    assert summary[f"{layer}.grad_norm"] == pytest.approx(rms(out.grad), rel=1e-6)


def test_hooks_change_no_output_and_no_gradient():
    net, (z, r, t, y) = random_dit(), inputs()

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        out = net(z, r, t, y)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    plain_out, plain_grads = run()
    with LayerStats(net, select=lambda name, m: True, record_no_grad=True) as stats:  # every module, root too
        hooked_out, hooked_grads = run()
    assert "<root>.act_norm" in stats.records and "blocks.0.grad_norm" in stats.records
    assert torch.equal(plain_out, hooked_out)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, hooked_grads))


def test_no_grad_forward_and_jvp_are_silent_unless_asked():
    net, (z, r, t, y) = random_dit(), inputs()
    tangent = torch.randn_like(z)
    with LayerStats(net) as stats:
        with torch.no_grad():
            net(z, r, t, y)
        reference = average_velocity_jvp(net, z, r, t, y, tangent)  # torch.func.jvp, no-grad, math SDPA
    assert stats.records == {}

    with LayerStats(net, record_no_grad=True) as stats:
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
            recorded = average_velocity_jvp(net, z, r, t, y, tangent)
    assert all(torch.equal(a, b) for a, b in zip(reference, recorded))  # (u, du/dt) unchanged
    assert not any(k.endswith("grad_norm") for k in stats.records)
    # inside the JVP the hook read the primal: the same value a plain no-grad forward gives
    with LayerStats(net, record_no_grad=True) as plain, torch.no_grad():
        net(z, r, t, y)
    assert stats.records.keys() == plain.records.keys()
    for key, (value,) in stats.records.items():
        assert value == pytest.approx(plain.records[key][0], rel=1e-5)


@pytest.mark.parametrize("objective, passes", [(MeanFlow(ratio_fm=0.0, guidance=Guidance(omega=1.5, kappa=0.3)), 3),
                                               (AlphaFlow(alpha=0.5, ratio_fm=0.0, guidance=Guidance(omega=1.5, kappa=0.3)), 4)],
                         ids=["meanflow", "alphaflow"])
def test_objective_records_only_the_prediction_forward(objective, passes):
    """Per step: two Guidance passes, then (α-Flow) the second forward, then the prediction; MeanFlow's JVP rides
    on the prediction's forward (the DiT's tangent mode), which the hooks see once."""
    net, (x, _, _, y) = random_dit(), inputs()
    with LayerStats(net) as stats:
        objective(net, x, y, generator=torch.Generator().manual_seed(2)).loss.mean().backward()
    assert {len(v) for v in stats.records.values()} == {1}
    assert len(stats.records) == 2 * len(linear_names(net))
    with LayerStats(net, record_no_grad=True, gradients=False) as everything:
        objective(net, x, y, generator=torch.Generator().manual_seed(2))
    assert {len(v) for v in everything.records.values()} == {passes}  # the target passes did reach the hooks


def test_every_hook_is_removed_on_exit_and_on_an_exception():
    net, (z, r, t, y) = random_dit(), inputs()
    assert hook_count(net) == 0
    with LayerStats(net, select=lambda name, m: True) as stats:
        assert hook_count(net) > 0
        out = net(z, r, t, y)  # its backward runs after the scope: the tensor hooks are gone too
    assert hook_count(net) == 0
    out.sum().backward()
    assert not any(k.endswith("grad_norm") for k in stats.records)

    with pytest.raises(ValueError, match="boom"):
        with LayerStats(net):
            net(z, r, t, y)
            raise ValueError("boom")
    assert hook_count(net) == 0

    def select(name: str, m: nn.Module) -> bool:  # fails half-way through registration
        if name == "blocks.1":
            raise KeyError(name)
        return isinstance(m, nn.Linear)

    with pytest.raises(KeyError):
        with LayerStats(net, select=select):
            pass
    assert hook_count(net) == 0


def test_tuple_outputs_use_the_first_tensor_and_a_lone_type_selects():
    torch.manual_seed(0)
    attn, x = nn.MultiheadAttention(8, 2, batch_first=True), torch.randn(2, 5, 8)
    with LayerStats(attn, select=nn.MultiheadAttention) as stats:
        out, _weights = attn(x, x, x)
        out.sum().backward()
    assert stats.summary()["<root>.act_norm"] == pytest.approx(rms(out), rel=1e-6)
    assert stats.summary()["<root>.grad_norm"] == pytest.approx(rms(torch.ones_like(out)), rel=1e-6)
