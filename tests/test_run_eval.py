"""Evaluation inside a run: eval.every rows in metrics.jsonl, eval.final rows in eval.jsonl, probe.final rows."""

from __future__ import annotations

import math

import pytest

from alphaflow.config import ConfigError, load_config
from alphaflow.run.folder import RunFolder, read_jsonl
from alphaflow.launch.training import train_run as train
from alphaflow.train.loop import train as bare_train

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

SMALL = ["model.name=DiT-N/2", "train.steps=20", "train.batch_size=16", "train.log_every=10",
         "train.sample_every=0", "ema.halflife_steps=5", "objective.name=meanflow"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    cfg = load_config(None, SMALL + ["eval.every=10", "eval.num_samples=64", "eval.final=true",
                                     "eval.final_samples=64", "probe.final=true", "probe.batches=2",
                                     "probe.batch_size=16"])
    out = tmp_path_factory.mktemp("run_eval") / "run"
    train(cfg, out, log=lambda _: None)
    return out


def test_training_is_bit_identical_with_online_evaluation_on_or_off(evaluated_run, tmp_path):
    """eval.every draws its samples from its own generator (eval.seed) and touches no random state of training:
    the same config without it trains the same weights and logs the same losses, exactly."""
    import torch

    cfg = load_config(None, SMALL)  # the end-of-run evaluation and probe come after the last checkpoint
    plain = tmp_path / "plain"
    train(cfg, plain, log=lambda _: None)
    rows_on, rows_off = RunFolder(evaluated_run).read_metrics(), RunFolder(plain).read_metrics()
    assert [r["loss"] for r in rows_on] == [r["loss"] for r in rows_off]
    assert [r["grad_norm"] for r in rows_on] == [r["grad_norm"] for r in rows_off]
    on = torch.load(RunFolder(evaluated_run).checkpoints()[0][1], weights_only=False)  # newest first
    off = torch.load(RunFolder(plain).checkpoints()[0][1], weights_only=False)
    assert on["step"] == off["step"] == 20
    for key in ("net", "ema"):
        for name, value in on[key].items():
            assert torch.equal(value, off[key][name]), f"{key}.{name}"


def test_online_rows_carry_small_sample_distances(evaluated_run):
    rows = RunFolder(evaluated_run).read_metrics()
    assert [r["step"] for r in rows] == [10, 20]
    for row in rows:
        for k in (1, 2):
            value = row[f"eval_fd_digits_nfe{k}"]
            assert math.isfinite(value) and value > 0


def test_final_rows_match_the_online_number_at_the_same_weights_and_seeds(evaluated_run):
    """eval.final with as many samples as eval.every draws the same samples from the same EMA weights
    (the last checkpoint), so the two code paths must agree to float precision."""
    final = read_jsonl(evaluated_run / "eval.jsonl")
    assert sorted((r["step"], r["nfe"]) for r in final) == [(20, 1), (20, 2)]
    last = RunFolder(evaluated_run).read_metrics()[-1]
    for r in final:
        assert r["metric"] == "fd_digits" and r["num_samples"] == 64
        assert r["value"] == pytest.approx(last[f"eval_fd_digits_nfe{r['nfe']}"], rel=1e-6)


def test_final_probe_and_done_marker(evaluated_run):
    run = RunFolder(evaluated_run)
    probes = run.read_probes()
    assert [p["step"] for p in probes] == [20] and probes[0]["batches"] == 2
    assert any(k.startswith("cos") for k in probes[0]), sorted(probes[0])
    assert run.is_done()


def test_a_finished_run_is_not_evaluated_twice(evaluated_run):
    before = (evaluated_run / "eval.jsonl").read_text()
    cfg = load_config(None, SMALL + ["eval.every=10", "eval.num_samples=64", "eval.final=true",
                                     "eval.final_samples=64", "probe.final=true", "probe.batches=2",
                                     "probe.batch_size=16"])
    train(cfg, evaluated_run, log=lambda _: None)
    assert (evaluated_run / "eval.jsonl").read_text() == before


@pytest.mark.parametrize("override, key", [
    ("eval.every=15", "eval.every"),            # not a multiple of train.log_every=10
    ("eval.num_samples=1", "eval.num_samples"),  # a covariance needs two samples
    ("eval.nfe=[0]", "eval.nfe"),
    ("probe.batches=0", "probe.batches"),
])
def test_bad_eval_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, SMALL + [override])


def test_in_run_evaluation_that_cannot_work_is_refused_before_training(monkeypatch, tmp_path):
    from alphaflow.train.build import preflight

    monkeypatch.delenv("ALPHAFLOW_INCEPTION_WEIGHTS", raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="eval.metric: .*ALPHAFLOW_INCEPTION_WEIGHTS"):
        preflight(load_config(None, SMALL + ["eval.final=true", "eval.metric=fid"]))
    with pytest.raises(ConfigError, match="--ref-images"):
        preflight(load_config(None, ["data.name=latents", f"data.path={tmp_path / 'empty'}", "eval.every=50"]))
    preflight(load_config(None, SMALL + ["eval.final=true"]))  # digits: nothing to fetch, accepted



def test_the_bare_training_loop_refuses_evaluation_it_cannot_do(tmp_path):
    """alphaflow.train imports nothing from evaluation: asked for eval.every without the evaluation callbacks,
    it says so instead of silently skipping the evaluation."""
    cfg = load_config(None, ["train.steps=2", "train.log_every=1", "eval.every=1"])
    with pytest.raises(ValueError, match=r"eval.every is set but no callback serves it.*train_run"):
        bare_train(cfg, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists(), "refused before anything was written"
