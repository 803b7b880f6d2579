"""Checkpoints load with torch.load(weights_only=True): a file from elsewhere cannot run code while it loads."""

from __future__ import annotations

import os

import pytest
import torch

from alphaflow.cli.main import main
from alphaflow.config import load_config
from alphaflow.run.checkpoints import load_weights
from alphaflow.run.folder import RunFolder, read_checkpoint
from alphaflow.train.loop import train

TINY = ["model.name=DiT-N/2", "train.steps=2", "train.log_every=1", "train.ckpt_every=2", "train.batch_size=8",
        "train.sample_every=0"]


class _RunsCode:
    """Unpickling this calls os.system: what a malicious "checkpoint" would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def trained(tmp_path):
    train(load_config(None, TINY), tmp_path / "run", log=lambda _: None)
    return RunFolder(tmp_path / "run")


def test_a_training_checkpoint_loads_with_weights_only(trained):
    (step, path), = trained.checkpoints()
    raw = torch.load(path, map_location="cpu", weights_only=True)  # the file itself needs nothing more
    ckpt = read_checkpoint(path)
    assert step == 2 and ckpt["step"] == raw["step"] == 2 and set(ckpt["net"]) == set(raw["net"])
    weights, stats = load_weights(path, "ema")
    assert all(isinstance(v, torch.Tensor) for v in weights.values()) and stats == {}
    assert trained.load_checkpoint(report=lambda _: None)[1] == path


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(trained, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    (step, path), = trained.checkpoints()
    torch.save({"format": 1, "step": step, "net": _RunsCode(str(marker))}, path)
    refused = r"is not an alphaflow checkpoint: it holds Python objects other than .* \(it names \w+\.system\)"
    with pytest.raises(ValueError, match=refused):
        read_checkpoint(path)
    assert not marker.exists(), "the pickle's code ran"
    # the trainer reports it and refuses to resume (no usable checkpoint); the commands refuse with one line
    assert main(["eval", str(trained.root), "--num-samples", "4"]) == 2
    assert "is not an alphaflow checkpoint" in capsys.readouterr().err
    assert not marker.exists()
    lines: list[str] = []
    assert trained.load_checkpoint(report=lines.append) is None and "not an alphaflow checkpoint" in lines[0]


def test_a_file_that_is_not_a_training_checkpoint_is_refused_naming_what_it_holds(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt is not an alphaflow checkpoint: it holds a dict without format"):
        read_checkpoint(tmp_path / "other.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"it holds a list \(a training checkpoint has format, step"):
        read_checkpoint(tmp_path / "list.pt")
