"""Trackers (alphaflow.train.trackers, docs/trackers.md): TensorBoard events written by a real run hold the values
of its metrics.jsonl; a resume drops the replayed steps; a tracker that is not installed is refused."""

from __future__ import annotations

import importlib.util
import json

import pytest

from alphaflow.train.build import preflight
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
    from alphaflow.launch.training import train_run

    run = tmp_path / "run"
    final = ["eval.final=true", "eval.final_samples=64", "eval.nfe=[1]"]
    train_run(load_config(None, TINY + final), run, log=lambda _m: None)
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


@pytest.mark.parametrize("setting,package", [("log.tensorboard=true", "tensorboard"), ("log.wandb=offline", "wandb")])
def test_a_tracker_that_is_not_installed_is_refused_with_the_install_command(monkeypatch, setting, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    cfg = load_config(None, [setting])
    with pytest.raises(ConfigError, match=rf"{setting} needs the '{package}' package.*"
                                          r"pip install 'alphaflow\[trackers\]'"):
        preflight(cfg)
    check_trackers(load_config(None, []))  # nothing asked for: nothing to check


def test_an_unknown_wandb_mode_is_refused_naming_the_modes():
    with pytest.raises(ConfigError, match=r"log.wandb must be one of \['disabled', 'offline', 'online'\]"):
        load_config(None, ["log.wandb=offlne"])


# ----------------------------------------------------------------------------- wandb, offline (no network)

def wandb_records(run_dir):
    """Every record of the offline runs under RUN_DIR/wandb, in order: wandb's transaction log is a LevelDB-style
    log (a 7-byte ':W&B' header, then 32 KiB blocks of records with a 7-byte header: crc, length, type) of
    ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, pending = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B", path
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:  # a block's tail too short for a header is padding
                pos += left
                continue
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # FULL, LAST
                record = pb.Record()
                record.ParseFromString(pending + chunk)
                out.append(record)
                pending = b""
            elif kind in (2, 3):  # FIRST, MIDDLE
                pending += chunk
            else:
                break
    return out


def history(records) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
            step = int(json.loads(items.pop("_step")))
            rows.setdefault(step, {}).update({k: json.loads(v) for k, v in items.items() if not k.startswith("_")})
    return rows


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_an_offline_wandb_run_holds_the_metrics_rows_and_a_resumed_run_keeps_its_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the trackers extra: pip install 'alphaflow[trackers]'")
    from alphaflow.launch.training import train_run

    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    wandb_on = ["log.tensorboard=false", "log.wandb=offline", "train.steps=6", "train.ckpt_every=2",
                "eval.final=true", "eval.final_samples=64", "eval.nfe=[1]"]
    train_run(load_config(None, TINY + wandb_on), run, stop_at=2, log=lambda _m: None)
    first_id = (run / "wandb_id.txt").read_text().strip()
    train_run(load_config(None, TINY + wandb_on), run, log=lambda _m: None)  # resumes at step 2
    assert (run / "wandb_id.txt").read_text().strip() == first_id
    offline = sorted(run.glob("wandb/offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{first_id}") for p in offline), "one wandb run, two attempts"
    records = wandb_records(run)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {r.run_id for r in runs} == {first_id} and {r.project for r in runs} == {"alphaflow"}
    config_keys = {i.key for r in runs for i in r.config.update}  # the config travels with the run record
    assert {"model", "objective", "train", "log"} <= config_keys
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = history(records)
    assert sorted(logged) == [r["step"] for r in rows] == [2, 4, 6]
    for r in rows:
        for key in ("loss", "loss_mse", "alpha", "probe_cos_tfm_tcc"):
            assert logged[r["step"]][key] == pytest.approx(r[key], rel=1e-9), (r["step"], key)
    (evaluation,) = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    summary = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update}
    assert summary["final_fd_digits_nfe1"] == pytest.approx(evaluation["value"], rel=1e-9)
