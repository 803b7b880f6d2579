"""Sweeps through submitit's local executor: job arrays, accounting, preemption and requeue."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from alphaflow.launch import executors as launcher
from alphaflow.cli.main import main
from alphaflow.launch.executors import run_inline
from alphaflow.launch.sweeps import load_sweep
from alphaflow.run.folder import RunFolder, run_status

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

TINY_BASE = ("{model: {name: DiT-N/2}, train: {steps: STEPS, batch_size: 8, log_every: 2, ckpt_every: 4, "
             "sample_every: 0, threads: 1}, sample: {num: 4}, data: {stats_samples: 16}}")


def sweep_file(tmp_path: Path, steps: int, variants: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: t\nbase: {TINY_BASE.replace('STEPS', str(steps))}\nvariants: {variants}\n"
                    "resources: {timeout_min: 5, cpus_per_task: 1}\n")
    return path


def test_local_sweep_end_to_end_and_resubmission_submits_nothing(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, 4, "{fm: {objective.name: fm}, mf: {objective.name: meanflow}}"))
    root = tmp_path / "root"
    lines: list[str] = []
    resources = {**sweep.resources, "array_parallelism": 1}  # which the local executor cannot honour: it says so
    jobs = launcher.submit(sweep.runs, root, executor="local", resources=resources, name="t", log=lines.append)
    assert len(jobs) == 2 and lines[0] == "2 runs: 2 new" and "one job array" in lines[-1]
    assert any(line.startswith("warning: submitit's local executor starts all 2 jobs at once") for line in lines)
    results = [job.result() for job in jobs]
    assert all(r["finished"] and r["step"] == 4 for r in results)
    for r in sweep.runs:
        run = RunFolder(root / r.name)
        assert run.is_done() and json.loads((run.root / "job.json").read_text())["executor"] == "local"
        assert run_status(root / r.name).state == "done"
        assert run.read_info() == {"sweep": "t", "variant": r.name.split("-")[0], "seed": 0,
                                   "config_hash": r.name[-10:], "baseline": sweep.runs[0].variant}, \
            "written at submission, with the sweep's baseline (its first variant)"
    lines.clear()
    assert launcher.submit(sweep.runs, root, executor="local", resources=sweep.resources, name="t", log=lines.append) == []
    assert lines == ["2 runs: 2 done", "nothing to submit"]


def test_wait_shows_progress_until_the_array_ends_and_reports_success(tmp_path, capsys):
    path = sweep_file(tmp_path, 4, "{fm: {objective.name: fm}, mf: {objective.name: meanflow}}")
    rc = main(["sweep", str(path), "--executor", "local", "--root", str(tmp_path / "root"), "--wait",
               "--wait-every", "0.5"])
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert rc == 0 and progress, out
    assert "2/2 runs done, 100% of steps" in progress[-1] and "fm-s0:4" in progress[-1] and "mf-s0:4" in progress[-1]


def task_pids(pid: int) -> list[int]:
    """Descendants of ``pid`` that run a submitit task (Linux /proc)."""
    found = []
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in (children.read_text().split() if children.exists() else []):
        cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        found += ([int(child)] if b"submitit.core._submit" in cmd else []) + task_pids(int(child))
    return found


def test_preempted_job_checkpoints_at_a_step_boundary_requeues_and_resumes_exactly(tmp_path):
    path = sweep_file(tmp_path, 300, "{mf: {objective.name: meanflow}}")
    sweep = load_sweep(path)
    root = tmp_path / "root"
    (job,) = launcher.submit(sweep.runs, root, executor="local", resources=sweep.resources, name="t", log=lambda _: None)
    run = RunFolder(root / sweep.runs[0].name)
    deadline = time.time() + 120
    while not run.read_metrics() or run.read_metrics()[-1]["step"] < 20:  # let it get going
        assert time.time() < deadline and job.state == "RUNNING", job.state
        time.sleep(0.2)
    # The scheduler's preemption/timeout signal (SIGUSR2) to the task. submitit's local controller only
    # sends it itself shortly before its own time limit, so deliver it by hand, as SLURM would.
    pids = task_pids(job._process.pid)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGUSR2)
    assert job.result()["finished"]
    log = Path(job.paths.stdout).read_text()
    assert "stopped at step" in log and "resuming" in log, log[-2000:]
    stopped = int(log.split("stopped at step ")[1].split()[0])
    assert f"resuming {run.root} from latest-{stopped:08d}.pt" in log  # from the boundary it stopped at
    steps = [r["step"] for r in run.read_metrics()]
    assert steps == list(range(2, 301, 2)), "every log tick exactly once: nothing lost, nothing repeated"
    run_inline(sweep.runs, tmp_path / "straight", log=lambda _: None)
    straight = RunFolder(tmp_path / "straight" / sweep.runs[0].name)
    a = torch.load(run.checkpoints()[0][1], weights_only=False)["net"]
    b = torch.load(straight.checkpoints()[0][1], weights_only=False)["net"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the requeued run must match an uninterrupted one"


def test_a_run_that_cannot_start_is_refused_before_submission(tmp_path, capsys):
    path = sweep_file(tmp_path, 4, "{bad: {data.name: cifar10, data.path: /nonexistent}}")
    assert main(["sweep", str(path), "--root", str(tmp_path / "root"), "--executor", "local"]) == 2
    assert "data.path '/nonexistent' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


def test_failed_run_is_reported_and_retried_only_when_asked(tmp_path, capsys):
    (tmp_path / "empty").mkdir()  # exists, so preflight passes; the job fails when it reads the batches
    path = sweep_file(tmp_path, 4, f"{{bad: {{data.name: cifar10, data.path: {tmp_path / 'empty'}}}}}")
    root = tmp_path / "root"
    assert main(["sweep", str(path), "--root", str(root), "--executor", "local"]) == 0
    sweep = load_sweep(path)
    job_id = json.loads((root / sweep.runs[0].name / "job.json").read_text())["job_id"]
    with pytest.raises(Exception):
        launcher.submitit.local.local.LocalJob(root / ".submitit", job_id).result()
    status = run_status(root / sweep.runs[0].name)
    assert status.state == "failed" and "lacks data_batch_1" in status.detail
    capsys.readouterr()
    assert main(["sweep", str(path), "--root", str(root), "--status"]) == 0
    assert "failed" in capsys.readouterr().out
    lines: list[str] = []
    assert launcher.submit(sweep.runs, root, executor="local", resources={}, name="t", log=lines.append) == []
    assert lines == ["1 runs: 1 failed", "nothing to submit"]
    jobs = launcher.submit(sweep.runs, root, executor="local", resources={"timeout_min": 2}, name="t",
                           retry_failed=True, log=lines.append)
    assert len(jobs) == 1


@pytest.mark.fast
def test_dry_run_prints_the_slurm_batch_script(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: big\nvariants: {a: {seed: 1}, b: {seed: 2}}\nresources: {timeout_min: 600, gpus_per_node: 8, "
                    "tasks_per_node: 8, cpus_per_task: 10, mem_gb: 400, partition: learn, array_parallelism: 1, "
                    "slurm: {account: proj, qos: high, constraint: h100}}\n")
    assert main(["sweep", str(path), "--root", str(tmp_path / "r"), "--dry-run", "--executor", "slurm"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --array=0-1%1", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --partition=learn", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --constraint=h100", "#SBATCH --time=600", "#SBATCH --signal=USR2@"):
        assert line in out, line
    assert not (tmp_path / "r").exists(), "a dry run submits and writes nothing"
    # the job runs this interpreter (the cluster must see the same path), on the sweep's .submitit folder
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(tmp_path / 'r' / '.submitit'))}"
    (srun,) = [line for line in out.splitlines() if line.startswith("srun ")]
    assert srun.endswith(" " + command), srun


def test_unknown_resources_are_refused_before_submission(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nresources: {gpus: 8}\n")
    assert main(["sweep", str(path), "--root", str(tmp_path / "r"), "--executor", "local"]) == 2
    assert "unknown resources ['gpus']" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_a_two_task_job_trains_with_ddp_from_submitits_ranks(tmp_path, monkeypatch):
    # A submitting shell that exported a rendezvous of its own (a stale port here): submitit's export() refuses to
    # replace it unless told to, which would fail every multi-task job submitted from such a shell.
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    path = sweep_file(tmp_path, 4, "{mf: {objective.name: meanflow}}")
    sweep = load_sweep(path)
    root = tmp_path / "root"
    (job,) = launcher.submit(sweep.runs, root, executor="local", resources={"timeout_min": 5, "tasks_per_node": 2,
                                                                           "cpus_per_task": 1}, name="t", log=lambda _: None)
    results = job.results()
    assert len(results) == 2 and all(r["finished"] for r in results)  # one result per task (rank)
    run = RunFolder(root / sweep.runs[0].name)
    saved = torch.load(run.checkpoints()[0][1], weights_only=False)
    assert run.is_done() and len(saved["rng"]) == 2, "both ranks' random streams were checkpointed"


@pytest.mark.fast
def test_the_requeue_budget_reaches_the_executor_and_the_batch_script(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "bin"  # submitit's SLURM executor wants an srun on PATH; this machine may have no SLURM
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    default = launcher.make_executor("local", tmp_path / "a", {}, "t")._executor
    assert default.max_num_timeout == launcher.DEFAULT_MAX_NUM_TIMEOUT == 20
    assert launcher.make_executor("local", tmp_path / "b", {"max_num_timeout": 0}, "t")._executor.max_num_timeout == 0
    path = tmp_path / "s.yaml"
    path.write_text("name: big\nresources: {timeout_min: 600, gpus_per_node: 8, max_num_timeout: 7}\n")
    assert main(["sweep", str(path), "--root", str(tmp_path / "r"), "--dry-run", "--executor", "slurm"]) == 0
    script = capsys.readouterr().out.split("# the batch script of the job array:\n")[1].splitlines()
    note = script.index("# requeued after a time limit at most 7 times (resources.max_num_timeout; submitit counts them)")
    assert script[note - 1].startswith("#SBATCH") and not any(line.startswith("#SBATCH") for line in script[note:])


@pytest.mark.fast
@pytest.mark.parametrize("bad", ["-1", "2.5", "'3'", "true"])
def test_a_bad_requeue_budget_is_refused_in_one_line(tmp_path, capsys, bad):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\nresources: {{max_num_timeout: {bad}}}\n")
    assert main(["sweep", str(path), "--root", str(tmp_path / "r"), "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resources.max_num_timeout must be a whole number of requeues >= 0, got " in err
    assert not (tmp_path / "r").exists()
