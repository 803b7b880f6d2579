"""Sections ``trainer`` and ``xl128`` of ``alphaflow doctor``: the real trainer on made-up latents.

Every run is ``alphaflow.train.loop.train(cfg, folder)``, the function ``alphaflow train`` calls, with an ImageNet
recipe's config (objective, guidance, optimiser, EMA, precision) at the recipe's per-GPU batch on a latents folder
of random numbers in the format ``extract_latents`` writes (no VAE, no diffusers). Its numbers come from the run's
own metrics rows; MFU and the memory plan are joined in the report from the background ``plans`` section.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alphaflow.perf.gpucheck.helpers import GIB, cleanup, config_has, device_of, peak_allocated, scratch_root
from alphaflow.perf.gpucheck.live import Results, attempt
from alphaflow.perf.gpucheck.settings import Settings, Skip, TrainerRun

if TYPE_CHECKING:
    from alphaflow.config import Config


def write_latents(folder: Path, s: Settings, num: int = 64) -> Path:
    """A random latents folder in the format ``extract_latents`` writes (float16 mean / log-variance)."""
    from alphaflow.data.latents import FORMAT, LABELS, LOGVAR, MEAN, META, VERSION

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    np.save(folder / MEAN, rng.standard_normal((num, *s.shape)).astype(np.float16))
    np.save(folder / LOGVAR, (rng.standard_normal((num, *s.shape)) * 0.1 - 2).astype(np.float16))
    np.save(folder / LABELS, rng.integers(0, s.classes, num).astype(np.int64))
    (folder / META).write_text(json.dumps({"format": FORMAT, "version": VERSION, "num": num, "shape": list(s.shape),
                                           "num_classes": s.classes, "classes": [], "dtype": "float16",
                                           "resolution": s.resolution}))
    return folder


def run_overrides(s: Settings, run: TrainerRun, data_path: str | Path, *, compile: bool = False,
                  steps: int | None = None) -> list[str]:
    """The dotted overrides of ``run`` on its recipe: model, batch, a constant α, short logging, no sample grids
    but the final one (8 samples, 1 NFE), the mode's device; ``train.micro_batch`` and ``train.compile`` when asked."""
    steps = steps or run.steps
    log_every = max(1, min(s.log_every, steps // 4))  # a few metrics rows: the first is the warm-up
    over = [f"model.name={run.model}", "data.name=latents", f"data.path={data_path}",
            f"data.resolution={s.resolution}", "data.stats_samples=256", "data.workers=0",
            f"train.batch_size={run.batch}", f"train.steps={steps}", f"train.log_every={log_every}",
            "train.ckpt_every=1000000", "train.keep_every=0", "train.sample_every=0", "sample.num=8",
            "sample.nfe=[1]", f"train.device={s.device}", *s.extra_overrides, *run.extra]
    if run.alpha is not None:
        over.append(f"objective.alpha={run.alpha:g}")
    if run.micro_batch:
        over.append(f"train.micro_batch={run.micro_batch}")
    if compile:
        over.append("train.compile=true")
    return over


def run_config(s: Settings, run: TrainerRun, data_path: str | Path, **kw: Any) -> Config:
    """The run's ``Config`` (its recipe with ``run_overrides``)."""
    from alphaflow.config import load_config

    return load_config(run.recipe, run_overrides(s, run, data_path, **kw))


def speed(rows: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Images/s and ms per step over the metrics rows after the first (the first tick pays kernel selection, the
    allocator's growth and, compiled, the compile): from the rows' training wall clock (maintenance excluded)."""
    if len(rows) < 2:
        raise ValueError(f"need at least two metrics rows to time steps after a warm-up, got {len(rows)}")
    first, last = rows[0], rows[-1]
    seconds = float(last["wall"]) - float(first["wall"])
    images = int(last["images"]) - int(first["images"])
    ips = images / seconds if seconds > 0 else float("nan")
    return {"images_per_s": ips, "step_ms": 1e3 * batch / ips if ips > 0 else float("nan"),
            "timed_steps": images // batch, "first_tick_s": float(first["wall"]),
            "first_tick_steps": int(first["step"])}


def losses(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The loss and unweighted mse of each row, and whether all are finite (no non-finite step either)."""
    loss = [float(r.get("loss", float("nan"))) for r in rows]
    mse = [float(r.get("loss_mse", float("nan"))) for r in rows]
    nonfinite = sum(int(r.get("nonfinite", 0)) for r in rows)
    return {"loss": loss, "mse": mse, "alpha_logged": [r.get("alpha") for r in rows], "nonfinite_steps": nonfinite,
            "finite": all(math.isfinite(v) for v in loss + mse) and nonfinite == 0}


def train_once(s: Settings, run: TrainerRun, data_path: Path, folder: Path, *, compile: bool = False,
               steps: int | None = None, stop_at: int | None = None) -> dict[str, Any]:
    """One ``train()`` call into ``folder``; images/s, losses, peak memory, the config's attention choice."""
    from alphaflow.train.build import preflight
    from alphaflow.train.loop import train

    dev = device_of(s)
    cfg = run_config(s, run, data_path, compile=compile, steps=steps)
    objective = preflight(cfg)  # what `alphaflow train` checks before it runs
    logs: list[str] = []

    def say(msg: str) -> None:
        logs.append(msg)
        print(f"    [{run.key}] {msg}", flush=True)

    cleanup(s)
    start = time.perf_counter()
    result = train(cfg, folder, objective=objective, stop_at=stop_at, log=say)
    wall = time.perf_counter() - start
    rows = result.run.read_metrics()
    out: dict[str, Any] = {"model": run.model, "batch": run.batch, "recipe": run.recipe, "alpha": run.alpha,
                           "micro_batch": run.micro_batch, "steps": result.step, "finished": result.finished,
                           "wall_s": wall, "train_s": float(rows[-1]["wall"]) if rows else None,
                           "attention": getattr(cfg.model, "attention", None), "compile": compile,
                           "precision": "bf16" if s.bf16 else "fp32"}
    del result
    out.update(speed(rows, run.batch))
    out.update(losses(rows))
    peaks = peak_allocated(dev)
    if peaks:
        out.update(peaks)
        out["peak_allocated_gib"] = peaks["peak_allocated_bytes"] / GIB
    out["log_tail"] = logs[-3:]
    if not out["finite"]:
        out["status"] = "fail"
        out["error"] = f"non-finite loss or steps: {out['nonfinite_steps']} non-finite steps, losses {out['loss']}"
    return out


def resume_once(s: Settings, run: TrainerRun, data_path: Path, folder: Path) -> dict[str, Any]:
    """Resume ``folder`` (stopped at ``run.stop_at`` with a checkpoint) to ``run.steps``: it must start at the
    stop step, finish, and log finite losses after it."""
    from alphaflow.train.loop import train

    cfg = run_config(s, run, data_path)
    logs: list[str] = []

    def say(msg: str) -> None:
        logs.append(msg)
        print(f"    [resume] {msg}", flush=True)

    start = time.perf_counter()
    result = train(cfg, folder, log=say)
    wall = time.perf_counter() - start
    rows = [r for r in result.run.read_metrics() if int(r["step"]) > int(run.stop_at or 0)]
    said = [m for m in logs if m.startswith("resuming")]
    match = re.search(r"\(step (\d+)\)", said[0]) if said else None
    out: dict[str, Any] = {"resumed_from_step": int(match.group(1)) if match else None,
                           "expected_from_step": run.stop_at, "final_step": result.step, "finished": result.finished,
                           "steps_after_resume": result.step - (run.stop_at or 0),
                           "rows_after_resume": [int(r["step"]) for r in rows], "wall_s": wall, "log": said[:1]}
    del result
    out.update(losses(rows))
    problems: list[str] = []
    if out["resumed_from_step"] != run.stop_at:
        problems.append(f"resumed from step {out['resumed_from_step']}, expected {run.stop_at} ({said or logs[-3:]})")
    if not out["finished"] or out["final_step"] != run.steps:
        problems.append(f"ended at step {out['final_step']} (finished: {out['finished']}), expected {run.steps}")
    if not rows or not out["finite"]:
        problems.append(f"losses after the resume: {out['loss']} (rows at steps {out['rows_after_resume']})")
    if problems:
        out.update(status="fail", error="; ".join(problems))
    return out


def trainer(s: Settings, out: Results) -> None:
    """The real trainer for each of the mode's ``trainer_runs``: B/2 with guidance at α = 1 (stopped with a
    checkpoint, then resumed for 5 steps) and at α = 0 at 32 per GPU, XL/2 with guidance at 32, B/2 flow matching at
    256; with ``model.attention`` in this tree, B/2 at α = 0 once more with math attention. Per run: images/s and
    ms per step after the first log tick, losses, peak memory allocated and reserved (CUDA)."""
    device_of(s)
    runs = list(s.trainer_runs)
    if config_has("model", "attention") and any(r.key == "b2_cfg_a0" for r in runs):
        base = next(r for r in runs if r.key == "b2_cfg_a0")
        runs.append(TrainerRun("b2_cfg_a0_math", base.recipe, base.model, base.batch, base.steps, base.alpha,
                               need_s=base.need_s, extra=("model.attention=math",)))
    with tempfile.TemporaryDirectory(prefix="gpu_check_trainer_", dir=scratch_root(s)) as tmp:
        data = write_latents(Path(tmp) / "latents", s, num=2 * max(r.batch for r in runs))
        out["data"] = {"shape": list(s.shape), "classes": s.classes, "num": 2 * max(r.batch for r in runs),
                       "scratch": tmp}
        for run in runs:
            folder = Path(tmp) / run.key
            attempt(out, run.key, lambda: train_once(s, run, data, folder, stop_at=run.stop_at), need_s=run.need_s,
                    cleanup=lambda: cleanup(s))
            if run.stop_at is not None:
                if out[run.key].get("status") == "ok":
                    attempt(out, f"{run.key}_resume", lambda: resume_once(s, run, data, folder),
                            need_s=run.need_s / 2, cleanup=lambda: cleanup(s))
                else:
                    out[f"{run.key}_resume"] = {"status": "skipped", "reason": f"the run {run.key} did not stop "
                                                                               "cleanly with a checkpoint"}
            shutil.rmtree(folder, ignore_errors=True)  # an XL/2 checkpoint is 11 GB


def xl128(s: Settings, out: Results) -> None:
    """XL/2 with guidance at 128 per GPU (the recipe's global batch of 256 on two GPUs) in micro-batches of 32
    (``train.micro_batch``): images/s, losses and peak memory, joined with its memory plan in the report."""
    device_of(s)
    if not config_has("train", "micro_batch"):
        raise Skip("skipped: needs train.micro_batch (gradient accumulation), which this tree's config lacks")
    run = s.xl128
    with tempfile.TemporaryDirectory(prefix="gpu_check_xl128_", dir=scratch_root(s)) as tmp:
        data = write_latents(Path(tmp) / "latents", s, num=2 * run.batch)
        attempt(out, run.key, lambda: train_once(s, run, data, Path(tmp) / run.key), need_s=run.need_s,
                cleanup=lambda: cleanup(s))
