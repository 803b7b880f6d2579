"""The executors of a sweep, one entry each in ``EXECUTORS``; the only module importing submitit.

    inline   train the runs one after another in this process (debugging, notebooks)
    local    submitit's local executor: one job array of processes on this machine
    slurm    submitit's SLURM executor: one job array, with the sweep file's ``resources``

Every executor asks ``alphaflow.run.folder.run_status`` (with the scheduler lookup ``scheduler_state``) what
state each run is in, skips done, pending and running runs (and failed ones, unless retrying them), and writes
config.json and run.json before a run starts.

Each submitit job is a ``TrainJob`` (a submitit ``Checkpointable``) that trains one run folder. On the
scheduler's signal (SIGUSR2 before a time limit or on preemption) submitit would call
``checkpoint()`` and exit from inside the signal handler, at an arbitrary point of the training
step. So the job swaps in a handler that only sets a flag; the trainer checks it at the next step
boundary, writes a checkpoint there, and then the job hands over to submitit's own handler, which
requeues it. The requeued job resumes from that checkpoint: nothing is lost or recomputed. submitit requeues a
job that reached its time limit at most ``resources.max_num_timeout`` times (``DEFAULT_MAX_NUM_TIMEOUT``);
preemptions do not count. With several tasks (DDP ranks) a signal to any one of them stops every rank at the
same step (the trainer reduces the flag across ranks), and rank 0 requeues the job whichever rank received it.
The ranks meet at the job's first node on a port derived from the job id (``rendezvous_port``), never at a
MASTER_PORT the submitting shell exported.

Two ``alphaflow sweep`` on one root: submission holds ``ROOT/.sweep.lock`` (``alphaflow.run.lock``), so the
second waits, then finds the first one's jobs pending or running and submits nothing twice; a trainer holds
its run folder's lock, so a run is never trained by two processes even when started by hand.

Bookkeeping on disk, next to the runs: ``ROOT/.submitit/`` holds submitit's pickles and logs
(%j_%t_log.out / .err); each run folder gets job.json and, after a failed attempt, error.txt
(``alphaflow.run.folder``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import submitit
import torch

from alphaflow.config import Config, config_hash, from_dict, to_dict
from alphaflow.run.errors import RunFailed, one_line
from alphaflow.models import build_for_data
from alphaflow.perf.memplan import data_shape
from alphaflow.run.folder import ERROR, STATES, RunFolder, SchedulerLookup, State, run_status
from alphaflow.run.lock import RunLocked, sweep_lock
from alphaflow.launch import resources as checks
from alphaflow.launch.cluster import probe_controller
from alphaflow.launch.prepare import prepare_run, restore, snapshot
from alphaflow.launch.resources import (DEFAULT_MAX_NUM_TIMEOUT, DEFAULT_RESOURCES, RESOURCES,  # noqa: F401 (the
                                        max_num_timeout)  # launcher's names too)
from alphaflow.launch.sweeps import SweepRun

# Keys given to the executor's constructor (AutoExecutor's ``<cluster>_max_num_timeout``), not to update_parameters.
_CONSTRUCTOR_RESOURCES = ("max_num_timeout",)
# MASTER_PORT of a job with several tasks: PORT_BASE + crc32(job id) % PORT_SPAN, i.e. 20000-32767, below Linux's
# default ephemeral range (32768-60999, net.ipv4.ip_local_port_range) from which outgoing connections take ports.
PORT_BASE, PORT_SPAN = 20000, 12768


class TrainJob(submitit.helpers.Checkpointable):
    """Train one run folder; ``spec`` = {"config": <config dict>, "run_dir": <path>}."""

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        from alphaflow.launch.training import train_run as train  # imported in the job process

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # several tasks: DDP ranks from submitit's view of the job
            export_rendezvous(env)
        stop = {"requested": False}
        requeue = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, lambda *_: stop.update(requested=True))
        run = RunFolder(spec["run_dir"])
        try:
            result = train(from_dict(spec["config"]), run.root, should_stop=lambda: stop["requested"])
        except RunLocked:
            raise  # another process trains this run: its folder is not this job's to mark as failed
        except Exception:
            if env.global_rank == 0:
                with contextlib.suppress(OSError):  # a full disk may refuse error.txt too; the log has it
                    run.write_error(traceback.format_exc()[-4000:])
            raise
        if not result.finished:  # every rank stopped at this step, whichever of them got the signal
            print(f"rank {env.global_rank}: stopped at step {result.step}", flush=True)
        if not result.finished and callable(requeue):  # submitit: checkpoint() → requeue → exit on rank 0 (it
            requeue(signal.SIGUSR2, None)             # requeues the job), a no-op on the others
        run.clear_error()
        return {"run": run.root.name, "step": result.step, "finished": result.finished}

    def checkpoint(self, spec: dict[str, Any]) -> submitit.helpers.DelayedSubmission:
        # The trainer has already written a checkpoint at the step boundary; resubmit the same run.
        return submitit.helpers.DelayedSubmission(TrainJob(), spec)


def rendezvous_port(job_id: str) -> int:
    """MASTER_PORT of the submitit job ``job_id`` ("<array job>_<task>" for an array task): the same on every task
    of the job and across its requeues, different between the tasks of an array that may share a node.
    ``zlib.crc32``, not ``hash()``: Python salts string hashes per process, and every rank must agree."""
    return PORT_BASE + zlib.crc32(job_id.encode()) % PORT_SPAN


def export_rendezvous(env: submitit.JobEnvironment) -> None:
    """Export the torchrun variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) of the submitit job ``env``.

    The port is ``rendezvous_port(env.job_id)``, set before submitit reads it: submitit's
    ``TorchDistributedEnvironment`` keeps a MASTER_PORT already in the environment, and sbatch and the local
    executor pass the submitting shell's environment on, so one exported there would be every array task's port
    (two tasks on one node then collide). ``overwrite=True``: submitit refuses to replace an inherited MASTER_ADDR
    otherwise. MASTER_ADDR is the job's first node (submitit's choice).
    """
    os.environ["MASTER_PORT"] = str(rendezvous_port(str(env.job_id)))
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def choose_executor(name: str) -> tuple[str, str]:
    """The ``EXECUTORS`` entry ``name`` names, and why: 'auto' → slurm only when a SLURM controller answers
    (``alphaflow.launch.cluster.probe_controller``), else local; any other name is taken as given."""
    if name == "auto":
        answered, why = probe_controller()
        return ("slurm", why) if answered else ("local", why)
    if name not in EXECUTORS:
        raise ValueError(f"--executor must be auto, {', '.join(EXECUTORS)}, got {name!r}")
    return name, "as asked"


def resolve_executor(name: str) -> str:
    """The ``EXECUTORS`` entry ``name`` names (``choose_executor`` without the reason)."""
    return choose_executor(name)[0]


def executor_parameters(resources: dict[str, Any]) -> dict[str, Any]:
    """Sweep-file resources → AutoExecutor keyword arguments; unknown keys and bad values are refused
    (``alphaflow.launch.resources``)."""
    merged = {**DEFAULT_RESOURCES, **checks.check_resources(resources)}
    return {RESOURCES[k]: v for k, v in merged.items() if v is not None and k not in _CONSTRUCTOR_RESOURCES}


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
    """The sweep file's resources, checked, with ``signal_delay_s`` filled in from the runs and ``max_num_timeout``
    with ``DEFAULT_MAX_NUM_TIMEOUT`` when the file leaves them out."""
    out = {**checks.check_resources(resources), "max_num_timeout": max_num_timeout(resources)}
    if resources.get("signal_delay_s") is not None:
        return out
    return {**out, "signal_delay_s": signal_delay_s(runs)}


def make_executor(kind: str, root: Path, resources: dict[str, Any], name: str) -> submitit.AutoExecutor:
    """submitit's executor ``kind`` (local or slurm) with the sweep file's ``resources``; the requeue budget
    (``max_num_timeout``) is an argument of the executor itself, the rest are its parameters."""
    executor = submitit.AutoExecutor(folder=root / ".submitit", cluster=kind,
                                     **{f"{kind}_max_num_timeout": max_num_timeout(resources)})
    executor.update_parameters(name=name, **executor_parameters(resources))
    return executor


class _ScriptOnlySlurm(submitit.SlurmExecutor):
    """submitit's SLURM executor, built without looking for ``srun``: it only writes batch scripts (``--dry-run``,
    ``--smoke``), so a laptop without SLURM reads the script the cluster would get. It never submits."""

    @classmethod
    def affinity(cls) -> int:
        return 2  # submitit's constructor refuses an executor whose affinity is not positive (no srun)


def sbatch_script(root: Path, resources: dict[str, Any], name: str, count: int) -> str:
    """The batch script a SLURM submission of ``count`` array tasks would use (for --dry-run); needs no SLURM.

    Written by submitit itself (its SLURM executor's private script writer) from the parameters ``make_executor``
    gives AutoExecutor, translated as AutoExecutor translates them (generic names → SLURM's, ``slurm_*`` → as
    they are), so it is the real thing: byte for byte the script submitit submits, with one comment line added
    (the requeue budget).
    """
    slurm = _ScriptOnlySlurm(root / ".submitit", max_num_timeout=max_num_timeout(resources))
    params = {"name": name, **executor_parameters(resources)}
    own = {k[len("slurm_"):]: v for k, v in params.items() if k.startswith("slurm_")}
    slurm.update_parameters(**slurm._convert_parameters({k: v for k, v in params.items() if not k.startswith("slurm_")}),
                            **own)
    slurm.parameters["map_count"] = count
    # the command submitit puts in the script: this interpreter (shlex-quoted) running submitit on ROOT/.submitit
    lines = slurm._make_submission_file_text(slurm._submitit_command_str, "<uid>").split("\n")
    last = max((i for i, line in enumerate(lines) if line.startswith("#SBATCH")), default=0)
    note = (f"# requeued after a time limit at most {slurm.max_num_timeout} times (resources.max_num_timeout; "
            "submitit counts them)")
    return "\n".join([*lines[:last + 1], note, *lines[last + 1:]])


# ------------------------------------------------------------------ the scheduler and the runs to start

def scheduler_state(root: Path) -> SchedulerLookup:
    """Ask the scheduler about a job id: SLURM through sacct; a local job through submitit when this process
    submitted it, else by its controller process (the local job id is that pid) on this host."""
    def state(executor: str, job_id: str) -> str:
        folder = root / ".submitit"
        job: submitit.Job[object]  # only its state is read
        if executor != "slurm":
            job = submitit.LocalJob(folder, job_id)  # submitit.local.local.LocalJob, as submitit exports it
            if job._process is None:  # submitted by another process: submitit cannot tell
                return _local_controller_state(folder, job_id)
        else:
            job = submitit.SlurmJob(folder, job_id)
        try:
            return str(job.state).upper()
        except Exception:  # a scheduler that forgot the job
            return ""
    return state


def _local_controller_state(folder: Path, job_id: str) -> str:
    """RUNNING while the controller of local job ``job_id`` (the id is its pid) runs on this host and the job has
    no result yet; "" otherwise, and then the run folder's own files and lock decide."""
    if not job_id.isdigit() or (folder / f"{job_id}_0_result.pkl").exists():
        return ""
    try:  # a submitit controller, not an unrelated process that got the pid later
        return "RUNNING" if b"submitit" in Path(f"/proc/{job_id}/cmdline").read_bytes() else ""
    except OSError:
        return ""


def _states(runs: list[SweepRun], root: Path) -> list[str]:
    lookup = scheduler_state(root)
    return [run_status(root / r.name, lookup).state for r in runs]


def run_inline(runs: list[SweepRun], root: str | Path, *, name: str = "", resources: dict[str, Any] | None = None,
               retry_failed: bool = True, log: Callable[[str], None] = print) -> list[Any]:
    """Train every run under ``root`` one after another in this process; returns [] (there are no jobs).

    Done, pending and running runs are skipped; a failed run is trained again whatever ``retry_failed`` says
    (this is how one debugs it). A run that fails gets its error.txt (the state 'failed') and the others go on,
    as under submitit; then ``RunFailed`` names the failed runs. ``name`` and ``resources`` are not used here.
    """
    from alphaflow.launch.training import train_run as train  # the trainer is heavy; imported here

    root = Path(root)
    states = _states(runs, root)
    n = Counter(states)
    others = "".join(f", {n[s]} {s}" for s in STATES if n[s] and s not in (State.DONE, State.INCOMPLETE, State.NEW))
    log(f"{len(runs)} runs: {n[State.DONE]} done, {n[State.INCOMPLETE]} incomplete, {n[State.NEW]} new{others}")
    failed = []
    for r, state in zip(runs, states):
        state = run_status(root / r.name, scheduler_state(root)).state  # another sweep may have started it since
        if state in (State.DONE, State.PENDING, State.RUNNING):
            continue
        log(f"--- {r.name} ({state})")
        run = prepare_run(root, r)
        try:
            train(r.config, run.root, log=log)
        except RunLocked as exc:  # started by another process between the check and the lock: it is that one's
            log(f"skipped: {exc}")
        except Exception as exc:  # as a local or SLURM job would: error.txt, the state 'failed', the next run
            with contextlib.suppress(OSError):  # a full disk may refuse error.txt too; the line below says why
                run.write_error(traceback.format_exc()[-4000:])
            log(f"failed: {r.name}: {one_line(exc)}")
            failed.append(r.name)
    if failed:
        raise RunFailed(f"{len(failed)} of {len(runs)} runs failed ({', '.join(failed)}); each folder's error.txt "
                        f"says why, the other runs went on; fix the cause and run the same command again")
    return []


_COUNTED = (State.DONE, State.INCOMPLETE, State.NEW, State.EMPTY, State.PENDING, State.RUNNING, State.FAILED)


def submit_array(kind: str, runs: list[SweepRun], root: str | Path, *, name: str, resources: dict[str, Any],
                 retry_failed: bool = False, log: Callable[[str], None] = print) -> list[Any]:
    """Submit every run that is not done, pending, running (or failed, unless ``retry_failed``) as one submitit
    job array of executor ``kind`` (local or slurm); returns the jobs."""
    root = Path(root)
    states = _states(runs, root)
    n = Counter(states)
    log(f"{len(runs)} runs: " + ", ".join(f"{n[s]} {s}" for s in _COUNTED if n[s]))
    skip = {State.DONE, State.PENDING, State.RUNNING} | (set() if retry_failed else {State.FAILED})
    todo = [r for r, state in zip(runs, states) if state not in skip]
    if not todo:
        log("nothing to submit")
        return []
    before = [snapshot(root / r.name) for r in todo]
    for r in todo:
        prepare_run(root, r)
    parallel = resources.get("array_parallelism")
    if kind == "local" and len(todo) > 1 and parallel is not None and parallel < len(todo):
        log(f"warning: submitit's local executor starts all {len(todo)} jobs at once; resources.array_parallelism="
            f"{parallel} limits only SLURM arrays (submitit issue #1685). To share one machine, run "
            f"`alphaflow sweep FILE --executor inline` in {parallel} shells: each run's lock keeps them apart.")
    said = io.StringIO()  # submitit prints sbatch's complaint on stderr before raising it: one line says it all
    try:
        with contextlib.redirect_stderr(said):
            ex = make_executor(kind, root, resources, name)
            jobs = ex.map_array(TrainJob(), [{"config": to_dict(r.config), "run_dir": str(root / r.name)} for r in todo])
    except Exception as exc:
        for snap in before:  # no job will train these: their folders go back to what they were
            restore(snap)
        why = one_line(exc) if str(exc).strip() else (said.getvalue().strip().splitlines() or [type(exc).__name__])[0]
        raise RunFailed(f"the {kind} submission of {len(todo)} run(s) failed ({why}); nothing was submitted and "
                        f"their folders under {root} are as before") from exc
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for r, job in zip(todo, jobs):
        RunFolder(root / r.name).write_job({"job_id": job.job_id, "executor": kind, "submitted": stamp})
    log(f"submitted {len(jobs)} run(s) to {kind} as one job array: {jobs[0].job_id.split('_')[0]}")
    return jobs


@dataclass(frozen=True)
class Executor:
    """An entry of ``EXECUTORS``: ``run(runs, root, name=, resources=, retry_failed=, log=)`` starts the runs
    that need it and returns their submitit jobs ([] when they ran in this process)."""

    name: str
    run: Callable[..., list[Any]]
    about: str


EXECUTORS: dict[str, Executor] = {e.name: e for e in (
    Executor("inline", run_inline, "train one after another in this process"),
    Executor("local", partial(submit_array, "local"), "submitit's local executor: a job array of local processes"),
    Executor("slurm", partial(submit_array, "slurm"), "submitit's SLURM executor: one job array"),
)}


def submit(runs: list[SweepRun], root: str | Path, *, executor: str, resources: dict[str, Any], name: str,
           retry_failed: bool = False, log: Callable[[str], None] = print) -> list[Any]:
    """Run ``runs`` under ``root`` with the executor ``executor`` names (see ``resolve_executor``)."""
    entry = EXECUTORS[resolve_executor(executor)]
    if entry.name == "inline":  # each run's own lock keeps two inline sweeps on one root apart
        return entry.run(runs, root, name=name, resources=resources, retry_failed=retry_failed, log=log)
    with sweep_lock(root, say=log):  # a second sweep on this root waits, then sees these submissions
        return entry.run(runs, root, name=name, resources=resources, retry_failed=retry_failed, log=log)


def wait(jobs: list[Any], runs: list[SweepRun], root: str | Path, *, every: float = 30.0,
         log: Callable[[str], None] = print) -> int:
    """Block until every job has ended, logging one progress line per ``every`` seconds (steps done out
    of the total over all runs, and each run's step); returns the number of runs that did not finish."""
    root, start = Path(root), time.monotonic()
    total = sum(r.config.train.steps for r in runs)

    def line() -> str:
        steps = {r.name: RunFolder(root / r.name).last_step() for r in runs}
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
        tail = RunFolder(root / name).read_error(1)
        log(f"run {name} did not finish: {f'no {ERROR}' if tail is None else tail}")
    return len(failed)
