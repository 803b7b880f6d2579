"""The conflict interventions in the trainer (alphaflow/train/split_backward.py): the combined gradient is the rule's,
`none` is the plain step, metrics land in every row, resume stays exact, DDP ranks stay identical."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from alphaflow.config import load_config
from alphaflow.core.conflict import coefficients
from alphaflow.train.probes import parameter_groups
from alphaflow.objectives import build_objective
from alphaflow.run.folder import RunFolder
from alphaflow.config.schema import ConflictConfig
from alphaflow.train import distributed as D
from alphaflow.train.split_backward import ConflictCombiner, weighted_parts
from alphaflow.train.loop import train
from test_trainer import TINY, _ddp_worker, _free_port, assert_same_state, deterministic

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

CONFLICT_KEYS = {"conflict_cos", "conflict_norm_tfm", "conflict_norm_tcc", "conflict_ratio", "conflict_changed",
                 "conflict_change"}


def tiny(*extra: str):
    return load_config(None, [*TINY, "objective.name=meanflow", *extra])


@pytest.mark.fast
@pytest.mark.parametrize("per_group", [False, True])
def test_the_combiner_sets_each_gradient_to_the_rules_combination(tiny_net, batch, per_group):
    x, y = batch
    objective = build_objective("meanflow")
    params = list(tiny_net.parameters())
    sample = objective.draw(x, y, generator=torch.Generator().manual_seed(0))
    terms = objective(tiny_net, x, sample=sample)
    part_tfm, part_tcc = weighted_parts(terms)
    g1 = torch.autograd.grad(part_tfm, params, retain_graph=True)
    g2 = torch.autograd.grad(part_tcc, params)
    names = [n for n, _ in tiny_net.named_parameters()]
    groups = parameter_groups(tiny_net) if per_group else {"all": names}
    expected = {}
    for members in groups.values():
        idx = [names.index(m) for m in members]
        gram = torch.tensor([[sum(float(g1[i].flatten() @ g1[i].flatten()) for i in idx),
                              sum(float(g1[i].flatten() @ g2[i].flatten()) for i in idx)],
                             [0.0, sum(float(g2[i].flatten() @ g2[i].flatten()) for i in idx)]], dtype=torch.float64)
        gram[1, 0] = gram[0, 1]
        a, b = coefficients(gram[None], "pcgrad")[0]
        expected.update({i: a * g1[i] + b * g2[i] for i in idx})
    combiner = ConflictCombiner(ConflictConfig(mode="pcgrad", per_group=per_group), tiny_net, params, D.DistInfo())
    stats = combiner.backward(objective(tiny_net, x, sample=sample), step=0, state={})
    assert set(stats) == CONFLICT_KEYS and -1 <= float(stats["conflict_cos"]) <= 1
    for i, p in enumerate(params):
        assert torch.allclose(p.grad, expected[i], rtol=1e-12, atol=1e-15), names[i]


def test_none_is_the_plain_training_step(tmp_path):
    plain = train(tiny(), tmp_path / "plain", log=lambda _: None)
    none = train(tiny("conflict.mode=none"), tmp_path / "none", log=lambda _: None)
    assert_same_state(plain.model.state_dict(), none.model.state_dict())
    assert deterministic(RunFolder(tmp_path / "plain").read_metrics()) == deterministic(
        RunFolder(tmp_path / "none").read_metrics())


@pytest.mark.parametrize("mode", ["pcgrad", "project_tcc", "balance", "cagrad"])
def test_every_mode_trains_and_logs_its_conflict_metrics(tmp_path, mode):
    result = train(tiny(f"conflict.mode={mode}"), tmp_path / mode, log=lambda _: None)
    rows = RunFolder(tmp_path / mode).read_metrics()
    assert result.finished and [r["step"] for r in rows] == [2, 4, 6]
    for row in rows:
        assert CONFLICT_KEYS <= set(row), row
        assert -1 <= row["conflict_cos"] <= 1 and 0 <= row["conflict_ratio"] <= 1 + 1e-9
        assert 0 <= row["conflict_changed"] <= 1 and row["conflict_change"] >= 0
    if mode in ("balance", "cagrad"):  # these act on every step: the weights leave the plain run's
        assert all(r["conflict_changed"] == 1 and r["conflict_change"] > 0 for r in rows)
        plain = train(tiny(), tmp_path / "plain", log=lambda _: None).model.state_dict()
        assert any(not torch.allclose(plain[k], result.model.state_dict()[k]) for k in plain)


def test_reused_coefficients_resume_exactly(tmp_path):
    cfg = tiny("conflict.mode=pcgrad", "conflict.every=4", "train.steps=10", "train.ckpt_every=5")
    straight = train(cfg, tmp_path / "straight", log=lambda _: None)
    train(cfg, tmp_path / "resumed", stop_at=5, log=lambda _: None)  # stops mid-way between two exact steps
    resumed = train(cfg, tmp_path / "resumed", log=lambda _: None)
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    a, b = (deterministic(RunFolder(tmp_path / n).read_metrics()) for n in ("straight", "resumed"))
    assert a == b
    # exact steps are 0, 4, 8 (0-based); a tick of two steps reports the conflict only if it holds one
    assert [row["step"] for row in a if "conflict_cos" in row] == [2, 6, 10]


def test_two_process_ddp_with_pcgrad_keeps_ranks_identical(tmp_path):
    overrides = [*TINY, "objective.name=meanflow", "conflict.mode=pcgrad", "train.threads=1"]
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), overrides), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert_same_state(rank0, rank1)
    assert all(CONFLICT_KEYS <= set(r) for r in RunFolder(tmp_path).read_metrics())


@pytest.mark.parametrize("mode", ["none", "pcgrad"])
def test_two_process_ddp_with_modular_meanflows_differentiated_jvp_keeps_ranks_identical(tmp_path, mode):
    """The prediction goes through DDP and the differentiated JVP through the unwrapped module, in one backward:
    DDP still averages every gradient (the ranks stay identical), with and without a rule's third part."""
    overrides = [*TINY, "objective.name=modular_meanflow", "objective.lam=1.0", f"conflict.mode={mode}",
                 "train.threads=1"]
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), overrides), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert_same_state(rank0, rank1)
    assert all("loss_d" in r for r in RunFolder(tmp_path).read_metrics())
