"""What keeps a section's numbers when it fails half-way: live results, the section's deadline, ``attempt``.

A section fills ``Results`` (a dict) as it measures and calls ``flush()`` after each measurement: the entry is
then on disk with status "running", so a kill by the script's ``timeout`` keeps every number measured before
it. Each measurement (a model, a batch, a variant) runs through ``attempt``: an exception, an out-of-memory
error included, becomes that measurement's own ``{"status": "fail", "error": ...}`` and the next one runs;
a measurement that no longer fits the section's deadline is recorded as skipped. Standard library only.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any, Callable

from alphaflow.perf.gpucheck.settings import Skip

_deadline: float | None = None  # epoch seconds at which the section's process is killed


def set_deadline(epoch_s: float | None) -> None:
    """The epoch time by which the section must be done (None: no limit)."""
    global _deadline
    _deadline = epoch_s


def deadline_from_env() -> float | None:
    """GPU_CHECK_DEADLINE (epoch seconds, set by scripts/gpu_check.sh per section), or None."""
    value = os.environ.get("GPU_CHECK_DEADLINE")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def time_left() -> float:
    """Seconds until the section's deadline (infinite without one)."""
    return float("inf") if _deadline is None else _deadline - time.time()


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (CUDA errors run to many lines)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]


class Results(dict[str, Any]):
    """A section's results; ``flush()`` writes what is there so far (set up by ``run_section``)."""

    def __init__(self, flush: Callable[["Results"], object] | None = None) -> None:
        super().__init__()
        self._flush = flush
        self.failures: list[str] = []

    def flush(self) -> None:
        """Write the results measured so far into the report (a no-op without a report)."""
        if self._flush is not None:
            try:
                self._flush(self)
            except Exception:  # noqa: BLE001 — a failed write must not end the measurement
                traceback.print_exc()


def attempt(out: dict[str, Any], key: str, fn: Callable[[], Any], *, need_s: float = 0.0,
            cleanup: Callable[[], None] | None = None, log: Callable[[str], None] = print) -> Any:
    """``out[key] = fn()`` (a dict gains ``status`` "ok" and ``seconds``), or a skipped / failed entry.

    Skipped when fewer than ``need_s`` seconds are left before the section's deadline, or when ``fn`` raises
    ``Skip``; failed (error and a short traceback, the failure also listed in ``out.failures``) on any other
    exception. ``cleanup`` runs after either (e.g. free the device). Returns fn's value or None; flushes."""
    left = time_left()
    if left < need_s:
        out[key] = {"status": "skipped", "reason": f"the section's time ran out: {max(left, 0):.0f} s left, "
                                                     f"this needs about {need_s:.0f} s"}
        log(f"  {key}: skipped ({out[key]['reason']})")
        _flush(out)
        return None
    start = time.perf_counter()
    value = None
    try:
        value = fn()
        entry = dict(value) if isinstance(value, dict) else {"value": value}
        entry.setdefault("status", "ok")
        if entry["status"] == "fail" and isinstance(out, Results):  # fn measured, and found a fault
            out.failures.append(f"{key}: {entry.get('error') or 'failed'}")
    except Skip as exc:
        entry = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 — one measurement failing is data, never the end of the section
        entry = {"status": "fail", "error": first_line(exc),
                 "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])[-3000:]}
        if isinstance(out, Results):
            out.failures.append(f"{key}: {entry['error']}")
        del exc  # its frames hold the failed measurement's tensors: free them before the cleanup
    entry["seconds"] = round(time.perf_counter() - start, 3)
    out[key] = entry
    if cleanup is not None:
        try:
            cleanup()
        except Exception as exc:  # noqa: BLE001 — e.g. a dead CUDA context
            entry["cleanup_error"] = first_line(exc)
    detail = entry.get("error") or entry.get("reason") or ""
    log(f"  {key}: {entry['status']} in {entry['seconds']:.1f} s{'  ' + detail if detail else ''}")
    _flush(out)
    return value


def _flush(out: dict[str, Any]) -> None:
    if isinstance(out, Results):
        out.flush()
