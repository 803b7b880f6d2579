"""Submit a sweep through submitit as one job array, locally or on SLURM. The only module importing submitit.

Each job is a ``TrainJob`` (a submitit ``Checkpointable``) that trains one run folder. On the
scheduler's signal (SIGUSR2 before a time limit or on preemption) submitit would call
``checkpoint()`` and exit from inside the signal handler, at an arbitrary point of the training
step. So the job swaps in a handler that only sets a flag; the trainer checks it at the next step
boundary, writes a checkpoint there, and then the job hands over to submitit's own handler, which
requeues it. The requeued job resumes from that checkpoint: nothing is lost or recomputed.

Bookkeeping on disk, next to the runs:
    ROOT/.submitit/             submitit's pickles and logs (%j_%t_log.out / .err)
    ROOT/<run>/job.json         {"job_id", "executor", "submitted"} of the latest submission
    ROOT/<run>/error.txt        the tail of the traceback of a failed attempt
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit
import torch

from alphaflow.config import Config, from_dict, to_dict
from alphaflow.perf.memplan import data_shape
from alphaflow.models import build_for_data
from alphaflow.runfolder import RunFolder, atomic_write_bytes
from alphaflow.launch.sweeps import SweepRun

# Sweep-file ``resources`` keys → submitit AutoExecutor parameters.
RESOURCES = {
    "timeout_min": "timeout_min", "nodes": "nodes", "gpus_per_node": "gpus_per_node",
    "tasks_per_node": "tasks_per_node", "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb",
    "partition": "slurm_partition", "array_parallelism": "slurm_array_parallelism",
    "signal_delay_s": "slurm_signal_delay_s",  # SIGUSR2 this many seconds before the time limit
    "slurm": "slurm_additional_parameters",  # free-form: account, qos, constraint, ...
}
DEFAULT_RESOURCES = {"timeout_min": 60, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 2}


class TrainJob(submitit.helpers.Checkpointable):
    """Train one run folder; ``spec`` = {"config": <config dict>, "run_dir": <path>}."""

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        from alphaflow.evaluate.callbacks import train_with_evaluation as train  # imported in the job process

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # several tasks: DDP ranks from submitit's view of the job
            # overwrite: the submitting shell may have exported MASTER_ADDR/PORT of its own (export refuses then)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        stop = {"requested": False}
        requeue = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, lambda *_: stop.update(requested=True))
        run = RunFolder(spec["run_dir"])
        try:
            result = train(from_dict(spec["config"]), run.root, should_stop=lambda: stop["requested"])
        except Exception:
            if env.global_rank == 0:
                atomic_write_bytes(run.root / "error.txt", traceback.format_exc()[-4000:].encode())
            raise
        if stop["requested"] and not result.finished and callable(requeue):
            requeue(signal.SIGUSR2, None)  # submitit: checkpoint() → requeue → exit
        (run.root / "error.txt").unlink(missing_ok=True)
        return {"run": run.root.name, "step": result.step, "finished": result.finished}

    def checkpoint(self, spec: dict[str, Any]) -> submitit.helpers.DelayedSubmission:
        # The trainer has already written a checkpoint at the step boundary; resubmit the same run.
        return submitit.helpers.DelayedSubmission(TrainJob(), spec)


def resolve_executor(name: str) -> str:
    """'auto' → slurm when ``sbatch`` is on PATH, else local."""
    if name not in ("auto", "local", "slurm"):
        raise ValueError(f"--executor must be auto, local or slurm, got {name!r}")
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    return name


def executor_parameters(resources: dict[str, Any]) -> dict[str, Any]:
    """Sweep-file resources → AutoExecutor keyword arguments; unknown keys are refused."""
    unknown = set(resources) - set(RESOURCES)
    if unknown:
        raise ValueError(f"unknown resources {sorted(unknown)}; expected some of {sorted(RESOURCES)}")
    merged = {**DEFAULT_RESOURCES, **resources}
    return {RESOURCES[k]: v for k, v in merged.items() if v is not None}


# Write speed assumed for a checkpoint on a slow shared file system, and the floor of the signal delay.
CHECKPOINT_WRITE_BYTES_PER_S = 100e6
MIN_SIGNAL_DELAY_S = 120


def checkpoint_bytes(cfg: Config) -> int:
    """Size of one training checkpoint of ``cfg``: fp32 weights, EMA and Adam's two moments (16 bytes per
    parameter), from the model built on the meta device (nothing allocated) for the data's planned shape
    (``alphaflow.perf.memplan.data_shape``: latents as ImageNet's)."""
    shape, classes = data_shape(cfg)
    with torch.device("meta"):
        net = build_for_data(cfg.model.name, shape, classes)
    return 16 * sum(p.numel() for p in net.parameters())


def signal_delay_s(runs: list[SweepRun]) -> int:
    """The default ``resources.signal_delay_s``: time to finish the step, then write the largest checkpoint of the
    sweep twice over at ``CHECKPOINT_WRITE_BYTES_PER_S`` (submitit's own default of 90 s is less than an XL/2
    checkpoint of 10.8 GB needs on a 100 MB/s file system), and never less than ``MIN_SIGNAL_DELAY_S``."""
    largest = max((checkpoint_bytes(r.config) for r in runs), default=0)
    return max(MIN_SIGNAL_DELAY_S, 60 + math.ceil(2 * largest / CHECKPOINT_WRITE_BYTES_PER_S))


def with_defaults(resources: dict[str, Any], runs: list[SweepRun]) -> dict[str, Any]:
    """The sweep file's resources with ``signal_delay_s`` filled in from the runs when the file leaves it out."""
    given = resources.get("signal_delay_s")
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise ValueError(f"resources.signal_delay_s must be a whole number of seconds >= 1, got {given!r}")
        return dict(resources)
    return {**resources, "signal_delay_s": signal_delay_s(runs)}


def make_executor(kind: str, root: Path, resources: dict[str, Any], name: str) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=root / ".submitit", cluster=kind)
    executor.update_parameters(name=name, **executor_parameters(resources))
    return executor


