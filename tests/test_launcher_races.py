"""Submitit's local executor under the races a cluster brings: a preemption signal that reaches only rank 0 of a
two-task job, and two `alphaflow sweep` commands started at once on one root."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from alphaflow.launch import executors as launcher
from alphaflow.launch.sweeps import load_sweep
from alphaflow.run.folder import RunFolder, read_checkpoint
from alphaflow.run.lock import sweep_lock
from test_launcher import sweep_file, task_pids
import pytest

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

REPO = Path(__file__).resolve().parents[1]
TWO_TASKS = {"timeout_min": 5, "tasks_per_node": 2, "cpus_per_task": 1}


def global_rank(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in env if e.startswith(b"SUBMITIT_LOCAL_GLOBALID=")).split(b"=")[1])


def test_a_signal_to_rank_0_alone_stops_both_ranks_at_one_step_and_the_requeued_job_resumes_exactly(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, 200, "{mf: {objective.name: meanflow}}"))
    root = tmp_path / "root"
    (job,) = launcher.submit(sweep.runs, root, executor="local", resources=TWO_TASKS, name="t", log=lambda _: None)
    run = RunFolder(root / sweep.runs[0].name)
    deadline = time.time() + 180
    while not run.read_metrics() or run.read_metrics()[-1]["step"] < 20:
        assert time.time() < deadline and job.state == "RUNNING", job.state
        time.sleep(0.2)
    pids = task_pids(job._process.pid)
    assert len(pids) == 2, pids
    (rank0,) = [pid for pid in pids if global_rank(pid) == 0]
    os.kill(rank0, signal.SIGUSR2)  # what submitit gets on clusters that signal only the batch step's first task
    results = job.results()
    assert all(r["finished"] for r in results)
    logs = [Path(job.paths.stdout).parent.joinpath(f"{job.job_id}_{k}_log.out").read_text() for k in (0, 1)]
    stopped = [re.findall(r"rank \d: stopped at step (\d+)", log) for log in logs]
    assert len(stopped[0]) == 1 and stopped[0] == stopped[1], stopped  # both ranks, the same step, once
    step = int(stopped[0][0])
    assert f"resuming {run.root} from latest-{step:08d}.pt" in logs[0], "one checkpoint at that step, resumed from"
    assert [r["step"] for r in run.read_metrics()] == list(range(2, 201, 2)), "every log tick exactly once"

    straight_root = tmp_path / "straight"
    (again,) = launcher.submit(sweep.runs, straight_root, executor="local", resources=TWO_TASKS, name="t",
                               log=lambda _: None)
    again.results()
    a = read_checkpoint(run.checkpoints()[0][1])
    b = read_checkpoint(RunFolder(straight_root / sweep.runs[0].name).checkpoints()[0][1])
    for key in ("net", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f"{key}: requeued ≠ uninterrupted"


def test_two_sweeps_started_at_once_on_one_root_submit_every_run_once(tmp_path):
    path = sweep_file(tmp_path, 40, "{fm: {objective.name: fm}, mf: {objective.name: meanflow}}")
    root = tmp_path / "root"
    cmd = [sys.executable, "-m", "alphaflow", "sweep", str(path), "--executor", "local", "--root", str(root)]
    logs = [tmp_path / f"sweep{k}.txt" for k in range(2)]
    held = sweep_lock(root, say=lambda _: None).acquire()  # both start while the root is busy, then race for it
    try:
        procs = [subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT) for log in logs]
        deadline = time.time() + 120
        while not all("waiting for" in log.read_text() for log in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), [g.read_text() for g in logs]
            time.sleep(0.2)
    finally:
        held.release()
    for p in procs:
        p.wait(timeout=180)
    outs = [log.read_text() for log in logs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(f"waiting for {root} to be released by pid {os.getpid()}" in out for out in outs), outs
    submitted = [int(m) for out in outs for m in re.findall(r"submitted (\d+) run\(s\)", out)]
    assert submitted == [2], outs  # one of the two submitted both runs; the other saw them running
    assert any("2 runs: 2 running" in out and "nothing to submit" in out for out in outs), outs
    sweep = load_sweep(path)
    deadline = time.time() + 180
    while not all(RunFolder(root / r.name).is_done() for r in sweep.runs):
        assert time.time() < deadline, "the runs did not finish"
        time.sleep(0.5)
    for r in sweep.runs:
        assert [row["step"] for row in RunFolder(root / r.name).read_metrics()] == list(range(2, 41, 2)), r.name
