"""Every objective under bf16 autocast (the default precision on CUDA), rehearsed on the CPU.

Two failure classes of the GPU path, each pinned here:

1. dtype mismatches: under autocast the network returns bf16 while ṽ and the targets are fp32
   (Shortcut wrote the bf16 two-jump target into the fp32 target: "Index put requires the source and
   destination dtypes match"). A bf16 step must run and give every parameter a finite, non-zero gradient.
2. autocast's weight cache: a no-grad target pass inside the training autocast must not read or write
   the cache (``alphaflow.core.amp.target_pass``; pytorch issues 112583 / 65766 / 158232). A spy network records
   ``torch.is_autocast_cache_enabled()`` in every pass.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alphaflow.core.amp import target_pass
from alphaflow.models import build_model
from alphaflow.models.mlp import MLP
from alphaflow.objectives import Guidance, build_objective

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

OBJECTIVES = {
    "fm": ("fm", {}),
    "tfm": ("tfm", {}),
    "meanflow": ("meanflow", {}),
    "shortcut": ("shortcut", {}),
    "alpha1": ("alphaflow", {"alpha": 1.0}),
    "alpha0.5": ("alphaflow", {"alpha": 0.5}),
    "alpha0": ("alphaflow", {"alpha": 0.0}),
    "alpha0.5-model-shift": ("alphaflow", {"alpha": 0.5, "shift": "model"}),
}
# kappa != 0 and 1 − omega − kappa != 0: both guidance passes run; labels dropped inside the window.
GUIDANCE = {"plain": None, "guided": Guidance(omega=1.5, kappa=0.3, label_dropout=0.25)}


def random_dit() -> nn.Module:
    """DiT-N/2 with every parameter moved off its (partly zero) init, so no gradient is zero by adaLN-Zero."""
    torch.manual_seed(0)
    net = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def random_mlp() -> nn.Module:
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=32, depth=2, num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def data(net: nn.Module, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (batch, 2) if isinstance(net, MLP) else (batch, 1, 8, 8)
    return torch.rand(shape, generator=g) * 2 - 1, torch.randint(0, 10, (batch,), generator=g)


def make(key: str, guidance: str):
    name, kwargs = OBJECTIVES[key]
    chosen = GUIDANCE[guidance]
    return build_objective(name, **kwargs) if chosen is None else build_objective(name, guidance=chosen, **kwargs)


def bf16_step(net: nn.Module, objective, step: int = 3):
    x, y = data(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = objective(net, x, y, step=step, generator=torch.Generator().manual_seed(7))
    loss = terms.loss.float().mean()
    loss.backward()
    return terms, loss


@pytest.mark.parametrize("guidance", list(GUIDANCE))
@pytest.mark.parametrize("key", list(OBJECTIVES))
def test_bf16_step_gives_every_parameter_a_gradient(key, guidance):
    net = random_dit()
    terms, loss = bf16_step(net, make(key, guidance))
    assert torch.isfinite(loss), loss
    assert terms.target.dtype == torch.float32  # targets stay in the activation dtype, not bf16
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("key", ["meanflow", "alpha0", "shortcut", "alpha0.5"])
def test_bf16_step_on_a_network_without_tangent_mode(key):
    """The MLP takes MeanFlow's no-grad torch.func.jvp path under autocast."""
    net = random_mlp()
    _, loss = bf16_step(net, make(key, "guided"))
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in net.parameters())


# ----------------------------------------------------------------------------- autocast's weight cache

class Spy(nn.Module):
    """Records (grad enabled, autocast cache enabled) at each pass; ``tangent`` sets ``supports_tangent``."""

    def __init__(self, net: nn.Module, tangent: bool) -> None:
        super().__init__()
        self.net, self.supports_tangent, self.passes = net, tangent, []

    def forward(self, z, r, t, labels=None, **kwargs):
        self.passes.append((torch.is_grad_enabled(), torch.is_autocast_cache_enabled()))
        return self.net(z, r, t, labels, **kwargs)


# (objective, guidance, tangent mode): every case has at least one no-grad pass.
CACHE_CASES = [
    *[(key, "guided", True) for key in OBJECTIVES],
    ("shortcut", "plain", True), ("alpha0.5", "plain", True), ("alpha0.5-model-shift", "plain", True),
    ("meanflow", "plain", False), ("alpha0", "plain", False),  # the no-grad torch.func.jvp
]


@pytest.mark.parametrize("key,guidance,tangent", CACHE_CASES)
def test_no_grad_passes_bypass_the_autocast_cache(key, guidance, tangent):
    spy = Spy(random_dit(), tangent)
    bf16_step(spy, make(key, guidance))
    no_grad = [cache for grad, cache in spy.passes if not grad]
    assert no_grad, f"expected a no-grad target pass, saw {spy.passes}"
    assert not any(no_grad), f"a no-grad pass ran with autocast's weight cache on: {spy.passes}"
    assert any(grad for grad, _ in spy.passes), "the prediction must run with grad"
    assert all(p.grad is not None for p in spy.parameters())


def test_target_pass_context():
    assert torch.is_autocast_cache_enabled()
    with target_pass():  # outside autocast: only no_grad
        assert not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with target_pass():
            assert not torch.is_grad_enabled()
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            assert not torch.is_autocast_cache_enabled()
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
        assert torch.is_grad_enabled() and torch.is_autocast_cache_enabled()
    assert torch.is_autocast_cache_enabled()


def test_no_grad_pass_before_the_prediction_keeps_weight_gradients():
    """The scenario of the cache bug, by hand: a target pass, then a grad-mode pass, in one autocast region."""
    lin = nn.Linear(4, 4)
    x = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with target_pass():
            lin(x)
        out = lin(x)
    out.float().sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
