"""A real single-node SLURM cluster on loopback (scripts/slurm_cluster.py): sbatch, the sacct stand-in, submitit
job arrays and a Checkpointable requeue. Skips when SLURM is not installed, unless ALPHAFLOW_REQUIRE_SLURM is set
(CI sets it: there a missing SLURM fails). About 25 s, most of it the requeue (cred_expire + a scheduler pass)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_fixtures import PARTITION, _alive, _cluster, _pids, _require_slurm

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

# --- sbatch and the sacct stand-in -------------------------------------------------------------------------------


def test_sbatch_array_runs_and_writes_files(slurm_cluster, tmp_path):
    job = slurm_cluster.run(
        "sbatch", "--parsable", "--array=0-1", f"--partition={PARTITION}", "--mem=64M", "--time=1",
        f"--output={tmp_path}/%A_%a.log", "--wrap",
        f"echo task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID > {tmp_path}/out_$SLURM_ARRAY_TASK_ID.txt",
    ).stdout.strip()
    assert job.isdigit()
    slurm_cluster.wait_state(job, {"COMPLETED"}, timeout=30)
    for task in (0, 1):
        assert (tmp_path / f"out_{task}.txt").read_text() == f"task {task} of {job}\n"
    # the sacct stand-in answers submitit's query from the same jobs
    sacct = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    out = slurm_cluster.run(*sacct, "-j", job).stdout.splitlines()
    assert out[0] == "JobID|State|NodeList"
    assert sorted(out[1:]) == [f"{job}_0|COMPLETED|localhost", f"{job}_1|COMPLETED|localhost"]
    assert slurm_cluster.run(*sacct, "-j", f"{job}_1").stdout.splitlines()[1:] == [f"{job}_1|COMPLETED|localhost"]
    assert slurm_cluster.run(*sacct, "-j", "999999").stdout.splitlines() == ["JobID|State|NodeList"]


def test_sacct_standin_pending_array_and_cancel(slurm_cluster):
    job = slurm_cluster.run("sbatch", "--parsable", "--hold", "--array=0-2%2", "--mem=64M", "--time=1",
                            "--output=/dev/null", "--wrap", "true").stdout.strip()
    sacct = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    rows = slurm_cluster.run(*sacct, "-j", f"999999,{job}").stdout.splitlines()
    assert rows == ["JobID|State|NodeList", f"{job}_[0-2%2]|PENDING|"]
    assert slurm_cluster.run(*sacct, "-j", f"{job}_2").stdout.splitlines()[1:] == [f"{job}_[0-2%2]|PENDING|"]
    slurm_cluster.run("scancel", job)
    slurm_cluster.wait_state(job, {"CANCELLED"}, timeout=15)
    rows = slurm_cluster.run(*sacct, "-j", job).stdout.splitlines()
    assert rows[1:] and all(r.split("|")[1] == "CANCELLED" for r in rows[1:]), rows


# --- submitit ----------------------------------------------------------------------------------------------------


@pytest.fixture
def by_value():
    """Jobs unpickle our functions without importing this test module (tests/ is not on the job's sys.path)."""
    import cloudpickle  # a submitit dependency: fail, do not skip, if it is missing

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def _where_am_i(x: int) -> dict:
    import os

    return {"x2": 2 * x, "task": os.environ.get("SLURM_ARRAY_TASK_ID"), "conf": os.environ.get("SLURM_CONF"),
            "partition": os.environ.get("SLURM_JOB_PARTITION")}


def _executor(folder: Path, timeout_min: int = 5):
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")  # name it: AutoExecutor guesses from srun
    executor.update_parameters(timeout_min=timeout_min, slurm_partition=PARTITION, mem_gb=0.25, cpus_per_task=1,
                               slurm_signal_delay_s=15)
    return executor


def test_submitit_job_array(slurm_env, by_value, tmp_path):
    executor = _executor(tmp_path / "submitit")
    jobs = executor.map_array(_where_am_i, [1, 2])
    results = [job.result() for job in jobs]
    assert [r["x2"] for r in results] == [2, 4]
    assert sorted(r["task"] for r in results) == ["0", "1"]
    # submitit runs sbatch with our os.environ: SLURM_CONF reached sbatch and, exported, the job
    assert {r["conf"] for r in results} == {slurm_env.env["SLURM_CONF"]}
    assert {r["partition"] for r in results} == {PARTITION}
    sbatch_file = jobs[0].paths.submission_file.read_text()
    for flag in (f"--partition={PARTITION}", "--mem=256MB", "--time=5", "--array=0-1%2", "--signal=USR2@15"):
        assert f"#SBATCH {flag}" in sbatch_file
    # real states through the sacct stand-in, not UNKNOWN
    assert {job.watcher.get_state(job.job_id, mode="force") for job in jobs} == {"COMPLETED"}


class _Resumable:
    """Sleeps until signalled the first time; counts its runs both in a file and in its own (checkpointed) state."""

    def __init__(self, log: str) -> None:
        self.log, self.runs = log, 0

    def __call__(self) -> tuple[int, list[str]]:
        import time

        self.runs += 1
        with open(self.log, "a") as f:
            f.write(f"run {self.runs}\n")
        if self.runs == 1:
            for _ in range(600):  # until USR2 arrives (submitit's handler checkpoints, requeues, exits)
                time.sleep(0.1)
            raise RuntimeError("never signalled")
        with open(self.log) as f:
            return self.runs, f.read().split("\n")[:-1]


def test_submitit_checkpointable_requeue(slurm_env, by_value, tmp_path):
    import submitit

    class Resumable(_Resumable, submitit.helpers.Checkpointable):
        pass

    log = tmp_path / "runs.txt"
    job = _executor(tmp_path / "submitit").submit(Resumable(str(log)))
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text() == "run 1\n", job.stderr()
    assert job.watcher.get_state(job.job_id, mode="force") == "RUNNING"
    # USR2 to the job's steps (submitit runs the function under srun); --batch would hit only the batch shell
    t0 = time.monotonic()
    slurm_env.run("scancel", "--signal=USR2", job.job_id)
    slurm_env.wait_state(job.job_id, {"PENDING", "REQUEUED"}, timeout=20)
    assert job.result() == (2, ["run 1", "run 2"])
    print(f"requeue round trip {time.monotonic() - t0:.1f} s")
    assert "Requeued job" in job.stderr() or "Requeued job" in job.stdout()


# --- the script itself -------------------------------------------------------------------------------------------


def test_start_stop_lifecycle(tmp_path):
    """A second, independent cluster: start is idempotent, env works under eval, stop ends exactly its daemons."""
    _require_slurm()
    state = tmp_path / "c"
    _cluster("start", state)
    try:
        pids = _pids(state)
        assert all(_alive(p) for p in pids.values())
        again = _cluster("start", state)
        assert "already running" in again.stdout and _pids(state) == pids
        env = _cluster("env", state).stdout
        assert f"export SLURM_CONF={state / 'etc' / 'slurm.conf'}" in env
        r = subprocess.run(["bash", "-c", env + "\ncommand -v sacct; sinfo -h -o '%P %T'"], capture_output=True,
                           text=True, timeout=30, check=True)
        assert r.stdout.split("\n")[:2] == [str(state / "bin" / "sacct"), f"{PARTITION}* idle"]
    finally:
        stop = _cluster("stop", state, check=False)
    assert stop.returncode == 0, stop.stderr
    assert not [p for p in pids.values() if _alive(p)]
    assert "not running" in _cluster("stop", state).stdout  # idempotent
