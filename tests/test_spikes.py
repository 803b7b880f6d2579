"""Spikes: the metrics rows' maxima and du/dt size, ``train.spike_guard``, and a resume held to its checkpoint's config.

The unit tests (the guard's rule, the step on a float64 toy, the tick's maxima, the checkpoint forms) are fast; the
ones that train a tiny DiT on the digits are in the full tier.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import alphaflow.train.loop as trainer_module
import alphaflow.train.ticks as ticks
import alphaflow.train.spikes as spikes
import alphaflow.train.step as step_module
from alphaflow.cli.main import main
from alphaflow.config import ConfigError, load_config, to_dict
from alphaflow.config.loading import without_later_defaults
from alphaflow.core.conventions import interpolate
from alphaflow.run.errors import UsageError
from alphaflow.core.jvp import average_velocity_jvp, dudt_rms
from alphaflow.objectives import build_objective
from alphaflow.perf.syncs import count_host_syncs
from alphaflow.run.folder import RunFolder
from alphaflow.train.distributed import DistInfo
from alphaflow.train.optim import EMA, build_optimizer
from alphaflow.train.resume import config_changes
from alphaflow.train.loop import train
from alphaflow.train.step import LoopState, StepOutput, StepParts, training_step

TINY = ["model.name=DiT-N/2", "train.steps=12", "train.batch_size=16", "train.log_every=4", "train.ckpt_every=100",
        "train.sample_every=0", "sample.num=4", "sample.nfe=[1]", "ema.halflife_steps=2", "data.stats_samples=64",
        "objective.name=meanflow", "train.device=cpu", "train.threads=1"]
SPIKE_AT = 9  # the 0-based step whose gradient is blown up (after a window of 4 finite norms)


def tiny(*extra: str):
    return load_config(None, [*TINY, *extra])


# ----------------------------------------------------------------------------- the guard's rule

def test_the_flag_waits_for_a_full_window_then_compares_with_k_times_the_median(monkeypatch):
    monkeypatch.setattr(spikes, "WINDOW", 4)
    window = torch.tensor([1.0, 2.0, 3.0, 10.0])  # the lower median is 2
    flag = lambda norm, w=window, k=3.0: float(spikes.spike_flag(torch.tensor(norm), w, k))  # noqa: E731
    assert flag(6.0) == 0.0 and flag(6.001) == 1.0, "skip exactly when not ‖g‖ <= k·median"
    assert flag(float("nan")) == 1.0 and flag(float("inf")) == 1.0
    assert flag(1e9, window[:3]) == 0.0, "not engaged before the window is full"
    assert flag(1e9, k=0.0) == 0.0 and flag(1e9, None) == 0.0
    assert flag(6.001, [1.0, 2.0, 3.0, 10.0]) == 1.0, "a checkpoint's list decides as the tensor does"
    grown = spikes.remember_norm([1.0, 2.0, 3.0, 10.0], torch.tensor(7.0))
    assert grown.tolist() == [2.0, 3.0, 10.0, 7.0], "oldest first, the oldest dropped"


def test_spike_guard_is_validated_and_leaves_hashes_alone():
    for bad in ("0.5", "1", "-2"):
        with pytest.raises(ConfigError, match=r"train.spike_guard must be 0 \(off\) or a number > 1"):
            load_config(None, [f"train.spike_guard={bad}"])
    with pytest.raises(ConfigError, match="train.spike_guard"):
        load_config(None, ["train.spike_guard=.inf"])
    assert load_config(None, ["train.spike_guard=4"]).train.spike_guard == 4.0
    assert "spike_guard" not in without_later_defaults(to_dict(load_config(None, [])))["train"]


# ----------------------------------------------------------------------------- the step (float64 toy)

def toy_step(net, batch, window: torch.Tensor | list[float], *,
             micro_batch: int = 0) -> tuple[StepOutput, LoopState, StepParts]:
    """One MeanFlow step of the float64 toy with ``train.spike_guard=3`` and the guard's window ``window``."""
    opt = build_optimizer(net.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    parts = StepParts(net, net, build_objective("meanflow"), opt, EMA(net, 2.0, None), DistInfo(), False, None,
                      micro_batch=micro_batch, spike_guard=3.0)
    state = LoopState(step=5, grad_norms=window)
    x, y = batch
    return training_step(parts, state, x, y, lr=1e-2, generator=torch.Generator().manual_seed(2)), state, parts


def test_a_spike_changes_neither_the_weights_nor_adam_nor_the_ema(tiny_net, batch, monkeypatch):
    monkeypatch.setattr(spikes, "WINDOW", 4)
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    out, state, parts = toy_step(tiny_net, batch, [1e-9] * 4)  # any real norm is a spike against this window
    assert out.finite and out.skipped and float(out.grad_norm) > 3e-9, "the norm that tripped the guard is logged"
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in parts.ema.model.state_dict().items())
    assert parts.opt.state_dict()["state"] == {}, "Adam took no step: no moments, no step count"
    assert state.grad_norms.tolist() == [1e-9] * 3 + [float(out.grad_norm)], "a spike enters the window"


