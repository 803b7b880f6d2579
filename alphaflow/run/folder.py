"""The run-folder format: the one definition the trainer, the launcher, evaluation and analysis read and write.

    RUN_DIR/
      config.json            the resolved config, written first
      run.json               {"sweep", "variant", "seed", "config_hash"}: written when a sweep starts the run
      metrics.jsonl          one JSON object per log tick (``step`` always present)
      checkpoints/
        latest-00001000.pt   rolling: the two most recent are kept, older ones deleted (each with the checksums
                             of its tensors, checked when it is read: ``alphaflow.run.files.read_checkpoint``)
        step-00010000.pt     permanent keeps (train.keep_every)
      samples/
        step-00001000-nfe1.png   EMA sample grids
      probes.jsonl           offline gradient probes, one row per (checkpoint, probe settings)
      eval.jsonl             ``alphaflow eval``: one row per (step, NFE, sampler, metric)
      job.json               {"job_id", "executor", "submitted"} of the latest submission
      init.json              {"init_from", "checkpoint", "step"}: a run started from train.init_from's weights
      wandb_id.txt           the wandb run this folder logs to (train.trackers with wandb)
      error.txt              the traceback tail of a failed attempt
      DONE                   written last, holds a short JSON summary
      .lock                  held by the one process training the run (``alphaflow.run.lock``)

Every file is written atomically (temporary name, then rename), so a crash leaves either the
old file or the new one, never half of one. The JSONL files are append-only; a torn last line
(a crash mid-write) is skipped on read (``scan_jsonl`` counts it) and cut off when a run resumes
(``alphaflow.train.startup``: also what becomes of a damaged line before it, and of a kill's temporaries).

The state of a run (``run_status``; ``State``), the same for ``alphaflow sweep --status``, the
executors and ``analysis``:

    new         no folder
    empty       a folder with none of config.json, a metrics row, error.txt, a failed job.json, DONE
    pending     the scheduler queues its latest job (PENDING, REQUEUED, CONFIGURING)
    running     a trainer holds the folder's lock (``alphaflow.run.lock``: any executor, any host), or the
                scheduler runs its latest job (RUNNING, COMPLETING)
    failed      error.txt exists, or job.json records a failed state (``FAILED_STATES``; not TIMEOUT or
                PREEMPTED, which resume)
    incomplete  config.json or a metrics row, and none of the above (stopped, preempted, to be resumed)
    done        DONE exists; this wins over everything else

pending needs a scheduler lookup (without one a queued run reads as incomplete); a training run reads as
running through its lock with or without one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from alphaflow.run.files import (CheckpointUnreadable, append_jsonl, atomic_copy, atomic_write_bytes,  # noqa: F401
                             read_checkpoint, read_json, read_json_object, read_jsonl, save_torch_atomic, scan_jsonl,
                             stale_temporaries, with_checksum)
from alphaflow.run.errors import format_bytes
from alphaflow.run.lock import lock_holder, process_alive

CONFIG, METRICS, CHECKPOINTS, SAMPLES, DONE = "config.json", "metrics.jsonl", "checkpoints", "samples", "DONE"
INIT = "init.json"  # where a run started from train.init_from came from (alphaflow.train.initialise)
WANDB_ID = "wandb_id.txt"  # the wandb run a resumed or requeued run continues (alphaflow.train.trackers)
PROBES, EVAL, JOB, ERROR, RUN_INFO = "probes.jsonl", "eval.jsonl", "job.json", "error.txt", "run.json"
FILES = (CONFIG, RUN_INFO, METRICS, PROBES, EVAL, JOB, ERROR, DONE)  # every file of a run folder (not the folders)
_CKPT = re.compile(r"^(latest|step)-(\d{8})\.pt$")
ROLLING_KEPT = 2


class State:
    """The words for the state of a run (see the module docstring); plain strings."""

    NEW, EMPTY, PENDING, RUNNING = "new", "empty", "pending", "running"
    INCOMPLETE, DONE, FAILED = "incomplete", "done", "failed"


STATES = (State.NEW, State.EMPTY, State.PENDING, State.RUNNING, State.INCOMPLETE, State.DONE, State.FAILED)
PENDING_STATES = {"PENDING", "REQUEUED", "CONFIGURING"}  # scheduler words read as pending
RUNNING_STATES = {"RUNNING", "COMPLETING"}  # ... and as running
FAILED_STATES = {"FAILED", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "ERROR"}  # job.json "state"
SchedulerLookup = Callable[[str, str], str]  # (executor, job id) → the scheduler's state word, "" if unknown


class _PathAttribute(Protocol):  # what ``_file`` makes, as mypy sees it (a ``property`` at run time)
    def __get__(self, folder: RunFolder, owner: type | None = None, /) -> Path: ...


def _file(name: str) -> _PathAttribute:
    """A read-only ``RunFolder`` property: the path of ``name`` inside the run folder."""
    def path(self: RunFolder) -> Path:
        return self.root / name
    return property(path, doc=f"RUN_DIR/{name}")


@dataclass
class RunFolder:
    """Paths and atomic I/O for one run. Creating the object creates nothing on disk."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    config_path, info_path = _file(CONFIG), _file(RUN_INFO)
    metrics_path, probes_path, eval_path = _file(METRICS), _file(PROBES), _file(EVAL)
    job_path, error_path, done_path = _file(JOB), _file(ERROR), _file(DONE)
    checkpoint_dir, samples_dir = _file(CHECKPOINTS), _file(SAMPLES)

    def sample_path(self, step: int, nfe: int, suffix: str = ".png") -> Path:
        return self.samples_dir / f"step-{step:08d}-nfe{nfe}{suffix}"

    # ------------------------------------------------------------------ config and run.json
    def read_config(self) -> dict[str, Any] | None:
        """config.json as written; None if there is none. One that is not a JSON object raises ``UsageError``
        naming the file."""
        return read_json_object(self.config_path, "a valid run config", fix="Restore it, or delete it (training "
                                "then checks its command against the newest checkpoint's config and writes it again)")

    def write_config(self, config: dict[str, Any], normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                     accept: Callable[[dict[str, Any], list[str]], bool] | None = None) -> None:
        """Write config.json, or check it matches the one already there (a resume must not change the run).

        ``normalize`` maps the stored dict to today's form before comparing (the trainer passes the config's
        own loader, so a run written by an earlier version of the config schema resumes); the file is kept.
        A difference raises ``ValueError`` unless ``accept(stored, differing dotted keys)`` says yes: then
        ``config`` replaces the stored one (the trainer's rules: ``alphaflow.train.startup``)."""
        existing = self.read_config()
        if existing is not None and normalize is not None:
            try:
                existing = normalize(existing)
            except ValueError:
                pass  # not a config today's schema reads: compared as stored, so the difference is reported
        diff = sorted(_flat_diff(existing, config)) if existing is not None and existing != config else []
        if diff and existing is not None and not (accept is not None and accept(existing, diff)):
            raise ValueError(f"{self.config_path} holds a different config; resuming would mix two runs. "
                             f"Differing keys: {', '.join(diff[:10])}. Use another --out, or delete the folder.")
        if existing is None or diff:
            atomic_write_bytes(self.config_path, (json.dumps(config, indent=2) + "\n").encode(), what="the config")

    def read_info(self, problems: list[str] | None = None) -> dict[str, Any]:
        """run.json ({} if absent or unreadable, which is reported to ``problems``)."""
        info = read_json(self.info_path, problems)
        return info if isinstance(info, dict) else {}

    def write_info(self, *, sweep: str, variant: str, seed: int, config_hash: str, baseline: str = "") -> None:
        """Write run.json: which sweep, variant (the name without seed and hash) and seed this run is, and the
        sweep's baseline variant (what the report compares the variants with)."""
        info = {"sweep": sweep, "variant": variant, "seed": seed, "config_hash": config_hash,
                **({"baseline": baseline} if baseline else {})}
        atomic_write_bytes(self.info_path, (json.dumps(info) + "\n").encode())

    # ------------------------------------------------------------------ JSONL files
    def append_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, row, what=f"the metrics row of step {row.get('step')}")

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete rows; a torn or garbled line is skipped."""
        return read_jsonl(self.metrics_path)

    def last_step(self) -> int:
        """The ``step`` of the last metrics row; 0 if there is none."""
        rows = self.read_metrics()
        return rows[-1]["step"] if rows else 0

    def append_probes(self, row: dict[str, Any]) -> None:
        append_jsonl(self.probes_path, row, what=f"a probe row of step {row.get('step')}")

    def read_probes(self) -> list[dict[str, Any]]:
        return read_jsonl(self.probes_path)

    def truncate_metrics(self, step: int) -> int:
        """Keep only rows with row['step'] <= step (and no torn line); returns how many were dropped."""
        rows, skipped = scan_jsonl(self.metrics_path)
        kept = [json.dumps(r) for r in rows if r["step"] <= step]
        dropped = len(rows) - len(kept) + skipped
        if dropped:
            atomic_write_bytes(self.metrics_path, "".join(line + "\n" for line in kept).encode())
        return dropped

    # ------------------------------------------------------------------ launcher bookkeeping
    def read_job(self, problems: list[str] | None = None) -> dict[str, Any]:
        """job.json ({} if absent or unreadable, which is reported to ``problems``)."""
        job = read_json(self.job_path, problems)
        return job if isinstance(job, dict) else {}

    def write_init(self, record: dict[str, Any]) -> None:
        """init.json: where a run started from ``train.init_from`` came from (``alphaflow.train.initialise``)."""
        atomic_write_bytes(self.root / INIT, (json.dumps(record) + "\n").encode(), what=INIT)

    def write_job(self, job: dict[str, Any]) -> None:
        atomic_write_bytes(self.job_path, json.dumps(job).encode())

    def read_error(self, lines: int = 1) -> str | None:
        """The last ``lines`` lines of error.txt ("" if it is empty); None if there is none."""
        try:
            text = self.error_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return None
        return "\n".join(line.rstrip() for line in text.strip().splitlines()[-lines:])

    def write_error(self, text: str) -> None:
        atomic_write_bytes(self.error_path, text.encode())

    def clear_error(self) -> None:
        self.error_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint, newest first; rolling and permanent alike."""
        if not self.checkpoint_dir.exists():
            return []
        found = []
        for p in self.checkpoint_dir.iterdir():
            m = _CKPT.match(p.name)
            if m:
                found.append((int(m.group(2)), 0 if m.group(1) == "latest" else 1, p))
        return [(step, p) for step, _, p in sorted(found, key=lambda s: (-s[0], s[1]))]

    def warn_if_short_of_space(self, need: int, what: str, say: Callable[[str], None]) -> None:
        """A line through ``say`` when the folder's file system has less than ``need`` bytes free (for ``what``)."""
        free = shutil.disk_usage(self.root).free
        if free < need:
            say(f"warning: {self.root} has {format_bytes(free)} free, less than {what} need ({format_bytes(need)}); "
                "a checkpoint that does not fit stops the run (the previous one is kept)")

    def save_checkpoint(self, state: dict[str, Any], step: int, *, keep: bool = False) -> Path:
        """Atomically write the rolling checkpoint (and a permanent copy if ``keep``); prune old rolling ones.
        The file holds ``state`` and its tensors' checksums (``with_checksum``). A failed write (``WriteFailed``)
        leaves no partial file, and the older checkpoints as they were. A temporary that a crash or kill -9 left
        is removed first if its writer is gone or this process (the run's one writer, nothing else in flight)."""
        path = self.checkpoint_dir / f"latest-{step:08d}.pt"
        for stray, pid in stale_temporaries(self.checkpoint_dir):
            if pid == os.getpid() or not process_alive(pid):
                with contextlib.suppress(OSError):  # e.g. a read-only folder: the write below says so
                    stray.unlink(missing_ok=True)
        save_torch_atomic(with_checksum(state), path, what=f"checkpoint {path.name}")
        kept = self.checkpoint_dir / f"step-{step:08d}.pt"
        if keep and not kept.exists():
            try:  # a hard link costs no space; fall back to a copy where links are not supported
                os.link(path, kept)
            except OSError:
                atomic_copy(path, kept, what=f"checkpoint {kept.name}")
        rolling = sorted(p for p in self.checkpoint_dir.glob("latest-*.pt"))
        for old in rolling[:-ROLLING_KEPT]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, *, map_location: str | torch.device = "cpu",
                        report: Callable[[str], None] = print) -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that loads and passes its checksum; the others are reported (one line each)
        and skipped. None if there is none (``checkpoints()`` tells whether none was there or none was usable)."""
        for step, path in self.checkpoints():
            try:
                state = read_checkpoint(path, map_location=map_location)
            except Exception as exc:  # torn, damaged, not ours, I/O error: fall back to an older one
                why = f": {exc.reason}" if isinstance(exc, CheckpointUnreadable) else f" ({type(exc).__name__}: {exc})"
                report(f"warning: checkpoint {path} is unreadable{why}; trying an older one")
                continue
            if not isinstance(state, dict) or state.get("step") != step:
                report(f"warning: checkpoint {path} does not hold step {step}; trying an older one")
                continue
            return state, path
        return None

    # ------------------------------------------------------------------ done marker
    def is_done(self) -> bool:
        return self.done_path.exists()

    def mark_done(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.done_path, (json.dumps(summary) + "\n").encode())


# ---------------------------------------------------------------------- the state of a run

@dataclass(frozen=True)
class RunStatus:
    """A run's ``state`` (one of ``STATES``), a ``detail`` for people, and its job.json."""

    state: str
    detail: str = ""  # the scheduler's word (pending, running, incomplete) or error.txt's last line (failed)
    job: dict[str, Any] = field(default_factory=dict)


