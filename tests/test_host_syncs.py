"""Host syncs: the counter itself, and a training step of every objective that makes none (≤ 1 when guiding).

A drawn sample knows that its first ``num_fm`` rows have r = t, so the objectives take the r < t rows as a
slice instead of a mask (``Sample.num_fm``, ``objectives.base.pair_rows``); the DiT checks its labels on the
device. Both paths (slice and mask) must give the same numbers, ties included.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alphaflow.models import build_model
from alphaflow.models.mlp import MLP
from alphaflow.objectives import Guidance, build_objective
from alphaflow.perf.syncs import count_host_syncs

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

# ----------------------------------------------------------------------------- the counter

X = torch.arange(6.0)
MASK = torch.tensor([True, False, True, False, True, True])

COUNTED = {
    "item": lambda: X[0].item(),
    "bool": lambda: bool(X[1]),
    "float": lambda: float(X[1]),
    "int": lambda: int(X[1]),
    "if-any": lambda: bool(MASK.any()),
    "nonzero": lambda: MASK.nonzero(),
    "equal": lambda: torch.equal(X, X),
    "allclose": lambda: torch.allclose(X, X),
    "masked_select": lambda: X.masked_select(MASK),
    "unique": lambda: torch.unique(X),
    "unique_consecutive": lambda: torch.unique_consecutive(X),
    "mask-gather": lambda: X[MASK],
    "mask-put": lambda: X.clone().__setitem__(MASK, 1.0),
    "index_put-mask": lambda: X.clone().index_put_((MASK,), torch.tensor(1.0)),
    "repeat_interleave": lambda: X.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1])),
    "tolist": lambda: X.tolist(),
    "numpy": lambda: X.numpy(),
}
NOT_COUNTED = {
    "arithmetic": lambda: (X + 1) * X,
    "reduction": lambda: X.sum(),
    "where": lambda: torch.where(MASK, X, -X),
    "index-long": lambda: X[torch.tensor([0, 2])],
    "index_select": lambda: X.index_select(0, torch.tensor([1, 3])),
    "index_copy": lambda: X.index_copy(0, torch.tensor([1]), torch.tensor([9.0])),
    "slice-put": lambda: X.clone().__setitem__(slice(2, 4), 0.0),
    "repeat_interleave-output_size": lambda: X.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1]), output_size=7),
    "repeat_interleave-int": lambda: X.repeat_interleave(2),
    "assert_async": lambda: torch._assert_async(MASK.any(), "checked on the device"),
}


@pytest.mark.parametrize("case", list(COUNTED))
def test_each_sync_op_counts_once(case):
    with count_host_syncs() as syncs:
        COUNTED[case]()
    assert syncs.count == 1, syncs.events


@pytest.mark.parametrize("case", list(NOT_COUNTED))
def test_ops_that_do_not_sync_are_not_counted(case):
    with count_host_syncs() as syncs:
        NOT_COUNTED[case]()
    assert syncs.count == 0, syncs.events


def test_counter_names_ops_nests_and_restores_the_patches():
    with count_host_syncs() as outer:
        MASK.nonzero()
        with count_host_syncs() as inner:
            X.tolist()
    assert outer.events == ["aten.nonzero.default", "Tensor.tolist"]
    assert inner.events == ["Tensor.tolist"]
    assert "tolist" not in torch.Tensor.__dict__ and "numpy" not in torch.Tensor.__dict__
    assert X.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert outer.count == 2  # nothing after the block


# ----------------------------------------------------------------------------- a training step

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
GUIDE = Guidance(omega=1.5, kappa=0.3, label_dropout=0.25)  # both guidance passes


def make(key: str, guided: bool):
    name, kwargs = OBJECTIVES[key]
    return build_objective(name, guidance=GUIDE, **kwargs) if guided else build_objective(name, **kwargs)


def dit():
    torch.manual_seed(0)
    net = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def batch(shape=(8, 1, 8, 8)):
    g = torch.Generator().manual_seed(1)
    return torch.rand(shape, generator=g) * 2 - 1, torch.randint(0, 10, (shape[0],), generator=g)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("guided", [False, True], ids=["plain", "guided"])
@pytest.mark.parametrize("key", list(OBJECTIVES))
def test_a_training_step_makes_no_host_sync(key, guided, bf16):
    net, (x, y), objective = dit(), batch(), make(key, guided)
    with count_host_syncs() as syncs:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            terms = objective(net, x, y, step=0, generator=torch.Generator().manual_seed(2))
        terms.loss.float().mean().backward()
    # Guidance: one nonzero finds the rows inside the window (they depend on the values of t).
    assert syncs.count <= (1 if guided else 0), syncs.events


@pytest.mark.parametrize("key", ["meanflow", "alpha0", "shortcut", "alpha0.5"])
def test_no_host_sync_on_a_network_without_tangent_mode(key):
    """The MLP takes MeanFlow's no-grad torch.func.jvp path."""
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=32, depth=2, num_classes=10)
    x, y = batch((8, 2))
    with count_host_syncs() as syncs:
        make(key, False)(net, x, y).loss.mean().backward()
    assert syncs.count == 0, syncs.events