def test_a_step_under_the_threshold_updates(tiny_net, batch, monkeypatch):
    monkeypatch.setattr(spikes, "WINDOW", 4)
    before = [p.detach().clone() for p in tiny_net.parameters()]
    out, state, parts = toy_step(tiny_net, batch, [1e9] * 4)
    assert out.finite and not out.skipped and len(parts.opt.state_dict()["state"]) > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, tiny_net.parameters()))


def test_the_guarded_step_and_its_tick_make_only_the_steps_one_host_sync(tiny_net, batch, monkeypatch):
    """The decision rides in the flag all-reduce's one transfer; the maxima and du/dt's size stay on the device."""
    monkeypatch.setattr(spikes, "WINDOW", 4)
    with count_host_syncs() as syncs:
        out, state, _ = toy_step(tiny_net, batch, torch.tensor([1e-9] * 4, dtype=torch.float64))
        ticks.accumulate(state.tick, out)
    assert out.skipped and syncs.events == ["Tensor.tolist"], syncs.events


def test_dudt_rms_is_the_size_of_the_tangent_on_the_r_below_t_rows(tiny_net, batch):
    x, y = batch
    objective = build_objective("meanflow")
    sample = objective.draw(x, y, generator=torch.Generator().manual_seed(3))
    terms = objective(tiny_net, x, sample=sample)
    rows = slice(sample.num_fm, x.shape[0])
    z = interpolate(x, sample.eps, sample.t)
    _, dudt = average_velocity_jvp(tiny_net, z[rows], sample.r[rows], sample.t[rows], sample.labels[rows],
                                   (sample.eps - x)[rows])
    logged = terms.logs["dudt_rms"]
    assert logged.shape == (8,) and logged[: sample.num_fm].isnan().all()
    torch.testing.assert_close(logged[rows].double(), dudt.flatten(1).square().mean(1).sqrt(), rtol=1e-6, atol=0)
    index = dudt_rms(dudt, torch.arange(sample.num_fm, 8), 8)
    torch.testing.assert_close(index, logged, rtol=0, atol=0, equal_nan=True)  # row indices and a slice alike


def test_alphaflow_at_alpha_zero_logs_the_same_dudt_as_meanflow(tiny_net, batch):
    x, y = batch
    sample = build_objective("meanflow").draw(x, y, generator=torch.Generator().manual_seed(3))
    meanflow = build_objective("meanflow")(tiny_net, x, sample=sample).logs["dudt_rms"]
    alpha0 = build_objective("alphaflow", alpha=0.0)(tiny_net, x, sample=sample).logs["dudt_rms"]
    torch.testing.assert_close(alpha0, meanflow, rtol=0, atol=0, equal_nan=True)
    assert "dudt_rms" not in build_objective("alphaflow", alpha=0.5)(tiny_net, x, sample=sample).logs


def test_micro_batches_log_the_same_per_row_dudt(tiny_net, batch):
    twin = copy.deepcopy(tiny_net)
    one, _, _ = toy_step(tiny_net, batch, [])
    acc, _, _ = toy_step(twin, batch, [], micro_batch=3)  # 3 + 3 + 2 rows: only the last has r < t rows
    torch.testing.assert_close(acc.terms.logs["dudt_rms"], one.terms.logs["dudt_rms"], rtol=1e-12, atol=0,
                               equal_nan=True)


# ----------------------------------------------------------------------------- the tick

def fake_out(loss: float, norm: float, mse: float, dudt: list[float], *, finite=True, skipped=False) -> StepOutput:
    terms = type("T", (), {"components": {"mse": torch.tensor([mse, mse])}, "logs": {"dudt_rms": torch.tensor(dudt)}})()
    return StepOutput(terms, torch.tensor(loss), torch.tensor(norm), finite, False, skipped=skipped)


