"""Trackers (alphaflow.train.trackers, docs/trackers.md): TensorBoard events written by a real run hold the values
of its metrics.jsonl; a resume drops the replayed steps; a tracker that is not installed is refused."""

from __future__ import annotations

import importlib.util
import json

import pytest

from alphaflow.build import preflight
from alphaflow.config.extras import check_trackers
from alphaflow.config import ConfigError, load_config
from alphaflow.train.trackers import TensorBoardTracker

pytest.importorskip("tensorboard", reason="the trackers extra: pip install 'alphaflow[trackers]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ["model.name=DiT-N/2", "train.steps=4", "train.batch_size=8", "train.log_every=2", "train.ckpt_every=4",
        "train.sample_every=0", "sample.num=4", "data.stats_samples=16", "probe.every=2", "probe.loss=false",
        "log.tensorboard=true", "train.threads=1"]


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_events_of_a_run_hold_its_metrics_rows_eval_rows_and_sample_grids(tmp_path):
    from alphaflow.evaluate.callbacks import train_with_evaluation

    run = tmp_path / "run"
    final = ["eval.final=true", "eval.final_samples=64", "eval.nfe=[1]"]
    train_with_evaluation(load_config(None, TINY + final), run, log=lambda _m: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (evaluation,) = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    acc = events(run)
    tags = set(acc.Tags()["scalars"])
    expected = {k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    assert {"loss", "loss_mse", "alpha", "probe_cos_tfm_tcc"} <= expected
    assert tags == expected | {"final_fd_digits_nfe1"}
    (last,) = acc.Scalars("final_fd_digits_nfe1")
    assert (last.step, last.value) == (4, pytest.approx(evaluation["value"], rel=1e-6))
    for key in ("loss", "loss_mse", "alpha", "probe_cos_tfm_tcc", "grad_norm"):
        logged = {e.step: e.value for e in acc.Scalars(key)}
        assert logged == pytest.approx({r["step"]: r[key] for r in rows if key in r}, rel=1e-6), key
    images = acc.Tags()["images"]
    assert {"samples/nfe1", "samples/nfe2"} <= set(images), "the last grids, written after the last row"
    assert [e.step for e in acc.Images("samples/nfe1")] == [4]


def test_a_resumed_run_replaces_the_replayed_steps_in_tensorboard(tmp_path):
    """The trainer replays the steps after its checkpoint; the first row of the new attempt purges them."""
    first = TensorBoardTracker(tmp_path)
    for step in (1, 2, 3, 4):
        first.on_row({"step": step, "loss": float(step)})
    first.writer.close()
    second = TensorBoardTracker(tmp_path)  # a new process, resumed from the checkpoint of step 2
    for step in (3, 4, 5):
        second.on_row({"step": step, "loss": 10.0 * step})
    second.writer.close()
    logged = {e.step: e.value for e in events(tmp_path).Scalars("loss")}
    assert logged == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0, 5: 50.0}


def test_a_tracker_that_is_not_installed_is_refused_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    cfg = load_config(None, ["log.tensorboard=true"])
    with pytest.raises(ConfigError, match=r"log.tensorboard=true needs the 'tensorboard' package.*"
                                          r"pip install 'alphaflow\[trackers\]'"):
        preflight(cfg)
    check_trackers(load_config(None, []))  # nothing asked for: nothing to check
