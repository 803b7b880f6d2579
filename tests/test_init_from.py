"""``train.init_from``: a run starts from another run's weights, EMA and data statistics, with a fresh optimiser."""

from __future__ import annotations

import json

import pytest
import torch

from alphaflow.train.build import preflight
from alphaflow.config import config_hash, load_config
from alphaflow.run.files import read_checkpoint
from alphaflow.run.folder import RunFolder
from alphaflow.train.loop import train

TINY = ["model.name=DiT-N/2", "train.batch_size=8", "train.log_every=2", "train.ckpt_every=2", "train.sample_every=0",
        "sample.num=4", "data.stats_samples=32", "train.threads=1"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "fm"
    train(load_config(None, [*TINY, "objective.name=fm", "train.steps=4"]), out, log=lambda _: None)
    return out


def test_a_run_starts_from_the_sources_weights_with_a_fresh_optimiser(source, tmp_path):
    lines: list[str] = []
    cfg = load_config(None, [*TINY, "objective.name=meanflow", "train.steps=2", "optim.lr=1e-12",
                             f"train.init_from={source}"])
    train(cfg, tmp_path / "mf", log=lines.append)
    src = read_checkpoint(RunFolder(source).checkpoints()[0][1])
    mine = read_checkpoint(RunFolder(tmp_path / "mf").checkpoints()[0][1])
    assert mine["step"] == 2 and src["step"] == 4
    for key, value in src["net"].items():  # Adam moves each weight by at most ≈ lr per step: still the source's
        torch.testing.assert_close(mine["net"][key], value, rtol=0, atol=1e-10)
    assert all(s["step"] == 2 for s in mine["opt"]["state"].values()), "Adam counted this run's steps only"
    assert mine["data_stats"] == src["data_stats"]
    record = json.loads((tmp_path / "mf" / "init.json").read_text())
    assert record["init_from"] == str(source) and record["step"] == 4 and record["checkpoint"].endswith(".pt")
    assert any(line.startswith("initialised from") for line in lines)


def test_the_ema_is_the_sources(source):
    from alphaflow.data import dataset_from_config
    from alphaflow.models import build_for_data
    from alphaflow.train.initialise import initialise_from
    from alphaflow.train.optim import EMA

    cfg = load_config(None, TINY)
    data = dataset_from_config(cfg.data)
    net = build_for_data(cfg.model.name, data.shape, data.num_classes)
    ema = EMA(net, 10.0, None)
    initialise_from(str(source), net, ema, data, say=lambda _: None)
    src = read_checkpoint(RunFolder(source).checkpoints()[0][1])
    assert all(torch.equal(ema.model.state_dict()[k], v) for k, v in src["ema"].items())
    assert not all(torch.equal(src["ema"][k], v) for k, v in src["net"].items()), "EMA and weights differ here"


def test_bad_sources_are_refused_naming_the_input(source, tmp_path):
    with pytest.raises(ValueError, match=r"train.init_from='/nowhere' does not exist"):
        preflight(load_config(None, [*TINY, "train.init_from=/nowhere"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is a folder without checkpoints"):
        preflight(load_config(None, [*TINY, f"train.init_from={tmp_path / 'empty'}"]))
    other = load_config(None, [*TINY, "model.name=DiT-N/4", "train.steps=2", f"train.init_from={source}"])
    with pytest.raises(ValueError, match=r"its network weights do not fit this run's model \(other shape"):
        train(other, tmp_path / "n4", log=lambda _: None)


def test_the_option_at_its_default_leaves_run_names_unchanged():
    cfg = load_config(None, [])
    assert config_hash(cfg) == "1a45994e5f", "the default run's name, as before train.init_from existed"
    assert config_hash(load_config(None, ["train.init_from=runs/fm"])) != config_hash(cfg)


def test_a_sweep_names_the_same_seed_of_another_variant_and_an_unfinished_source_is_refused(source, tmp_path):
    from alphaflow.run.checkpoints import init_checkpoint

    root = source.parent
    (root / "fm-s0-0123456789").mkdir(exist_ok=True)
    for p in (source / "checkpoints").iterdir():
        (root / "fm-s0-0123456789" / "checkpoints").mkdir(exist_ok=True)
        (root / "fm-s0-0123456789" / "checkpoints" / p.name).write_bytes(p.read_bytes())
    pattern = "{root}/fm-s{seed}-*"
    assert init_checkpoint(pattern) == type(source)(pattern), "left for the run to resolve"
    with pytest.raises(ValueError, match="has not finished training"):
        init_checkpoint(pattern, seed=0, root=root)
    (root / "fm-s0-0123456789" / "DONE").write_text("{}\n")
    assert init_checkpoint(pattern, seed=0, root=root).parent.parent.name == "fm-s0-0123456789"
    with pytest.raises(ValueError, match=r"matches 0 folders"):
        init_checkpoint(pattern, seed=1, root=root)


def test_decoupled_meanflow_starts_from_a_flow_matching_run_with_a_new_log_variance_head(source, tmp_path):
    lines: list[str] = []
    cfg = load_config(None, [*TINY, "objective.name=decoupled_meanflow", "model.decouple_at=1", "model.logvar=true",
                             "train.steps=2", f"train.init_from={source}"])
    preflight(cfg)
    train(cfg, tmp_path / "dmf", log=lines.append)
    mine = read_checkpoint(RunFolder(tmp_path / "dmf").checkpoints()[0][1])
    assert "logvar_head.linear.weight" in mine["net"]
    assert any("new here, as initialised: logvar_head.linear.bias, logvar_head.linear.weight" in line for line in lines)
    rows = RunFolder(tmp_path / "dmf").read_metrics()
    assert all("loss_lv" in r and "loss_tcc" in r for r in rows)
