"""The report files of ``alphaflow doctor``: ``gpu_check.json`` (every entry) and ``gpu_check.md`` (the headline).

Every process that ends a section (or a measurement inside one) merges its entry into the JSON under a lock
on the report's folder (the background ``plans`` section writes beside the others) and rewrites the markdown
from it, so whatever kills the check later leaves both files readable. Standard library only.

Report: ``{"meta": {...}, "summary": {...}, "headline": {...}, "sections": {name: {"status": "ok" | "fail" |
"skipped" | "running", "seconds", "results", "error", "reason", "traceback"}}}``. Non-finite floats are
written as the strings "NaN", "Infinity", "-Infinity", so the file stays strict JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from alphaflow.perf.gpucheck.settings import SECTIONS, STATUSES, Settings

REPORT_NAME = "gpu_check.json"


def report_path(out: str | Path) -> Path:
    """The JSON report for ``out``: a ``.json`` file as given, else ``out``/gpu_check.json (a folder)."""
    p = Path(out)
    return p if p.suffix == ".json" else p / REPORT_NAME


def markdown_path(report: str | Path) -> Path:
    """The markdown beside the JSON report (same name, ``.md``)."""
    return Path(report).with_suffix(".md")


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, tensors and numpy scalars as numbers, non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # a 0-d tensor or a numpy scalar
        return jsonable(value.item())
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return str(value)


def read_report(path: str | Path) -> dict[str, Any] | None:
    """The report at ``path``, or None when there is none (or it is not a report)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("sections"), dict) else None


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (flock on the directory: no lock file lands among the returned files)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: one writer at a time is then the caller's business
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _meta(settings: Settings) -> dict[str, Any]:
    return {"mode": settings.mode, "python": platform.python_version(), "host": platform.node(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv, "budget_s": int(os.environ.get("GPU_CHECK_BUDGET_S", settings.budget_s))}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def merge_entries(path: str | Path, settings: Settings, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge section ``entries`` into the report at ``path`` (a report of another mode is replaced), rewrite it
    atomically, then the markdown beside it; sections keep ``SECTIONS`` order. Returns the report."""
    p = Path(path)
    with locked(p.parent):
        report = read_report(p)
        if report is None or report.get("meta", {}).get("mode") != settings.mode:
            report = {"meta": _meta(settings), "sections": {}}
        report["sections"].update(jsonable(entries))
        report["sections"] = {k: report["sections"][k] for k in SECTIONS if k in report["sections"]}
        sections = report["sections"].values()
        report["summary"] = {s: [k for k, v in report["sections"].items() if v.get("status") == s] for s in STATUSES}
        report["summary"]["seconds"] = round(sum(float(v.get("seconds") or 0) for v in sections), 3)
        try:
            from alphaflow.perf.gpucheck.markdown import headline, render

            report["headline"] = jsonable(headline(report))
            text = render(report)
        except Exception as exc:  # noqa: BLE001 — a rendering bug must never cost the JSON
            report["headline"] = {"error": f"{type(exc).__name__}: {exc}"}
            text = f"# GPU check\n\nthe summary could not be rendered ({type(exc).__name__}: {exc}); see {p.name}\n"
        _write_atomic(p, json.dumps(report, indent=1, allow_nan=False) + "\n")
        _write_atomic(markdown_path(p), text)
    return report


def record(path: str | Path, settings: Settings, names: Sequence[str], status: str, message: str,
           seconds: float | None = None) -> dict[str, Any]:
    """Record ``status`` (fail / skipped) for sections that did not report themselves, e.g. killed by the
    script's ``timeout``. A section that already wrote an entry keeps its numbers: a fail is added to one that was
    still running; one that had already ended (its process was killed on its way out) keeps its status and gets
    the message as a warning."""
    report = read_report(path) or {}
    existing = report["sections"] if report.get("meta", {}).get("mode") == settings.mode else {}
    entries = {}
    for name in names:
        entry = dict(existing.get(name) or {"results": {}, "error": None, "reason": None, "traceback": None})
        if entry.get("status") in STATUSES and status == "fail":
            entry["warning"] = f"{message} (after the section had reported)"
            entries[name] = entry
            continue
        if status == "fail":
            entry["error"] = "; ".join(e for e in (entry.get("error"), message) if e)
        else:
            entry["reason"] = message
        entry["status"] = status
        if seconds is not None:
            entry["seconds"] = seconds
        entry.setdefault("seconds", 0)
        entries[name] = entry
    return merge_entries(path, settings, entries)
