"""Section ``plans`` of ``alphaflow doctor``: FLOPs per step and memory plans of the trainer runs, on the CPU.

scripts/gpu_check.sh starts it first, beside the GPU sections (it runs on fake tensors: no GPU time, one CPU
thread, niced). The report joins its numbers with the trainer's: MFU = FLOPs per step × steps/s ÷ 989e12, and
the measured peak memory against the plan's train phase.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from alphaflow.perf.gpucheck.helpers import GIB
from alphaflow.perf.gpucheck.live import Results, attempt
from alphaflow.perf.gpucheck.settings import Settings, Skip, TrainerRun
from alphaflow.perf.gpucheck.trainer import run_config


def plan_runs(s: Settings) -> list[TrainerRun]:
    """The runs whose FLOPs and plan the report needs: the trainer's and xl128's (compiled runs reuse theirs)."""
    runs = [*s.trainer_runs, s.xl128]
    return runs if s.plan_keys is None else [r for r in runs if r.key in s.plan_keys]


def flops_per_step(s: Settings, run: TrainerRun) -> dict[str, Any]:
    """``alphaflow.perf.census.count_step`` of the run's trainer step (its recipe's objective, guidance included,
    at its batch, bf16 where the run uses it): matrix and attention FLOPs, counted on fake tensors."""
    from alphaflow.models import build_for_data, model_options
    from alphaflow.objectives import objective_from_options
    from alphaflow.perf.census import ROOFLINES, count_step

    cfg = run_config(s, run, "/not/opened")
    objective = objective_from_options(cfg.objective, cfg.train.steps)
    options = model_options(cfg.model)
    patch = int(run.model.rsplit("/", 1)[1]) if run.model.rsplit("/", 1)[-1].isdigit() else 0
    tokens = (s.shape[1] // patch) * (s.shape[2] // patch) if patch else 0  # N, to spot [.., N, N] tensors
    census = count_step(lambda: build_for_data(cfg.model.name, s.shape, s.classes, **options), objective, run.batch,
                        s.shape, bf16=s.bf16, tokens=tokens)
    summary = census.summary(ROOFLINES["h100"])
    return {"model": run.model, "batch": run.batch, "alpha": run.alpha, "matmul_flops": summary["matmul_flops"],
            "attention_flops": summary["attention_flops"],
            "flops_per_step": summary["matmul_flops"] + summary["attention_flops"],
            "estimated_h100_ms": summary["ms"], "estimated_mfu": summary["mfu"]}


def step_plan(s: Settings, run: TrainerRun) -> dict[str, Any]:
    """The peak memory of the run's own trainer step on fake tensors (``alphaflow.perf.fakestep.FakeStep`` in an
    ``alphaflow.perf.memtrack.FakeRun``, as ``alphaflow plan`` does it): its α, its batch, its ``train.micro_batch``
    (when this tree's step has it), the second of two steps (Adam's moments exist); the total adds the plan's
    fragmentation margin and CUDA-context overhead. The plan to hold the measured peak against."""
    from alphaflow.models import build_for_data, model_options
    from alphaflow.objectives import objective_from_options
    from alphaflow.perf import memplan
    from alphaflow.perf.fakestep import FakeStep, drawn_samples_only
    from alphaflow.perf.memtrack import FakeRun

    cfg = run_config(s, run, "/not/opened")
    objective = objective_from_options(cfg.objective, cfg.train.steps)
    shape, classes = memplan.data_shape(cfg)
    fake_run = FakeRun()
    with drawn_samples_only(), fake_run:
        fake = FakeStep(fake_run, lambda: build_for_data(cfg.model.name, shape, classes, **model_options(cfg.model)),
                        objective, bf16=s.bf16, grad_clip=cfg.optim.grad_clip, halflife_steps=cfg.ema.halflife_steps)
        modelled = bool(run.micro_batch) and hasattr(fake.parts, "micro_batch")
        if modelled:
            fake.parts.micro_batch = run.micro_batch
        x = fake_run.fake((run.batch, *shape))
        fake.step(x)
        fake_run.reset_peak()
        fake.step(x)
        peak = fake_run.peak
    total = int(peak * (1 + memplan.MARGIN)) + memplan.OVERHEAD_BYTES
    return {"model": run.model, "batch": run.batch, "alpha": run.alpha, "micro_batch": run.micro_batch,
            "micro_batch_modelled": modelled, "peak_bytes": peak, "total_bytes": total, "peak_gib": peak / GIB,
            "total_gib": total / GIB}


def plan_memory_train(s: Settings, run: TrainerRun) -> dict[str, Any]:
    """``alphaflow plan``'s train phase for the run's recipe at its batch on one GPU (``alphaflow.perf.memplan``:
    the worst α of α-Flow's 1, ½ and 0, then an online probe).

    Only the train phase is planned: ``plan_memory`` would also plan evaluation, which for latents builds the
    SD-VAE from ``diffusers`` (not on the GPU image) and costs minutes of CPU; it is the fallback."""
    from alphaflow.perf import memplan

    if run.micro_batch and not s.plan_memory_micro:
        raise Skip("left out: `alphaflow plan` of XL/2 at 128 per GPU takes minutes of CPU (three α, an online probe "
                   "in chunks); this run's step plan is the same fake step, micro-batched, at its α")
    cfg = run_config(s, run, "/not/opened")
    method = "memplan.plan_training"
    train = memplan.plan_training(cfg, world_size=1, device=s.device)
    return {"model": run.model, "batch": run.batch, "method": method, "peak_bytes": train.peak_bytes,
            "total_bytes": train.total_bytes, "peak_gib": train.peak_bytes / GIB, "total_gib": train.total_bytes / GIB,
            "parts_gib": {k: v / GIB for k, v in train.parts.items()}}


def plans(s: Settings, out: Results) -> None:
    """For every trainer run (and xl128), cheapest first so that a kill keeps the most: its FLOPs per trainer step
    (census), its own step's peak memory (same α and micro-batch), then ``alphaflow plan``'s train phase (the worst
    α) once per recipe, model and batch. CPU only, one thread."""
    torch.set_num_threads(1)  # beside the GPU sections: leave the cores to their eager dispatch
    out["flops"], out["memory"], out["plan_memory"] = {}, {}, {}
    start = time.perf_counter()
    for group, measure in (("flops", flops_per_step), ("memory", step_plan)):
        for run in plan_runs(s):
            attempt(out[group], run.key, lambda: measure(s, run))
            out.flush()
    done: dict[tuple[str, str, int, int], str] = {}
    for run in plan_runs(s):
        same = (run.recipe, run.model, run.batch, run.micro_batch)
        if same in done and out["plan_memory"].get(done[same], {}).get("status") == "ok":
            out["plan_memory"][run.key] = {**out["plan_memory"][done[same]], "same_as": done[same]}
            continue
        done[same] = run.key
        attempt(out["plan_memory"], run.key, lambda: plan_memory_train(s, run))
        out.flush()
    out["seconds"] = time.perf_counter() - start
    for group in ("flops", "memory", "plan_memory"):
        for key, entry in out[group].items():
            if entry.get("status") == "fail":
                out.failures.append(f"{group} {key}: {entry.get('error')}")
