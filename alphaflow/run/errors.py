"""The two kinds of failure a user is told about in one line (``alphaflow.cli.main``), not with a traceback.

    UsageError   a bad input: a value, path, file or run folder that cannot be used as given; exit code 2.
                 ``ValueError`` raised by the library's checks counts as this too (``ConfigError`` is one).
    WriteFailed  a file of a run could not be written (no space, no permission, quota); exit code 1. What
                 was written before it is intact (``alphaflow.run.files``), so the same command resumes once
                 the cause is fixed.
    RunFailed    a run that stopped on its own account (a diverging loss, runs of a sweep that failed); exit
                 code 1. Its checkpoints and metrics up to the failure are kept.
    Interrupted  Ctrl-C (``KeyboardInterrupt``), with where the run stopped; exit code 130. A bare
                 ``KeyboardInterrupt`` gets the same exit code and a plain line.

``alphaflow ... --debug`` (or ``ALPHAFLOW_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path
from typing import Callable


class UsageError(ValueError):
    """A bad input, with a message that names it and says what was expected."""


class WriteFailed(OSError):
    """Writing ``what`` into ``folder`` failed with ``cause``; ``str()`` is the one line a user reads."""

    def __init__(self, what: str, folder: Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.what, self.folder, self.cause = what, Path(folder), cause
        reason = cause.strerror or str(cause)
        if cause.errno == errno.ENOSPC or cause.errno == errno.EDQUOT:
            reason += f"; {free_space_text(self.folder)} free there"
        self.message = f"could not write {what} in {self.folder}: {reason}"

    def __str__(self) -> str:
        return self.message


class RunFailed(RuntimeError):
    """A run stopped by itself (diverged, or a sweep's runs failed); ``str()`` is the one line a user reads."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, re-raised with where the work stopped and how to take it up again (``str()``: one line)."""


def one_line(exc: BaseException) -> str:
    """The exception's message up to its first line break; its type name when the message is empty."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def free_space_text(folder: Path) -> str:
    """The free space of the file system holding ``folder`` (or its nearest existing parent), e.g. '3.1 MiB'."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return format_bytes(shutil.disk_usage(path).free)
    except OSError:
        return "unknown space"


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: 512 B, 3.1 MiB, 10.8 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def run_command(name: str, work: Callable[[], int], *, debug: bool = False, resumable: bool = False) -> int:
    """``work()``'s exit code; a ``WriteFailed`` or ``RunFailed`` becomes one line on stderr and 1, a ``ValueError``
    (a bad input: ``UsageError``, ``ConfigError`` and the library's other input checks) or an ``ImportError`` (a
    missing optional dependency) one line and 2, Ctrl-C one line and 130. With ``debug`` they propagate,
    traceback and all."""
    try:
        return work()
    except KeyboardInterrupt as exc:
        if debug:
            raise
        print(f"{name}: interrupted{': ' + str(exc) if isinstance(exc, Interrupted) else ''}", file=sys.stderr)
        return 130
    except RunFailed as exc:
        if debug:
            raise
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except WriteFailed as exc:
        if debug:
            raise
        resume = " (training resumes from its last checkpoint)" if resumable else ""
        print(f"{name}: {exc}. What was written before is intact; free some space or fix the permission, then "
              f"run the same command again{resume}", file=sys.stderr)
        return 1
    except (ValueError, ImportError) as exc:
        if debug:
            raise
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
