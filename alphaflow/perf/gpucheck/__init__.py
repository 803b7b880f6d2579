"""``alphaflow doctor``: check the whole CUDA path in one go and write a JSON report.

The first session that is lent a GPU runs ``scripts/gpu_check.sh [OUT.json]``; it calls
``python -m alphaflow doctor --gpu --only SECTION --out OUT.json`` once per section under ``timeout``
(a hung kernel or a dead CUDA context then costs one section, not the budget), each call merging its
entry into the same report. ``alphaflow doctor --gpu`` alone runs every section in one process.
``--cpu-rehearsal`` runs the same code on the CPU with tiny shapes, so the tests exercise it here.

Sections (``SECTIONS``; what each measures is in its docstring in ``alphaflow/perf/gpucheck/``):

    environment  versions, GPUs, bf16, SDPA switches, a measured bf16 matmul rate
    bench        ``alphaflow bench`` at DiT-B/2 and DiT-XL/2: images/s, MFU, peak memory, ratios to FM
    train        50 steps of MeanFlow, α-Flow (α = 0.5) and α-Flow (α = 0), bf16 against fp32
    attention    every fused SDPA backend against MATH; the DiT's tangent mode against torch.func.jvp
    probe        one gradient probe: cosines, time, peak memory
    compile      torch.compile'd MeanFlow steps against eager
    memory       alphaflow.perf.memplan's planned peaks against measured ones
    ddp          a 2-rank NCCL run of the trainer with an online probe (needs two GPUs)

Report: ``{"meta": {...}, "summary": {...}, "sections": {name: {"status": "ok" | "fail" | "skipped",
"seconds", "results", "error", "reason", "traceback"}}}``. Every number in it is measured (or read from
torch); a failing section keeps the numbers it measured before failing and never stops the others.
Non-finite floats are written as the strings "NaN", "Infinity", "-Infinity" so the file stays strict JSON.

This module imports only the standard library at the top: ``alphaflow --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from alphaflow.perf.gpucheck.settings import (CPU_REHEARSAL, GPU, SECTIONS, STATUSES, Settings,  # noqa: F401
                                           Skip)


# ----------------------------------------------------------------------------- running sections

def section_functions() -> dict[str, Callable[[Settings, dict], None]]:
    """name → function(settings, results) that fills ``results`` as it measures (imports torch)."""
    from alphaflow.perf.gpucheck.sections import SECTION_FUNCTIONS

    return SECTION_FUNCTIONS


def run_section(name: str, settings: Settings) -> dict[str, Any]:
    """Run one section and return its report entry; an exception (an import error of the sections included)
    becomes status "fail" with its text, and the device is cleaned up for the next section either way."""
    results: dict[str, Any] = {}
    entry: dict[str, Any] = {"status": "ok", "error": None, "reason": None, "traceback": None}
    start = time.perf_counter()
    try:
        section_functions()[name](settings, results)
    except Skip as exc:
        entry.update(status="skipped", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 — a failing section is data, never the end of the run
        entry.update(status="fail", error=f"{type(exc).__name__}: {exc}",
                     traceback="".join(traceback.format_exception(exc)[-12:]))
    try:
        from alphaflow.perf.gpucheck.helpers import cleanup

        cleanup(settings)  # free the device for the next section
    except Exception as exc:  # noqa: BLE001 — e.g. a dead CUDA context after an illegal memory access
        entry["cleanup_error"] = f"{type(exc).__name__}: {exc}"
    entry["seconds"] = round(time.perf_counter() - start, 3)
    entry["results"] = jsonable(results)
    return entry


def run_doctor(settings: Settings, out: str | Path, *, only: Sequence[str] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``only`` (default: every section) in order, merging each entry into ``out`` as soon as it ends
    (a crash later leaves the earlier entries on disk). Returns the whole report."""
    names = list(SECTIONS if only is None else only)
    report: dict[str, Any] = {}
    for name in names:
        log(f"doctor: {name} ...")
        entry = run_section(name, settings)
        report = merge_entries(out, settings, {name: entry})
        detail = entry["error"] or entry["reason"] or ""
        log(f"doctor: {name} {entry['status']} in {entry['seconds']:.1f} s{'  ' + detail if detail else ''}")
    return report


# ----------------------------------------------------------------------------- the report file

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
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("sections"), dict) else None


