"""The objectives on the real backbone: the JVP on a DiT, and fused attention outside it."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.core.conventions import interpolate, velocity
from alphaflow.models import build_model
from alphaflow.objectives import AlphaFlow, Guidance, MeanFlow, Sample


def random_dit(dtype=torch.float32):
    torch.manual_seed(0)
    net = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10).to(dtype)
    with torch.no_grad():  # undo the zero init so the network is not the constant 0
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def pair_sample(x, y):
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(x.shape[0], generator=g, dtype=x.dtype), torch.rand(x.shape[0], generator=g, dtype=x.dtype)
    return Sample(t=torch.maximum(a, b), r=torch.minimum(a, b), eps=torch.randn(x.shape, generator=g, dtype=x.dtype),
                  labels=y)


def test_meanflow_target_on_dit_matches_finite_difference():
    net = random_dit(torch.float64)
    x, y = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 2 - 1, torch.arange(6)
    sample = pair_sample(x, y)
    terms = MeanFlow()(net, x, sample=sample)
    z, v = interpolate(x, sample.eps, sample.t), velocity(x, sample.eps)
    h, r, t = 1e-5, sample.r, sample.t
    with torch.no_grad():
        fd = (net(z + h * v, r, t + h, y) - net(z - h * v, r, t - h, y)) / (2 * h)
    torch.testing.assert_close(terms.target, v - (t - r).view(-1, 1, 1, 1) * fd, rtol=1e-6, atol=1e-8)


def test_jvp_uses_math_attention_and_the_rest_stays_fused():
    """With only the fused CPU kernel allowed, the prediction and α-target passes still run (they use it),
    and the MeanFlow JVP still works because it switches to the math backend inside."""
    net = random_dit()
    x, y = torch.rand(6, 1, 8, 8) * 2 - 1, torch.arange(6)
    sample = pair_sample(x, y)
    reference = MeanFlow()(net, x, sample=sample)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        fused = MeanFlow()(net, x, sample=sample)
        fused.loss.mean().backward()
        AlphaFlow(alpha=0.5)(net, x, sample=sample).loss.mean().backward()
        try:  # the fused kernel itself has no forward-mode rule: a JVP outside our helper fails
            torch.func.jvp(lambda z: net(z, sample.r, sample.t, y), (x,), (x,))
            raise AssertionError("expected the fused attention kernel to refuse forward-mode AD")
        except (NotImplementedError, RuntimeError):
            pass
    torch.testing.assert_close(fused.target, reference.target, rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("objective, passes", [
    (MeanFlow(ratio_fm=0.0, guidance=Guidance(omega=1.5, kappa=0.3)), 3),
    (AlphaFlow(alpha=0.5, ratio_fm=0.0, guidance=Guidance(omega=1.5, kappa=0.3)), 4)], ids=["meanflow", "alphaflow"])
def test_an_objective_runs_one_grad_forward_and_its_target_passes_without_grad(objective, passes):
    """Per step: two guidance passes, then (α-Flow) the second forward, all without grad, then the prediction;
    MeanFlow's JVP rides on the prediction's forward (the DiT's tangent mode), so it is one call."""
    torch.manual_seed(0)
    net = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10)
    calls: list[bool] = []
    handle = net.register_forward_hook(lambda module, args, out: calls.append(torch.is_grad_enabled()))
    try:
        x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 7, 9])
        objective(net, x, y, generator=torch.Generator().manual_seed(2)).loss.mean().backward()
    finally:
        handle.remove()
    assert len(calls) == passes and calls.count(True) == 1 and calls[-1], calls