def test_a_row_has_each_parts_largest_step_and_survives_a_checkpoint_mid_tick():
    steps = [fake_out(1.0, 2.0, 3.0, [float("nan"), 1.0]), fake_out(1.5, 40.0, 9.0, [2.0, 4.0], skipped=True),
             fake_out(float("nan"), float("nan"), 1.0, [5.0, 5.0], finite=False), fake_out(0.5, 1.0, 1.0, [0.5, 0.5])]
    straight, resumed = LoopState(step=4), LoopState(step=4)
    for i, out in enumerate(steps):
        ticks.accumulate(straight.tick, out)
        ticks.accumulate(resumed.tick, out)
        if i == 1:  # a checkpoint, then a resume, in the middle of the tick
            resumed = LoopState.from_checkpoint(resumed.to_checkpoint())
    rows = [ticks.log_row(s, 1e-3, {"alpha": 0.0, "ratio_fm": 0.5}, DistInfo(), 16)
            for s in (straight, resumed)]
    assert rows[0] == {**rows[1], "images_per_sec": rows[0]["images_per_sec"]}
    row = rows[0]
    assert (row["max_loss"], row["max_grad_norm"], row["max_loss_mse"], row["max_dudt_rms"]) == (1.5, 40.0, 9.0, 3.0)
    assert row["loss"] == 1.0 and row["dudt_rms"] == pytest.approx((1.0 + 3.0 + 0.5) / 3)
    assert (row["nonfinite"], row["spike_skipped"]) == (1, 1)


def test_an_old_checkpoint_without_maxima_or_window_loads():
    old = {"step": 3, "images": 48, "wall": 1.0, "tick": {"steps": 1, "finite": 1, "sums": {"loss": 2.0}}}
    state = LoopState.from_checkpoint(old)
    assert state.grad_norms is None and state.tick.maxima == {} and state.tick.skipped == 0
    ticks.accumulate(state.tick, fake_out(1.0, 2.0, 3.0, [1.0, 1.0]))
    row = ticks.log_row(state, 1e-3, {}, DistInfo(), 16)
    assert row["loss"] == 1.5 and row["max_loss"] == 1.0, "the maxima of the steps since the resume"


def test_config_changes_name_each_dotted_key_old_and_new():
    assert config_changes({"optim": {"lr": 1e-3, "eps": 1e-8}, "seed": 0}, {"optim": {"lr": 0.5, "eps": 1e-8}}) == [
        "optim.lr: 0.001 → 0.5", "seed: 0 → (absent)"]


# ----------------------------------------------------------------------------- tiny training runs (full tier)

class Recorder:
    """Wraps the trainer's ``training_step``: records each step's batch, and at ``at`` blows the gradient up by
    ``factor`` (before the norm the guard reads) or makes the batch NaN (a non-finite step)."""

    def __init__(self, monkeypatch, *, at: int | None = None, how: str = "spike", factor: float = 1e4) -> None:
        self.batches: dict[int, torch.Tensor] = {}
        self.current = -1
        real_step, real_norm = trainer_module.training_step, step_module.gradient_norm

        def step(parts, state, x, y, **kwargs):
            self.current = state.step
            self.batches[state.step] = x.clone()
            if how == "nan" and state.step == at:
                x = x * float("nan")
            return real_step(parts, state, x, y, **kwargs)

        def norm(params):
            if how == "spike" and self.current == at:
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(factor)
            return real_norm(params)

        monkeypatch.setattr(trainer_module, "training_step", step)
        monkeypatch.setattr(step_module, "gradient_norm", norm)


def saved(run_dir) -> dict:
    run = RunFolder(run_dir)
    return torch.load(run.checkpoints()[0][1], weights_only=False)


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.slow
def test_a_spike_is_skipped_as_if_its_update_never_happened(tmp_path, monkeypatch):
    monkeypatch.setattr(spikes, "WINDOW", 4)
    with monkeypatch.context() as m:
        spiked = Recorder(m, at=SPIKE_AT, how="spike")
        train(tiny("train.spike_guard=20"), tmp_path / "spike", log=lambda _: None)
    with monkeypatch.context() as m:
        held = Recorder(m, at=SPIKE_AT, how="nan")  # the reference: that step's update does not happen
        train(tiny(), tmp_path / "nan", log=lambda _: None)
    a, b = saved(tmp_path / "spike"), saved(tmp_path / "nan")
    for key in ("net", "ema", "opt"):  # weights, EMA and Adam's moments and step counts, exactly
        assert_same(a[key], b[key])
    assert spiked.batches.keys() == held.batches.keys() == set(range(12))
    assert all(torch.equal(spiked.batches[k], held.batches[k]) for k in spiked.batches), "the data moved on alike"
    rows = RunFolder(tmp_path / "spike").read_metrics()
    assert [r["spike_skipped"] for r in rows] == [0, 0, 1] and [r["nonfinite"] for r in rows] == [0, 0, 0]
    assert rows[2]["max_grad_norm"] > 100 * rows[1]["max_grad_norm"], "the row shows the spike"
    assert json.loads((tmp_path / "spike" / "DONE").read_text())["spike_skipped"] == 1
    assert [r["nonfinite"] for r in RunFolder(tmp_path / "nan").read_metrics()] == [0, 0, 1]


