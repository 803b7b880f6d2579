"""Is there a SLURM cluster to submit to? ``sbatch`` on PATH is not enough: a laptop or a container may have the
SLURM clients installed with no controller behind them, and submitit's SLURM executor then fails at the first
``sbatch`` (or, worse, the jobs are refused after the run folders were written). ``probe_controller`` asks the
controller itself with ``scontrol ping``, bounded by ``PING_TIMEOUT_S``, and says in words what it found.
No submitit here: the launcher (``alphaflow.launch.executors``) and the command line use the answer.
"""

from __future__ import annotations

import re
import shutil
import subprocess

PING_TIMEOUT_S = 5.0  # scontrol retries a silent controller for its MessageTimeout (10 s by default): cut it short
_UP = re.compile(r"\b(is|are) UP\b")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def probe_controller(timeout_s: float | None = None) -> tuple[bool, str]:
    """(whether a SLURM controller answers, why in a few words). Asks ``scontrol ping`` (found on PATH next to
    ``sbatch``) with a ``timeout_s`` limit (default ``PING_TIMEOUT_S``); a controller answers when a line of its
    reply says it is UP."""
    timeout_s = PING_TIMEOUT_S if timeout_s is None else timeout_s
    if shutil.which("sbatch") is None:
        return False, "no sbatch on PATH"
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return False, "sbatch is on PATH but scontrol is not, so no SLURM controller can be asked"
    try:
        reply = subprocess.run([scontrol, "ping"], capture_output=True, text=True, timeout=timeout_s,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"sbatch is on PATH but no SLURM controller answered `scontrol ping` within {timeout_s:g} s"
    except OSError as exc:
        return False, f"sbatch is on PATH but `scontrol ping` could not run ({exc.strerror or exc})"
    text = f"{reply.stdout}\n{reply.stderr}"
    up = next((line.strip() for line in text.splitlines() if _UP.search(line)), None)
    if up is not None:
        return True, f"the SLURM controller answered `scontrol ping`: {up}"
    said = _first_line(text) or f"exit code {reply.returncode}, no output"
    return False, f"sbatch is on PATH but no SLURM controller answered `scontrol ping` ({said})"