def sbatch_script(root: Path, resources: dict[str, Any], name: str, count: int) -> str:
    """The batch script a SLURM submission of ``count`` array tasks would use (for --dry-run).

    Built by submitit itself (its SLURM executor's private script writer), so it is the real thing.
    """
    executor = make_executor("slurm", root, resources, name)
    slurm = executor._executor
    slurm.parameters["map_count"] = count
    return slurm._make_submission_file_text("python -u -m submitit.core._submit <folder>", "<uid>")


# ------------------------------------------------------------------ state of runs on disk and in the scheduler

@dataclass
class RunStatus:
    name: str
    state: str          # new | pending | running | incomplete | done | failed
    step: int
    job_id: str | None
    detail: str = ""


def _last_step(run: RunFolder) -> int:
    rows = run.read_metrics()
    return rows[-1]["step"] if rows else 0


def run_status(root: Path, name: str, scheduler_state: Callable[[str, str], str] | None = None) -> RunStatus:
    run = RunFolder(root / name)
    job = json.loads((run.root / "job.json").read_text()) if (run.root / "job.json").exists() else {}
    job_id = job.get("job_id")
    if run.is_done():
        return RunStatus(name, "done", _last_step(run), job_id)
    sched = scheduler_state(job["executor"], job_id) if job_id and scheduler_state else ""
    if sched in ("PENDING", "REQUEUED", "CONFIGURING"):
        return RunStatus(name, "pending", _last_step(run), job_id, sched)
    if sched in ("RUNNING", "COMPLETING"):
        return RunStatus(name, "running", _last_step(run), job_id, sched)
    if (run.root / "error.txt").exists():
        tail = (run.root / "error.txt").read_text().strip().splitlines()[-1:]
        return RunStatus(name, "failed", _last_step(run), job_id, tail[0] if tail else "")
    if run.config_path.exists():
        return RunStatus(name, "incomplete", _last_step(run), job_id, sched)
    return RunStatus(name, "new", 0, job_id)


