"""DiT backbone (docs/conventions.md#the-backbone): zero init, conditioning, registry sizes, input checks, JVP."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.core.conventions import NULL_LABEL
from alphaflow.models import MODELS, DiT, build_model, parameter_count
from alphaflow.models.dit import count_parameters


def perturb_zero_init(model: DiT, seed: int = 0) -> DiT:
    """Re-initialise the zero-init layers (adaLN outputs, final Linear) randomly so u depends on inputs."""
    gen = torch.Generator().manual_seed(seed)
    layers = [b.adaLN_modulation[-1] for b in model.blocks]
    layers += [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    with torch.no_grad():
        for layer in layers:
            for p in (layer.weight, layer.bias):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def inputs(model: DiT, batch: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, model.in_channels, *model.input_size, generator=gen, dtype=dtype)
    t = torch.rand(batch, generator=gen, dtype=dtype) * 0.5 + 0.5
    r = t * torch.rand(batch, generator=gen, dtype=dtype)
    labels = torch.randint(0, max(model.num_classes, 1), (batch,), generator=gen)
    if model.num_classes == 0:
        labels = torch.full((batch,), NULL_LABEL)
    return z, r, t, labels


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("DiT-N/2", dict(input_size=32, in_channels=4, num_classes=1000)),  # latents
        ("DiT-N/2", dict(input_size=32, in_channels=3, num_classes=10)),  # pixels
        ("DiT-N/1", dict(input_size=8, in_channels=1, num_classes=10)),  # digits
        ("DiT-N/2", dict(input_size=8, in_channels=1, num_classes=0)),  # unconditional
        ("DiT-N/2", dict(input_size=(8, 16), in_channels=2, num_classes=5)),  # non-square
    ],
)
def test_zero_init_outputs_exact_zeros(name, kwargs):
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    z, r, t, labels = inputs(model)
    u = model(z, r, t, labels)
    assert u.shape == z.shape, f"output shape {tuple(u.shape)} != input shape {tuple(z.shape)}"
    assert torch.equal(u, torch.zeros_like(z)), f"{name} {kwargs}: zero-init output has max |u| = {u.abs().max()}"


@pytest.mark.parametrize("input_size", [8, (8, 16)])
def test_output_depends_on_every_input(input_size):
    torch.manual_seed(0)
    model = perturb_zero_init(build_model("DiT-N/2", input_size=input_size, in_channels=2, num_classes=10))
    z, r, t, labels = inputs(model, batch=4)
    u = model(z, r, t, labels)
    assert u.shape == z.shape, f"output shape {tuple(u.shape)} != input shape {tuple(z.shape)}"
    changed = {
        "z": model(z + 0.1 * torch.randn_like(z), r, t, labels),
        "r": model(z, r * 0.5, t, labels),
        "t": model(z, r, t * 0.9, labels),
        "labels": model(z, r, t, (labels + 1) % 10),
    }
    for name, u2 in changed.items():
        diff = (u2 - u).abs().amax(dim=(1, 2, 3))
        assert (diff > 1e-4).all(), f"output does not depend on {name} in every row: max |Δu| per row = {diff}"
    # Each row only sees its own inputs: changing row 0's label leaves the other rows untouched.
    other = labels.clone()
    other[0] = (other[0] + 1) % 10
    assert torch.equal(model(z, r, t, other)[1:], u[1:]), "rows are not independent"


def test_null_label_equals_none_and_differs_from_classes():
    torch.manual_seed(0)
    model = perturb_zero_init(build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10))
    z, r, t, _ = inputs(model)
    u_none = model(z, r, t, None)
    u_null = model(z, r, t, torch.full((3,), NULL_LABEL))
    assert torch.equal(u_none, u_null), "labels=None and NULL_LABEL must both select the null row"
    u_cls = model(z, r, t, torch.zeros(3, dtype=torch.long))
    assert not torch.allclose(u_none, u_cls), "the null row must differ from class 0"
    # Mixed null / class rows: each row agrees with its all-null or all-class counterpart.
    u_mix = model(z, r, t, torch.tensor([NULL_LABEL, 0, NULL_LABEL]))
    torch.testing.assert_close(u_mix[[0, 2]], u_none[[0, 2]])
    torch.testing.assert_close(u_mix[1], u_cls[1])


def test_unconditional_model_has_one_null_row():
    model = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=0)
    assert model.y_embedder.weight.shape[0] == 1, "num_classes=0 must keep exactly the null row"
    perturb_zero_init(model)
    z, r, t, _ = inputs(model)
    torch.testing.assert_close(model(z, r, t, None), model(z, r, t, torch.full((3,), NULL_LABEL)))


def test_positional_embedding_is_fixed_buffer():
    model = build_model("DiT-N/2", input_size=(8, 16), in_channels=1, num_classes=0)
    names = {n for n, _ in model.named_parameters()}
    assert "pos_embed" not in names and model.pos_embed.shape == (1, 4 * 8, 64)
    assert "pos_embed" not in model.state_dict(), "pos_embed is recomputed, not checkpointed"


# DiT paper (Peebles & Xie, Table 1) at 4×32×32 latents, 1000 classes. Ours differs by one extra
# timestep embedder (+256·D + D² + 2D) and 4 instead of 8 output channels; both are < 1 %.
PAPER_PARAMS = {"DiT-S/2": 33.0e6, "DiT-B/2": 130e6, "DiT-L/2": 458e6, "DiT-XL/2": 675e6}


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_registry_parameter_counts_match_paper(name):
    n = parameter_count(name, input_size=32, in_channels=4, num_classes=1000)
    ref = PAPER_PARAMS[name]
    assert abs(n - ref) / ref < 0.01, f"{name}: {n / 1e6:.2f}M parameters vs {ref / 1e6:.1f}M in the DiT paper"


def test_parameter_count_matches_real_model():
    kwargs = dict(input_size=8, in_channels=1, num_classes=10)
    assert parameter_count("DiT-N/1", **kwargs) == count_parameters(build_model("DiT-N/1", **kwargs))


def test_registry_names():
    for size in ("S", "B", "M", "L", "XL", "T", "XT", "N"):
        for p in (1, 2, 4, 8):
            assert f"DiT-{size}/{p}" in MODELS


def test_bad_inputs_raise_value_error():
    model = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10)
    z, r, t, labels = inputs(model)
    with pytest.raises(ValueError, match=r"z must have shape \[B, 1, 8, 8\]"):
        model(torch.randn(3, 1, 8, 16), r, t, labels)
    with pytest.raises(ValueError, match="z must"):
        model(torch.randn(3, 2, 8, 8), r, t, labels)
    with pytest.raises(ValueError, match="labels"):
        model(z, r, t, torch.tensor([0, 10, 1]))
    with pytest.raises(ValueError, match="labels"):
        model(z, r, t, torch.tensor([0, -2, 1]))
    with pytest.raises(ValueError, match="^t must"):
        model(z, r, t[:2], labels)
    with pytest.raises(ValueError, match="^r must"):
        model(z, r[:, None], t, labels)
    with pytest.raises(ValueError, match="DiT-XL/2"):
        build_model("DiT-XL2")
    with pytest.raises(ValueError, match="divisible by patch_size"):
        build_model("DiT-N/4", input_size=10)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiT(hidden_size=64, num_heads=3, depth=1)


def test_jvp_matches_finite_difference_float64():
    """d/dε u(z + ε v, r, t + ε) at ε = 0 (the MeanFlow total derivative) vs a central difference."""
    torch.manual_seed(0)
    model = perturb_zero_init(build_model("DiT-N/1", input_size=8, in_channels=1, num_classes=10)).double()
    z, r, t, labels = inputs(model, batch=2, dtype=torch.float64)
    v = torch.randn_like(z)

    def u(z_, r_, t_):
        return model(z_, r_, t_, labels)

    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        primal, tangent = torch.func.jvp(u, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
        h = 1e-5
        fd = (u(z + h * v, r, t + h) - u(z - h * v, r, t - h)) / (2 * h)
        torch.testing.assert_close(primal, u(z, r, t), rtol=1e-12, atol=1e-12)
    rel = (tangent - fd).norm() / fd.norm()
    assert fd.norm() > 1e-3, "tangent is trivially small; the test would not discriminate"
    assert rel < 1e-6, f"JVP vs central difference: relative error {rel:.3g}"
