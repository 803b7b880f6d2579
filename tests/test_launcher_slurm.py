"""A sweep on a real SLURM cluster (loopback): one job array, one job preempted, requeued and resumed,
then the results aggregated. Uses the session's cluster from tests/slurm_fixtures.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from alphaflow.launch import executors as launcher
from alphaflow.launch.executors import run_inline
from alphaflow.launch.sweeps import load_sweep
from alphaflow.run.folder import RunFolder
import pytest

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

SWEEP = """name: slurm-test
base: {model: {name: DiT-N/2}, train: {steps: 200, batch_size: 8, log_every: 2, ckpt_every: 50, sample_every: 0,
       threads: 1}, sample: {num: 4}, data: {stats_samples: 16}}
variants: {fm: {objective.name: fm}, mf: {objective.name: meanflow}}
resources: {timeout_min: 10, cpus_per_task: 1, mem_gb: 1, partition: local, array_parallelism: 2}
"""


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_sweep_array_on_slurm_with_a_preemption(slurm_env, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP)
    sweep = load_sweep(path)
    root = tmp_path / "root"
    jobs = launcher.submit(sweep.runs, root, executor="slurm", resources=sweep.resources, name=sweep.name,
                           log=lambda _: None)
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1, "one job array"
    # what --dry-run --executor slurm prints is the script submitit submitted, apart from the requeue comment
    dry = launcher.sbatch_script(root, sweep.resources, sweep.name, len(sweep.runs)).splitlines()
    assert [line for line in dry if not line.startswith("# requeued")] == \
        Path(jobs[0].paths.submission_file).read_text().splitlines()
    mf_job, mf_run = next((j, RunFolder(root / r.name)) for j, r in zip(jobs, sweep.runs) if r.name.startswith("mf"))
    wait(lambda: mf_run.read_metrics() and mf_run.read_metrics()[-1]["step"] >= 20, 120, "the mf job to train")
    slurm_env.run("scancel", "--signal=USR2", mf_job.job_id)  # what SLURM sends before a time limit or preemption
    wait(lambda: all(RunFolder(root / r.name).is_done() for r in sweep.runs), 240, "both runs to finish")
    log = Path(mf_job.paths.stdout).read_text()
    stopped = int(log.split("stopped at step ")[1].split()[0])
    assert 20 <= stopped < 200 and f"from latest-{stopped:08d}.pt" in log, log[-1500:]
    assert [r["step"] for r in mf_run.read_metrics()] == list(range(2, 201, 2)), "nothing lost or repeated"
    run_inline([r for r in sweep.runs if r.name.startswith("mf")], tmp_path / "straight", log=lambda _: None)
    straight = RunFolder(tmp_path / "straight" / mf_run.root.name)
    a = torch.load(mf_run.checkpoints()[0][1], weights_only=False)["net"]
    b = torch.load(straight.checkpoints()[0][1], weights_only=False)["net"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the preempted and requeued run equals an uninterrupted one"
    assert json.loads((mf_run.root / "job.json").read_text())["executor"] == "slurm"
    lines: list[str] = []
    assert launcher.submit(sweep.runs, root, executor="slurm", resources=sweep.resources, name=sweep.name,
                           log=lines.append) == []
    assert lines == ["2 runs: 2 done", "nothing to submit"]
    from analysis.loading import load_runs
    from analysis.summary import summarize_runs

    results = load_runs(root)
    assert sorted(results.runs["status"]) == ["done", "done"] and not results.problems
    assert set(results.metrics.groupby("run", observed=True)["step"].max()) == {200}
    summary = summarize_runs(results)
    assert set(summary["cfg.objective.name"]) == {"fm", "meanflow"} and summary["final_loss_mse"].notna().all()