def _meta(settings: Settings) -> dict[str, Any]:
    meta = {"mode": settings.mode, "settings": jsonable(asdict(settings)), "python": platform.python_version(),
            "host": platform.node(), "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "argv": sys.argv}
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:  # the report still records that torch is missing
        meta["torch"] = None
    return meta


def merge_entries(path: str | Path, settings: Settings, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge section ``entries`` into the report at ``path`` (a report of another mode is replaced) and
    rewrite it atomically; sections keep ``SECTIONS`` order. Returns the report."""
    p = Path(path)
    report = read_report(p)
    if report is None or report.get("meta", {}).get("mode") != settings.mode:
        report = {"meta": _meta(settings), "sections": {}}
    report["sections"].update(entries)
    report["sections"] = {k: report["sections"][k] for k in SECTIONS if k in report["sections"]}
    sections = report["sections"].values()
    report["summary"] = {s: [k for k, v in report["sections"].items() if v["status"] == s] for s in STATUSES}
    report["summary"]["seconds"] = round(sum(float(v.get("seconds") or 0) for v in sections), 3)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, p)
    return report


def record(path: str | Path, settings: Settings, names: Sequence[str], status: str, message: str,
           seconds: float | None = None) -> dict[str, Any]:
    """Record ``status`` (fail / skipped) for sections that did not report themselves, e.g. killed by the
    script's ``timeout``. A section that already wrote an entry in this report keeps its numbers: a fail
    is then added to it (its process died after writing)."""
    report = read_report(path) or {}
    existing = report["sections"] if report.get("meta", {}).get("mode") == settings.mode else {}
    entries = {}
    for name in names:
        entry = dict(existing.get(name) or {"results": {}, "error": None, "reason": None, "traceback": None,
                                            "seconds": seconds})
        if name in existing and status == "fail":
            entry["error"] = "; ".join(e for e in (entry.get("error"), message) if e)
        elif status == "fail":
            entry["error"] = message
        else:
            entry["reason"] = message
        entry["status"] = status
        entries[name] = entry
    return merge_entries(path, settings, entries)


# ----------------------------------------------------------------------------- the command line

def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``doctor`` subcommand of ``alphaflow`` (alphaflow/cli.py)."""
    p = sub.add_parser("doctor", help="check the whole CUDA path (bench, training, attention, probes, compile, "
                                      "memory plan, DDP) and write a JSON report",
                       description="One entry per section with status ok/fail/skipped, its measured numbers, the "
                                   "error on failure and its seconds; see alphaflow/perf/gpucheck.py. On a GPU machine "
                                   "run scripts/gpu_check.sh, which puts a timeout around each section.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true", help="the real check on CUDA (one H100/H200-class GPU)")
    mode.add_argument("--cpu-rehearsal", action="store_true", help="the same sections on the CPU, tiny shapes")
    p.add_argument("--out", default="gpu_check.json", help="report file; entries are merged into it "
                                                           "(default gpu_check.json)")
    p.add_argument("--only", action="append", default=None, metavar="SECTION",
                   help=f"run only these sections (repeat or comma-separate): {', '.join(SECTIONS)}")
    p.add_argument("--list", action="store_true", help="print the section names and exit")
    p.add_argument("--record-fail", default=None, metavar="MESSAGE",
                   help="with --only: record these sections as failed with MESSAGE instead of running them")
    p.add_argument("--record-skip", default=None, metavar="MESSAGE",
                   help="with --only: record these sections as skipped with MESSAGE instead of running them")
    p.add_argument("--seconds", type=float, default=None, help="with --record-*: the seconds to record")
    p.set_defaults(func=main_from_args)


def _parse_only(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; the sections are {', '.join(SECTIONS)}")
    return [n for n in SECTIONS if n in names]  # report order, each once


def main_from_args(args: argparse.Namespace) -> int:
    """0 when no section failed, 1 when one did, 2 on bad arguments."""
    if args.list:
        print("\n".join(SECTIONS))
        return 0
    try:
        if not (args.gpu or args.cpu_rehearsal):
            raise ValueError("choose --gpu (the real check) or --cpu-rehearsal")
        only = _parse_only(args.only)
        if (args.record_fail or args.record_skip) and not only:
            raise ValueError("--record-fail / --record-skip need --only SECTION")
    except ValueError as exc:
        print(f"alphaflow doctor: {exc}")
        return 2
    settings = GPU if args.gpu else CPU_REHEARSAL
    if args.record_fail or args.record_skip:
        status, message = ("fail", args.record_fail) if args.record_fail else ("skipped", args.record_skip)
        record(args.out, settings, only, status, message, args.seconds)
        return 0
    report = run_doctor(settings, args.out, only=only)
    ran = [report["sections"][n] for n in (only or SECTIONS)]
    print(f"doctor: report in {args.out}; " + ", ".join(f"{s} {sum(e['status'] == s for e in ran)}" for s in STATUSES))
    return 1 if any(e["status"] == "fail" for e in ran) else 0