@pytest.mark.slow
def test_a_guard_that_never_fires_is_bit_identical_to_no_guard(tmp_path, monkeypatch):
    monkeypatch.setattr(spikes, "WINDOW", 4)
    off = train(tiny(), tmp_path / "off", log=lambda _: None)
    on = train(tiny("train.spike_guard=1000"), tmp_path / "on", log=lambda _: None)
    assert_same(off.model.state_dict(), on.model.state_dict())
    assert_same(off.ema.state_dict(), on.ema.state_dict())
    timing = ("wall", "images_per_sec")
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in RunFolder(tmp_path / d).read_metrics()]
            for d in ("off", "on")]
    assert rows[0] == rows[1] and all(r["max_dudt_rms"] > 0 for r in rows[0][1:])


@pytest.mark.slow
def test_a_resume_decides_as_an_uninterrupted_run(tmp_path, monkeypatch):
    """The window of norms and the tick's maxima travel in the checkpoint (stopped mid-tick, before the spike)."""
    monkeypatch.setattr(spikes, "WINDOW", 4)
    Recorder(monkeypatch, at=SPIKE_AT, how="spike")
    cfg = tiny("train.spike_guard=20")
    straight = train(cfg, tmp_path / "straight", log=lambda _: None)
    train(cfg, tmp_path / "resumed", stop_at=7, log=lambda _: None)
    resumed = train(cfg, tmp_path / "resumed", log=lambda _: None)
    assert_same(straight.model.state_dict(), resumed.model.state_dict())
    timing = ("wall", "images_per_sec")
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in RunFolder(tmp_path / d).read_metrics()]
            for d in ("straight", "resumed")]
    assert rows[0] == rows[1] and rows[1][-1]["spike_skipped"] == 1


@pytest.mark.slow
def test_a_resume_is_held_to_the_checkpoints_config_when_config_json_is_gone(tmp_path, capsys):
    run = RunFolder(tmp_path)
    train(tiny(), tmp_path, stop_at=4, log=lambda _: None)
    run.config_path.unlink()
    with pytest.raises(UsageError, match="optim.lr: 0.001 → 0.5"):
        train(tiny("optim.lr=0.5"), tmp_path, log=lambda _: None)
    assert not run.config_path.exists(), "the record is not rewritten with a config the run was not trained with"
    assert main(["train", "--out", str(tmp_path), *TINY, "optim.lr=0.5"]) == 2  # the command: one line, no traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "optim.lr: 0.001 → 0.5" in err, err
    result = train(tiny(), tmp_path, log=lambda _: None)
    assert result.finished and json.loads(run.config_path.read_text()) == to_dict(tiny())


@pytest.mark.slow
def test_a_checkpoint_of_an_earlier_version_still_resumes(tmp_path):
    """Its config lacks fields added since (they take their defaults), its loop state lacks the maxima and the
    window; a checkpoint with no config at all is not compared."""
    run = RunFolder(tmp_path)
    train(tiny(), tmp_path, stop_at=4, log=lambda _: None)
    path = run.checkpoints()[0][1]
    ckpt = torch.load(path, weights_only=True)
    for key in ("spike_guard", "micro_batch"):
        del ckpt["config"]["train"][key]
    for key in ("maxima", "skipped"):
        del ckpt["state"]["tick"][key]
    torch.save(ckpt, path)
    run.config_path.unlink()
    assert train(tiny(), tmp_path, stop_at=8, log=lambda _: None).step == 8
    path = run.checkpoints()[0][1]
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"] = None
    torch.save(ckpt, path)
    run.config_path.unlink()
    assert train(tiny(), tmp_path, log=lambda _: None).finished