def test_dit_label_check_makes_no_sync_and_still_refuses_bad_labels():
    net, (x, y) = dit(), batch()
    r = t = torch.full((8,), 0.5)
    with count_host_syncs() as syncs:
        net(x, r, t, y)
    assert syncs.count == 0, syncs.events
    for bad in (10, -2):
        labels = y.clone()
        labels[3] = bad
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 10\) or be NULL_LABEL \(-1\), got e.g. {bad}"):
            net(x, r, t, labels)


# ----------------------------------------------------------------------------- slice and mask agree

def assert_same_terms(a, b, exact: bool = True):
    same = torch.equal if exact else (lambda u, v: torch.allclose(u, v, rtol=1e-12, atol=1e-12))
    for field in ("loss", "pred", "target"):
        assert same(getattr(a, field), getattr(b, field)), field
    assert a.components.keys() == b.components.keys()
    for name in a.components:
        assert same(a.components[name], b.components[name]), name


@pytest.mark.parametrize("tie", [False, True], ids=["drawn", "with-a-tie"])
@pytest.mark.parametrize("key", [k for k in OBJECTIVES if k != "fm"])  # fm: every row r = t
def test_known_structure_gives_the_mask_path_numbers(key, tie):
    """Sample.num_fm (slice, no sync) vs num_fm=None (the r < t mask): the same terms, bit for bit on a drawn
    sample. A min–max row tied at r = t is a flow-matching row (target ṽ) on both paths; the target passes then
    see one row more on the slice path, so the other rows may differ in the last bits."""
    net, (x, y), objective = dit().double(), batch(), make(key, True)
    x = x.double()
    sample = objective.draw(x, y, generator=torch.Generator().manual_seed(4))
    assert sample.num_fm is not None and sample.num_fm < x.shape[0] - 1
    if tie:
        sample.r[-1] = sample.t[-1]
    slice_terms = objective(net, x, sample=sample)
    mask_terms = objective(net, x, sample=dataclasses.replace(sample, num_fm=None))
    assert_same_terms(slice_terms, mask_terms, exact=not tie)
    if tie:
        v_tilde = objective.guided(net, x, sample)[1][-1:]  # ṽ of the tied row
        assert torch.equal(slice_terms.target[-1:], v_tilde)
        assert torch.equal(mask_terms.target[-1:], v_tilde)


def test_sample_refuses_a_num_fm_that_does_not_fit():
    net, (x, y), objective = dit(), batch(), make("meanflow", False)
    sample = objective.draw(x, y, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="num_fm"):
        objective(net, x, sample=dataclasses.replace(sample, num_fm=9))
    with pytest.raises(ValueError, match="num_fm"):
        objective(net, x, sample=dataclasses.replace(sample, num_fm=sample.num_fm + 1))