def run_status(folder: RunFolder | str | Path, scheduler: SchedulerLookup | None = None, *,
               problems: list[str] | None = None, logged: bool | None = None) -> RunStatus:
    """The state of the run in ``folder``, by the rules of the module docstring.

    ``scheduler`` is asked about job.json's job for pending/running; ``problems`` receives an unreadable
    job.json; ``logged`` (whether metrics.jsonl holds a row) saves reading it again when the caller has.
    """
    run = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    if not run.root.is_dir():
        return RunStatus(State.NEW)
    job = run.read_job(problems)
    if run.is_done():
        return RunStatus(State.DONE, "", job)
    holder = lock_holder(run.root)
    if holder is not None:  # a trainer holds the folder, whoever started it
        return RunStatus(State.RUNNING, f"locked by {holder.describe()}", job)
    job_id = job.get("job_id")
    sched = str(scheduler(str(job.get("executor", "")), str(job_id))).upper() if job_id and scheduler else ""
    if sched in PENDING_STATES:
        return RunStatus(State.PENDING, sched, job)
    if sched in RUNNING_STATES:
        return RunStatus(State.RUNNING, sched, job)
    recorded = str(job.get("state", "")).upper()
    tail = _error_line(run)
    if tail is not None or recorded in FAILED_STATES:
        return RunStatus(State.FAILED, recorded if tail is None else tail, job)
    if not run.config_path.exists() and not (bool(run.read_metrics()) if logged is None else logged):
        return RunStatus(State.EMPTY, sched, job)
    return RunStatus(State.INCOMPLETE, sched, job)


def _error_line(run: RunFolder) -> str | None:
    """The last line of error.txt, or None if there is none; never raises."""
    try:
        return run.read_error(1)
    except OSError as exc:
        return f"(unreadable {ERROR}: {type(exc).__name__})"


# ---------------------------------------------------------------------- JSONL

def _flat_diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _flat_diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
