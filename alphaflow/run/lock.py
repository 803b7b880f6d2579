"""One trainer per run folder, one submission per sweep root: ``RUN_DIR/.lock`` and ``ROOT/.sweep.lock``.

What the lock relies on (docs/locking.md):

* ``flock(2)`` on the lock file, taken without waiting. The kernel releases it when the holder exits in any
  way (SIGKILL included), so a crash never leaves a run locked on the machine it ran on. On NFS, Linux
  emulates flock with POSIX byte-range locks that the server arbitrates (NFSv4, or v3 with lockd), so two
  hosts exclude each other too, and the server drops the lock of a client that died when its lease ends.
* A record in the same file: host, pid, the process's start time (a reused pid is not mistaken for the
  holder), the SLURM job id, since when. It names the holder in a refusal, and ``run_status`` reads it to
  show a locked run as running. The holder touches the file every ``HEARTBEAT_S`` seconds.
* For file systems whose locks are local to each host (NFS mounted with ``local_lock=flock``, Lustre
  mounted with ``localflock``), the record is the cross-host guard: a record from another host whose heartbeat is
  younger than ``STALE_S`` refuses a second trainer even when flock lets it in. ``alphaflow unlock RUN_DIR``
  clears such a record once that process is known to be gone; after ``STALE_S`` it is taken over anyway.

Taken over, with a line saying so: a record of a dead process on this host (flock is already free then),
a record from another host whose heartbeat stopped, and a record of an earlier attempt of the same SLURM
job (a requeued job, which waits up to ``wait_same_job_s`` for that attempt to let go). The DDP ranks of a
run are one holder: only rank 0 takes the lock (``alphaflow.train.loop``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alphaflow.run.errors import UsageError

LOCK_FILE, SWEEP_LOCK_FILE = ".lock", ".sweep.lock"
HEARTBEAT_S = 30.0   # how often the holder touches its lock file
STALE_S = 300.0      # a record from another host whose file was not touched for this long is taken over
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunLocked(UsageError):
    """Another process holds the lock; the message names it and says what to do."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a lock, read from its record; ``age`` is seconds since its last heartbeat."""

    host: str
    pid: int
    since: str
    job: str | None = None
    started: str | None = None  # the process's start time (/proc/PID/stat), to tell a reused pid
    age: float = 0.0

    def describe(self) -> str:
        job = f", SLURM job {self.job}" if self.job else ""
        return f"pid {self.pid} on {self.host}{job}, since {self.since}, last heartbeat {self.age:.0f} s ago"

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """On this host: the process runs and is the same one (start time); elsewhere: its heartbeat is fresh."""
        if not self.here:
            return self.age < STALE_S
        started = _process_start(self.pid)
        return started is not None and (self.started is None or started == self.started)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); None if it
    does not exist. Where /proc is missing, an existing pid reads as '?'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (any process: a reused pid reads as alive)."""
    return pid > 0 and _process_start(pid) is not None


def slurm_job_id() -> str | None:
    """This process's SLURM job: ARRAYJOB_TASK for an array task (what submitit calls it), else SLURM_JOB_ID."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def read_holder(path: Path) -> Holder | None:
    """The record in lock file ``path``; None when there is none (no file, empty, or unreadable)."""
    try:
        text, age = path.read_text(), time.time() - path.stat().st_mtime
        record = json.loads(text) if text.strip() else None
        if not isinstance(record, dict):
            return None
        return Holder(str(record["host"]), int(record["pid"]), str(record["since"]), record.get("job"),
                      record.get("started"), max(age, 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_holder(root: Path | str) -> Holder | None:
    """The live holder of run folder ``root``'s lock, or None (for ``run_status``: a locked run is running)."""
    holder = read_holder(Path(root) / LOCK_FILE)
    return holder if holder is not None and holder.alive() else None


class FileLock:
    """An exclusive lock on ``path`` with a holder record and a heartbeat (see the module docstring).

    ``acquire()`` raises ``RunLocked`` if another process holds it, ``UsageError`` if the file cannot be made;
    ``release()`` clears the record and lets go. A context manager; releasing twice is harmless."""

    def __init__(self, path: Path | str, *, say: Callable[[str], None] = print, wait_s: float = 0.0,
                 wait_same_job_s: float = 600.0) -> None:
        self.path, self.say = Path(path), say
        self.wait_s, self.wait_same_job_s = wait_s, wait_same_job_s
        self._fd: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> FileLock:
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise UsageError(f"{self.path.parent} is a file, not a folder; choose another folder")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"{self.path.parent}: cannot create this folder or its lock file "
                             f"({exc.strerror or exc}); choose a folder you can write to") from None
        try:
            self._take(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "job": slurm_job_id(), "started": _process_start(os.getpid())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="alphaflow-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _take(self, fd: int) -> None:
        """flock ``fd`` (waiting as configured), then apply the record rules; raises ``RunLocked``."""
        deadline, waited = time.monotonic() + self.wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(self.path)
                same_job = holder is not None and holder.job is not None and holder.job == slurm_job_id()
                limit = deadline + (self.wait_same_job_s if same_job else 0.0)
                if time.monotonic() >= limit:
                    raise RunLocked(self.refusal(holder)) from None
                if not waited:
                    self.say(f"waiting for {self.path.parent} to be released by "
                             f"{holder.describe() if holder else 'another process'}")
                    waited = True
                time.sleep(0.5)
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    raise
                self.say(f"warning: {self.path.parent} is on a file system without flock ({exc.strerror}); "
                         "the lock relies on its heartbeat record alone")
                break
        self._check_record()

    def _check_record(self) -> None:
        """With flock held: refuse for a live record of another host, take over anything else with a line."""
        holder = read_holder(self.path)
        if holder is None:
            return
        if holder.job is not None and holder.job == slurm_job_id():
            self.say(f"taking over the lock of {self.path.parent} from an earlier attempt of this job "
                     f"({holder.describe()})")
        elif holder.here and holder.pid != os.getpid() and holder.alive():
            raise RunLocked(self.refusal(holder))
        elif not holder.here and holder.alive():
            raise RunLocked(self.refusal(holder) + f". This file system may not share locks between hosts: if "
                            f"that process has stopped, run `alphaflow unlock {self.path.parent}`, or wait until "
                            f"its heartbeat is {STALE_S:.0f} s old")
        elif holder.here:
            self.say(f"taking over the lock of {self.path.parent} left by {holder.describe()}: that process is "
                     "no longer running")
        else:
            self.say(f"taking over the lock of {self.path.parent} left by {holder.describe()}: its heartbeat "
                     f"stopped more than {STALE_S:.0f} s ago")

    def refusal(self, holder: Holder | None) -> str:
        who = holder.describe() if holder is not None else "another process (its record is unreadable)"
        stop = (f"stop it (kill {holder.pid}" + (f", or scancel {holder.job}" if holder.job else "") + ")"
                if holder is not None else "stop it")
        return f"{self.path.parent} is in use by {who}; wait for it to end or {stop}, then run the command again"

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a missed beat only ages the record; the flock is what holds

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            os.ftruncate(self._fd, 0)  # no record: status no longer shows the run as running
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def run_lock(root: Path | str, *, say: Callable[[str], None] = print) -> FileLock:
    """The lock of run folder ``root`` (not yet acquired): refuses at once when held."""
    return FileLock(Path(root) / LOCK_FILE, say=say)


def sweep_lock(root: Path | str, *, say: Callable[[str], None] = print, wait_s: float = 3600.0) -> FileLock:
    """The lock of sweep root ``root`` held while a sweep submits: a second ``alphaflow sweep`` waits for it."""
    return FileLock(Path(root) / SWEEP_LOCK_FILE, say=say, wait_s=wait_s)


def break_lock(root: Path | str) -> str:
    """Clear the record of run folder ``root``'s lock after its holder has gone (``alphaflow unlock``); returns
    what was done. Refuses while a process on this host holds it, or while flock shows it is held."""
    if not Path(root).is_dir():
        raise ValueError(f"{root} is not a folder: give the run folder whose lock to clear")
    path = Path(root) / LOCK_FILE
    holder = read_holder(path)
    if holder is None:
        return f"{root} is not locked"
    if holder.here and holder.alive():
        raise RunLocked(f"{root} is locked by {holder.describe()}, which is running on this host; stop it first "
                        f"(kill {holder.pid})")
    with open(path, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{root} is locked by {holder.describe()}, and the file system says that lock is "
                            "still held; stop that process first") from None
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
        f.truncate(0)
    return f"cleared the lock of {root} (it was held by {holder.describe()})"
