"""What a job of several nodes needs beyond one: ranks that agree on the step they restored, a rendezvous that fails
in minutes with one line, and a rendezvous port of the job's own (alphaflow.train.distributed,
alphaflow.launch.executors). Two gloo ranks on the CPU stand in for the nodes."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from alphaflow.train import distributed as D

# The spawned ranks import this module: submitit and the launcher (with the models) are imported by the tests that
# need them, which keeps each rank's start-up to torch's.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int, folder: str) -> None:
    """The torchrun variables, then wait until every rank got here, so that the ranks enter the rendezvous together
    (process start-up times differ by more than the tests' short timeouts)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    Path(folder, f"ready{rank}").touch()
    while len(list(Path(folder).glob("ready*"))) < world:
        time.sleep(0.01)


def _outcome(folder: str, rank: int, work) -> None:
    try:
        work()
        text = "ok"
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
    Path(folder, f"rank{rank}.txt").write_text(text)


def _outcomes(folder: Path, world: int) -> list[str]:
    return [(folder / f"rank{r}.txt").read_text() for r in range(world)]


# ----------------------------------------------------------------------------- agree

def _agree_worker(rank: int, world: int, port: int, folder: str, steps: list[int]) -> None:
    _join(rank, world, port, folder)
    info, created = D.init_distributed("cpu", timeout_min=1.0, init_timeout_min=0.5)
    try:
        D.agree(7, info, "the first value")  # the same everywhere: nothing happens
        _outcome(folder, rank, lambda: D.agree(steps[rank], info, "the restored step",
                                               "a node that cannot see the run folder's checkpoints?"))
    finally:
        if created:
            D.shutdown()


def test_agree_is_nothing_in_one_process():
    assert D.agree(123, D.DistInfo(), "the restored step") is None


@pytest.mark.slow  # two spawned ranks: a few seconds each
def test_ranks_that_restored_different_steps_all_raise_the_same_line(tmp_path):
    mp.spawn(_agree_worker, args=(2, _free_port(), str(tmp_path), [1000, 0]), nprocs=2, join=True)
    expected = ("RuntimeError: the ranks disagree on the restored step: 1000 on rank 0; 0 on rank 1 — a node that "
                "cannot see the run folder's checkpoints?")
    assert _outcomes(tmp_path, 2) == [expected, expected]


def test_ranks_are_listed_by_value_in_ranges():
    assert D._ranges([0, 1, 2, 3, 5, 8, 9]) == "0-3, 5, 8-9"


# ----------------------------------------------------------------------------- the first rendezvous

@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_left_alone_fails_quickly_with_one_line(monkeypatch, rank):
    port = _free_port()
    for key, value in dict(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        D.init_distributed("cpu", timeout_min=60.0, init_timeout_min=0.02)  # 1.2 s, not the hour of the long timeout
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "\n" not in message and not torch.distributed.is_initialized()
    assert message.startswith(f"rank {rank} of 2 could not join the process group at MASTER_ADDR:MASTER_PORT="
                              f"127.0.0.1:{port} within 0.02 min (")
    assert message.endswith(f"the network variables in {D.NCCL_DOCS}")


def _timeout_worker(rank: int, world: int, port: int, folder: str, init_min: float, long_min: float) -> None:
    _join(rank, world, port, folder)
    info, created = D.init_distributed("cpu", timeout_min=long_min, init_timeout_min=init_min)

    def late_barrier() -> None:
        if rank == 1:
            time.sleep(3.0)  # twice the rendezvous timeout, far shorter than the run's
        D.barrier(info)

    _outcome(folder, rank, late_barrier)
    if created:
        D.shutdown()


@pytest.mark.slow  # two spawned ranks: a few seconds each
def test_after_the_rendezvous_the_group_has_the_long_timeout(tmp_path):
    mp.spawn(_timeout_worker, args=(2, _free_port(), str(tmp_path), 1.5 / 60, 1.0), nprocs=2, join=True)
    assert _outcomes(tmp_path, 2) == ["ok", "ok"]


@pytest.mark.slow  # two spawned ranks: a few seconds each
def test_without_raising_it_the_short_timeout_would_have_failed_that_barrier(tmp_path):
    """The control of the test above: a group left at 1.5 s fails the same late barrier on the rank that waits."""
    mp.spawn(_timeout_worker, args=(2, _free_port(), str(tmp_path), 1.5 / 60, 1.5 / 60), nprocs=2, join=True)
    rank0 = _outcomes(tmp_path, 2)[0]
    assert "Timed out waiting 1500ms" in rank0, rank0


# ----------------------------------------------------------------------------- the rendezvous port

def _slurm_task(monkeypatch, array_job: str, task: str, procid: int) -> "submitit.JobEnvironment":  # noqa: F821
    """submitit's view of task ``procid`` of array task ``task`` of a two-node job, from a submitting shell that
    exported a rendezvous of its own (set through monkeypatch, so what export_rendezvous writes is undone too)."""
    env = dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=str(1000 + int(task)), SLURM_ARRAY_JOB_ID=array_job,
               SLURM_ARRAY_TASK_ID=task, SLURM_NTASKS="16", SLURM_JOB_NUM_NODES="2", SLURM_NODEID=str(procid // 8),
               SLURM_JOB_NODELIST="gpu[7-8]", SLURM_PROCID=str(procid), SLURM_LOCALID=str(procid % 8),
               MASTER_ADDR="login1", MASTER_PORT="29500", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
               LOCAL_WORLD_SIZE="1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import submitit

    return submitit.JobEnvironment()


def test_submitit_alone_would_give_every_array_task_the_inherited_port(monkeypatch):
    import submitit

    _slurm_task(monkeypatch, "555", "3", 0)
    assert submitit.helpers.TorchDistributedEnvironment().master_port == 29500  # why export_rendezvous sets it first


def test_each_job_gets_its_own_port_and_every_rank_of_a_job_the_same(monkeypatch):
    from alphaflow.launch import executors as launcher

    seen = {}
    for task in ("0", "1", "2"):
        for procid in (0, 9):  # a rank on each node
            env = _slurm_task(monkeypatch, "555", task, procid)
            launcher.export_rendezvous(env)
            assert os.environ["MASTER_ADDR"] == "gpu7" and os.environ["RANK"] == str(procid)
            assert os.environ["WORLD_SIZE"] == "16" and os.environ["LOCAL_RANK"] == str(procid % 8)
            seen.setdefault(task, set()).add(int(os.environ["MASTER_PORT"]))
    assert all(len(ports) == 1 for ports in seen.values()), "every rank of one job meets at one port"
    ports = [next(iter(p)) for p in seen.values()]
    assert len(set(ports)) == 3 and 29500 not in ports, "array tasks never share the inherited port"
    assert ports[0] == launcher.rendezvous_port("555_0")


def test_the_port_is_a_pure_function_of_the_job_id_below_the_ephemeral_range():
    from alphaflow.launch import executors as launcher

    ports = [launcher.rendezvous_port(f"{job}_{task}") for job in (1, 77, 123456) for task in range(50)]
    assert all(launcher.PORT_BASE <= p < 32768 for p in ports)
    assert len(set(ports)) > 140, "spread over the range"
    assert launcher.rendezvous_port("123456_7") == launcher.rendezvous_port("123456_7")