def scheduler_state(root: Path) -> Callable[[str, str], str]:
    """Ask the scheduler about a job id (SLURM through sacct; local jobs from submitit's files)."""
    def state(executor: str, job_id: str) -> str:
        folder = root / ".submitit"
        job = submitit.SlurmJob(folder, job_id) if executor == "slurm" else submitit.local.local.LocalJob(folder, job_id)
        try:
            return str(job.state).upper()
        except Exception:  # a scheduler that forgot the job, or a local job from another process
            return ""
    return state


# ------------------------------------------------------------------ submission

def submit(runs: list[SweepRun], root: str | Path, *, executor: str, resources: dict[str, Any], name: str,
           retry_failed: bool = False, log: Callable[[str], None] = print) -> list[Any]:
    """Submit every run that is not done, pending, running (or failed, unless ``retry_failed``) as one array."""
    root = Path(root)
    kind = resolve_executor(executor)
    statuses = [run_status(root, r.name, scheduler_state(root)) for r in runs]
    counts = {s: sum(st.state == s for st in statuses) for s in ("done", "incomplete", "new", "pending", "running", "failed")}
    log(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    skip = {"done", "pending", "running"} | (set() if retry_failed else {"failed"})
    todo = [r for r, st in zip(runs, statuses) if st.state not in skip]
    if not todo:
        log("nothing to submit")
        return []
    for r in todo:
        run = RunFolder(root / r.name)
        run.write_config(to_dict(r.config))  # the run exists (and is 'incomplete') from submission on
        (run.root / "error.txt").unlink(missing_ok=True)
    ex = make_executor(kind, root, resources, name)
    jobs = ex.map_array(TrainJob(), [{"config": to_dict(r.config), "run_dir": str(root / r.name)} for r in todo])
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for r, job in zip(todo, jobs):
        atomic_write_bytes(root / r.name / "job.json",
                           json.dumps({"job_id": job.job_id, "executor": kind, "submitted": stamp}).encode())
    log(f"submitted {len(jobs)} run(s) to {kind} as one job array: {jobs[0].job_id.split('_')[0]}")
    return jobs


def wait(jobs: list[Any], runs: list[SweepRun], root: str | Path, *, every: float = 30.0,
         log: Callable[[str], None] = print) -> int:
    """Block until every job has ended, logging one progress line per ``every`` seconds (steps done out
    of the total over all runs, and each run's step); returns the number of runs that did not finish."""
    root, start = Path(root), time.monotonic()
    total = sum(r.config.train.steps for r in runs)

    def line() -> str:
        steps = {r.name: _last_step(RunFolder(root / r.name)) for r in runs}
        done = sum(RunFolder(root / r.name).is_done() for r in runs)
        elapsed = time.monotonic() - start
        per_run = " ".join(f"{r.name.rsplit('-', 1)[0]}:{steps[r.name]}" for r in runs)
        return (f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {done}/{len(runs)} runs done, "
                f"{100 * sum(steps.values()) / max(total, 1):.0f}% of steps | {per_run}")

    while not all(job.done() for job in jobs):
        log(line())
        deadline = time.monotonic() + every
        while time.monotonic() < deadline and not all(job.done() for job in jobs):
            time.sleep(min(1.0, every))
    log(line())
    failed = [r.name for r in runs if not RunFolder(root / r.name).is_done()]
    for name in failed:
        err = root / name / "error.txt"
        tail = err.read_text().strip().splitlines()[-1:] if err.exists() else ["no error.txt"]
        log(f"run {name} did not finish: {tail[0] if tail else ''}")
    return len(failed)

