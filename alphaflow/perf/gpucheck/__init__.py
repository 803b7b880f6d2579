"""``alphaflow doctor``: check the whole CUDA path and write a report a remote runner can bring back.

The first session that is lent a GPU runs ``bash scripts/gpu_check.sh OUT_DIR`` (docs/gpu_check.md). The script
calls ``python -m alphaflow.perf.gpucheck --gpu --only SECTION --out OUT_DIR`` once per section, each under its
own ``timeout`` (a hung kernel, an out-of-memory error or a dead CUDA context then costs one section, not the
report), and starts the CPU-only ``plans`` section beside them. Every process merges its entry into
OUT_DIR/gpu_check.json and rewrites OUT_DIR/gpu_check.md. ``--cpu-rehearsal`` runs the same code on the CPU at
the smallest sizes (``scripts/gpu_check.sh --rehearse OUT_DIR``; tests/test_gpucheck.py).

Sections (``SECTIONS``, in run order; what each measures is in its function's docstring):

    environment  versions, the GPU, SDPA backends, a measured bf16 matmul rate and device copy bandwidth
    trainer      the real trainer on made-up latents: B/2 with guidance at α = 1 and α = 0, XL/2 with guidance,
                 B/2 flow matching at 256; images/s, MFU, peak memory; a checkpoint and a 5-step resume
    plans        (background, CPU) FLOPs per step (census) and the memory plan of every trainer run
    ratios       ``alphaflow bench`` at B/2 x 32: each step's time ratio to flow matching, against the goals
    kernel       the Triton JVP-attention kernel against math attention: errors and times
    tangent      the DiT's tangent mode against torch.func.jvp, fp32 and bf16, at B/2 and XL/2
    xl128        XL/2 at 128 per GPU, micro-batched, against its memory plan
    precision    bf16 against fp32 over 50 training steps (``training_step``)
    compile      ``train.compile=true`` through the trainer: compile time, speed-up, recompiles
    ddp          a 2-rank NCCL run of the trainer with a log tick and a probe (two GPUs)

This module imports only the standard library: ``alphaflow --help`` and ``--list`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from alphaflow.perf.gpucheck.live import Results, deadline_from_env, first_line, set_deadline
from alphaflow.perf.gpucheck.report import jsonable, merge_entries, read_report, record, report_path  # noqa: F401
from alphaflow.perf.gpucheck.settings import (BACKGROUND, CPU_REHEARSAL, FOREGROUND, GPU, MODES, SECTIONS,  # noqa: F401
                                              STATUSES, Settings, Skip)

# section → "module:function" inside this package, imported when the section runs (a module that fails to import
# fails its own section only)
SECTION_FUNCTIONS: dict[str, str] = {
    "environment": "environment:environment", "trainer": "trainer:trainer", "plans": "plans:plans",
    "ratios": "ratios:ratios", "kernel": "kernels:kernel", "tangent": "kernels:tangent", "xl128": "trainer:xl128",
    "precision": "precision:precision", "compile": "compiling:compile_check", "ddp": "ddp:ddp",
}


def section_function(name: str) -> Callable[[Settings, Results], None]:
    """The function of section ``name`` (imports its module, and torch)."""
    module, func = SECTION_FUNCTIONS[name].split(":")
    return getattr(importlib.import_module(f"alphaflow.perf.gpucheck.{module}"), func)


def run_section(name: str, settings: Settings, out: str | Path | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one section and return its report entry. With ``out`` (the report) the entry is written there as it
    grows (status "running"), so a kill keeps what was measured. An exception, an import error of the section
    included, becomes status "fail" with its text and the numbers measured so far."""
    start = time.perf_counter()

    def entry_of(results: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
        return {"status": status, "error": None, "reason": None, "traceback": None, **extra,
                "seconds": round(time.perf_counter() - start, 3), "results": jsonable(dict(results))}

    flush = None if out is None else (lambda r: merge_entries(out, settings, {name: entry_of(r, "running")}))
    results = Results(flush)
    status, extra = "ok", {}
    try:
        section_function(name)(settings, results)
        if results.failures:
            status, extra = "fail", {"error": "; ".join(results.failures)[:2000]}
    except Skip as exc:
        status, extra = "skipped", {"reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 — a failing section is data, never the end of the run
        errors = [*results.failures, first_line(exc)]
        status, extra = "fail", {"error": "; ".join(errors)[:2000],
                                 "traceback": "".join(traceback.format_exception(type(exc), exc,
                                                                                 exc.__traceback__)[-12:])[-6000:]}
    entry = entry_of(results, status, **extra)
    if out is not None:
        merge_entries(out, settings, {name: entry})
    detail = entry["error"] or entry["reason"] or ""
    log(f"doctor: {name} {entry['status']} in {entry['seconds']:.1f} s{'  ' + detail[:300] if detail else ''}")
    return entry


def run_doctor(settings: Settings, out: str | Path, *, only: Sequence[str] | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``only`` (default: every section) in order in this process, each merged into the report ``out`` (a
    folder or a .json file). Returns the whole report."""
    path = report_path(out)
    for name in (SECTIONS if only is None else only):
        log(f"doctor: {name} ...")
        run_section(name, settings, path, log=log)
    return read_report(path) or {}


# ----------------------------------------------------------------------------- the command line

def default_out() -> str:
    """$OUT (a remote runner's returned folder) when set, else ./gpu_check."""
    return os.environ.get("OUT") or "gpu_check"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``doctor`` subcommand of ``alphaflow`` (alphaflow/cli/main.py)."""
    p = sub.add_parser("doctor", help="check the whole CUDA path (trainer, bench ratios, JVP kernel, tangent, "
                                      "precision, compile, DDP) and write a JSON and a markdown report",
                       description="One entry per section with status ok/fail/skipped, its measured numbers, the "
                                   "error on failure and its seconds; see docs/gpu_check.md. On a GPU machine run "
                                   "`bash scripts/gpu_check.sh OUT_DIR`, which puts a timeout around each section.")
    add_arguments(p)
    p.set_defaults(func=main_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``alphaflow doctor`` and ``python -m alphaflow.perf.gpucheck``."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true", help="the real check on CUDA (one H100/H200-class GPU)")
    mode.add_argument("--cpu-rehearsal", action="store_true", help="the same sections on the CPU, tiny shapes")
    p.add_argument("--out", default=None, help="report folder (gpu_check.json and gpu_check.md in it) or a .json "
                                               "file; entries are merged into it (default $OUT, else ./gpu_check)")
    p.add_argument("--only", action="append", default=None, metavar="SECTION",
                   help=f"run only these sections (repeat or comma-separate): {', '.join(SECTIONS)}")
    p.add_argument("--list", action="store_true", help="print NAME:LIMIT_S:LEAST_S:fg|bg per section and exit")
    p.add_argument("--record-fail", default=None, metavar="MESSAGE",
                   help="with --only: record these sections as failed with MESSAGE instead of running them")
    p.add_argument("--record-skip", default=None, metavar="MESSAGE",
                   help="with --only: record these sections as skipped with MESSAGE instead of running them")
    p.add_argument("--seconds", type=float, default=None, help="with --record-*: the seconds to record")
    p.add_argument("--deadline", type=float, default=None,
                   help="epoch seconds by which the section must end (default $GPU_CHECK_DEADLINE): measurements "
                        "that no longer fit are recorded as skipped")


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
    settings = CPU_REHEARSAL if args.cpu_rehearsal else GPU
    if args.list:
        for name in SECTIONS:
            limit, least = settings.limits[name]
            print(f"{name}:{limit}:{least}:{'bg' if name in BACKGROUND else 'fg'}")
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
    path = report_path(args.out or default_out())
    if args.record_fail or args.record_skip:
        status, message = ("fail", args.record_fail) if args.record_fail else ("skipped", args.record_skip)
        assert only is not None  # --record-fail / --record-skip came with --only (checked above)
        record(path, settings, only, status, message, args.seconds)
        return 0
    set_deadline(args.deadline if args.deadline is not None else deadline_from_env())
    report = run_doctor(settings, path, only=only)
    ran = [report["sections"][n] for n in (only or SECTIONS) if n in report.get("sections", {})]
    print(f"doctor: report in {path}; " + ", ".join(f"{s} {sum(e['status'] == s for e in ran)}" for s in STATUSES))
    return 1 if any(e["status"] == "fail" for e in ran) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m alphaflow.perf.gpucheck``: ``alphaflow doctor`` without the CLI's other commands."""
    p = argparse.ArgumentParser(prog="python -m alphaflow.perf.gpucheck", description=__doc__.splitlines()[0])
    add_arguments(p)
    return main_from_args(p.parse_args(argv))
