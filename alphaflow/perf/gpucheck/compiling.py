"""Section ``compile`` of ``alphaflow doctor``: ``train.compile=true`` through the real trainer.

Placed last but one with its own generous limit: a cold inductor compile of DiT-B/2 (forward, backward and the
tangent-mode graph) takes minutes, and whatever it costs, the sections before it have already written their numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch._dynamo

from alphaflow.perf.gpucheck.helpers import cleanup, device_of, scratch_root
from alphaflow.perf.gpucheck.live import Results, attempt, time_left
from alphaflow.perf.gpucheck.settings import Settings, Skip, TrainerRun
from alphaflow.perf.gpucheck.trainer import train_once, write_latents

NEED_S = {"cuda": 60.0, "cpu": 0.0}  # least time worth starting a compiled run with


def _frame_compiles() -> dict[Any, int]:  # keys: torch's opaque frame ids
    """TorchDynamo's compiles per frame so far (``convert_frame.FRAME_COMPILE_COUNTER``: frame id → compiles; a
    private counter, so {} where this torch has none)."""
    try:
        from torch._dynamo.convert_frame import FRAME_COMPILE_COUNTER
    except ImportError:
        return {}
    return dict(FRAME_COMPILE_COUNTER)


def _dynamo_counts(before: dict[Any, int] | None = None) -> dict[str, int | None]:
    """Graphs, frames, graph breaks and recompiles since ``counters.clear()``. A recompile is a frame compiled again
    after its first compile (``before``: ``_frame_compiles()`` at the start); the prediction and the no-grad target
    pass are two frames, each compiled once when nothing recompiles. None where the per-frame counter is missing."""
    from torch._dynamo.utils import counters

    frames = dict(counters.get("frames", {}))
    after = _frame_compiles()
    recompiles = None
    if after and before is not None:
        new = sum(n - before.get(f, 0) for f, n in after.items())
        first = sum(1 for f, n in after.items() if n > 0 and before.get(f, 0) == 0)
        recompiles = new - first
    return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "frames_compiled": int(frames.get("ok", 0)), "frames_total": int(frames.get("total", 0)),
            "graph_breaks": int(sum(counters.get("graph_break", {}).values())), "recompiles": recompiles}


def _compiled(s: Settings, run: TrainerRun, data: Path, folder: Path) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    counters.clear()
    before = _frame_compiles()
    result = train_once(s, run, data, folder, compile=True, steps=s.compile_steps)
    result.update(_dynamo_counts(before))
    # the first tick holds the compile: its time less what its steps take once compiled
    result["compile_s"] = result["first_tick_s"] - result["first_tick_steps"] * result["step_ms"] / 1e3
    return result


def compile_check(s: Settings, out: Results) -> None:
    """For each of the mode's ``compile_runs`` (B/2 with guidance at α = 1, the plain forward, and α = 0, the
    tangent-mode graph): the trainer with ``train.compile=true`` for ``compile_steps``: the compile time (the
    first log tick less its steps at the compiled speed), images/s after it, graphs, frames compiled, graph breaks
    and recompiles (TorchDynamo's counters; recompile reasons go to the log), then the same run eager in this
    process when time is left, and the speed-up. The report also compares with the trainer section's eager run."""
    dev = device_of(s)
    if not torch._dynamo.is_dynamo_supported():
        raise Skip(f"torch.compile is not supported on this Python / torch ({torch.__version__})")
    if s.compile_backend is not None:  # the rehearsal: TorchDynamo and AOTAutograd, no code generation
        torch.compile = functools.partial(torch.compile, backend=s.compile_backend)  # this process only
    try:
        torch._logging.set_logs(recompiles=True, graph_breaks=True)
    except Exception:  # noqa: BLE001 — the log is a nicety
        pass
    out.update(backend=s.compile_backend or "inductor", steps=s.compile_steps)
    runs = {r.key: r for r in s.trainer_runs}
    need = NEED_S.get(dev.type, 0.0)
    with tempfile.TemporaryDirectory(prefix="gpu_check_compile_", dir=scratch_root(s)) as tmp:
        data = write_latents(Path(tmp) / "latents", s, num=2 * max(runs[k].batch for k in s.compile_runs))
        for key in s.compile_runs:
            run = dataclasses.replace(runs[key], stop_at=None, steps=s.compile_steps)
            entry = out.setdefault(key, {})
            attempt(entry, "compiled", lambda: _compiled(s, run, data, Path(tmp) / f"{key}_compiled"), need_s=need,
                    cleanup=lambda: cleanup(s))
            out.flush()
            if entry["compiled"].get("status") == "ok" and time_left() > need / 2:
                attempt(entry, "eager", lambda: train_once(s, run, data, Path(tmp) / f"{key}_eager",
                                                           steps=s.compile_steps), cleanup=lambda: cleanup(s))
                eager, compiled = entry["eager"].get("images_per_s"), entry["compiled"].get("images_per_s")
                if eager and compiled:
                    entry["speedup"] = compiled / eager
            out.flush()
    for key in s.compile_runs:
        for what, row in out.get(key, {}).items():
            if isinstance(row, dict) and row.get("status") == "fail":
                out.failures.append(f"{key} {what}: {row.get('error')}")
