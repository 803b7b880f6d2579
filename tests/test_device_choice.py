"""``train.device=auto`` never falls back to the CPU silently where this process was given GPUs
(alphaflow.train.distributed.resolve_device): the causes it names, and ``cpu`` forcing the CPU everywhere.

Every test sets the environment it needs on top of conftest's ``no_gpus_assigned`` and says whether torch can use
CUDA (monkeypatch), so the outcome does not depend on the machine, a CI runner's CUDA_VISIBLE_DEVICES or a SLURM
allocation."""

from __future__ import annotations

import pytest
import torch

from alphaflow.cli.main import main
from alphaflow.run.errors import UsageError
from alphaflow.train import distributed as D


@pytest.fixture
def no_cuda(monkeypatch):
    """torch cannot use a GPU here, as on a CPU wheel."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)


@pytest.fixture
def cuda_build_without_device(monkeypatch):
    """torch is a CUDA build, but the driver refuses (what torch.cuda.init says on a node whose driver is missing)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.6")

    def refuse() -> None:
        raise RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU\n"
                           "and installed a driver")

    monkeypatch.setattr(torch.cuda, "init", refuse)


def test_auto_is_the_cpu_where_no_gpu_was_given(no_cuda, monkeypatch):
    assert D.resolve_device("auto") == torch.device("cpu")
    for name, value in (("CUDA_VISIBLE_DEVICES", ""), ("CUDA_VISIBLE_DEVICES", "-1"), ("SLURM_GPUS_ON_NODE", "0"),
                        ("SLURM_GPUS_PER_NODE", "h100:0"), ("SLURM_GPUS", "0")):
        monkeypatch.setenv(name, value)
        assert D.resolve_device("auto") == torch.device("cpu"), (name, value)
        monkeypatch.delenv(name)


@pytest.mark.parametrize("name,value", [("SLURM_GPUS_ON_NODE", "8"), ("SLURM_JOB_GPUS", "0"),
                                        ("SLURM_STEP_GPUS", "0,1"), ("SLURM_GPUS", "16"),
                                        ("SLURM_GPUS_PER_NODE", "a100:8"), ("SLURM_GPUS_PER_TASK", "1"),
                                        ("CUDA_VISIBLE_DEVICES", "0,1")])
def test_auto_refuses_the_cpu_where_gpus_were_given_and_names_the_cpu_wheel(no_cuda, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError) as err:
        D.resolve_device("auto", local_rank=1)
    message = str(err.value)
    assert "\n" not in message
    assert f"{name}={value}" in message and "CPU-only build" in message
    assert "download.pytorch.org/whl/cu" in message and "train.device=cpu" in message


def test_the_cause_names_the_drivers_complaint(cuda_build_without_device, monkeypatch):
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    with pytest.raises(UsageError, match="built for CUDA 12.6 but no CUDA device is usable "
                                         r"\(Found no NVIDIA driver on your system\. Please check") as err:
        D.resolve_device("auto")
    assert "\n" not in str(err.value) and "CUDA_VISIBLE_DEVICES is unset" in str(err.value)


def test_the_cause_names_a_cuda_visible_devices_that_hides_every_gpu(cuda_build_without_device, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_GPUS", "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UsageError, match=r"SLURM_JOB_GPUS=0,1 gives .* CUDA_VISIBLE_DEVICES='' hides every device"):
        D.resolve_device("auto")


def test_cpu_is_the_cpu_whatever_the_environment_says(monkeypatch):
    for name in (*D.SLURM_GPU_COUNTS, *D.SLURM_GPU_LISTS, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.setenv(name, "1")
    for name in ("RANK", "WORLD_SIZE", "SLURM_NTASKS"):  # one process, whatever launched pytest
        monkeypatch.delenv(name, raising=False)
    assert D.resolve_device("cpu") == torch.device("cpu")
    info, created = D.init_distributed("cpu")
    assert info.device == torch.device("cpu") and not created


def test_cuda_without_cuda_names_the_cause(no_cuda):
    with pytest.raises(UsageError, match="CUDA is not available on this machine: this torch .* is a CPU-only build"):
        D.resolve_device("cuda")


def test_auto_picks_the_local_ranks_gpu_when_cuda_works(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    assert D.resolve_device("auto", local_rank=5) == torch.device("cuda", 1)


def test_a_training_run_refuses_the_cpu_in_one_line(no_cuda, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SLURM_GPUS_PER_NODE", "8")
    args = ["train", "--out", str(tmp_path / "run"), "model.name=DiT-N/2", "train.steps=1", "train.batch_size=4",
            "train.sample_every=0", "sample.num=4", "sample.nfe=[1]", "data.stats_samples=16", "train.threads=1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SLURM_GPUS_PER_NODE=8 gives this process GPUs" in err, err
    assert not (tmp_path / "run" / "config.json").exists(), "refused before the run folder was written"
