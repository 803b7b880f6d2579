"""Section ``precision`` of ``alphaflow doctor``: bf16 autocast against true fp32 over the same training steps."""

from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING, Any

import torch

from alphaflow.perf.gpucheck.helpers import TOLERANCE, cleanup, device_of, model, sync, tf32
from alphaflow.perf.gpucheck.live import Results, attempt
from alphaflow.perf.gpucheck.settings import Settings

if TYPE_CHECKING:
    from alphaflow.objectives import Objective


def _objective(overrides: tuple[str, ...], steps: int) -> Objective:
    """An objective exactly as a run with these ``objective.*`` overrides builds it."""
    from alphaflow.config import load_config
    from alphaflow.objectives import objective_from_options

    return objective_from_options(load_config(None, [*overrides, f"train.steps={steps}"]).objective, steps)


def _run(s: Settings, dev: torch.device, init: dict[str, torch.Tensor], objective: Objective, *,
         bf16: bool) -> dict[str, Any]:
    """``precision_steps`` steps of ``training_step`` (the trainer's step: autocast objective, backward, the flag
    reduction, clipping, Adam; no EMA) from ``init`` with fixed seeds: per step the loss, the mse and the time."""
    from alphaflow.train.distributed import DistInfo
    from alphaflow.train.optim import build_optimizer
    from alphaflow.train.step import LoopState, StepParts, training_step

    net = model(s.precision_model, s, nudge=False).to(dev)  # its weights come from ``init``
    net.load_state_dict(init)
    opt = build_optimizer(list(net.parameters()), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    parts = StepParts(net=net, model=net, objective=objective, opt=opt, ema=None, info=DistInfo(device=dev), bf16=bf16,
                      grad_clip=16.0)
    state = LoopState()
    data_gen = torch.Generator(device=dev).manual_seed(1)
    gen = torch.Generator(device=dev).manual_seed(2)
    losses, mses, ms, finite = [], [], [], []
    for step in range(s.precision_steps):
        x = torch.randn(s.precision_batch, *s.shape, generator=data_gen, device=dev)
        y = torch.randint(0, s.classes, (s.precision_batch,), generator=data_gen, device=dev)
        state.step = step
        sync(dev)
        t0 = time.perf_counter()
        o = training_step(parts, state, x, y, lr=1e-4, generator=gen)
        sync(dev)
        ms.append((time.perf_counter() - t0) * 1e3)
        losses.append(float(o.loss))
        mses.append(float(o.terms.components["mse"].detach().float().mean()))
        finite.append(bool(o.finite))
    return {"loss": losses, "mse": mses, "step_ms": statistics.median(ms[1:] or ms), "all_finite": all(finite)}


def _compare(s: Settings, dev: torch.device, init: dict[str, torch.Tensor],
             overrides: tuple[str, ...]) -> dict[str, Any]:
    objective = _objective(overrides, s.precision_steps)
    runs = {}
    for precision in ("bf16", "fp32"):
        with tf32(precision == "bf16"):  # bf16 runs as training does (TF32 on); the reference is true fp32
            runs[precision] = _run(s, dev, init, objective, bf16=precision == "bf16")
        cleanup(s)
    steps = s.precision_steps
    shown = sorted({0, 1, steps // 2, steps - 1})
    row: dict[str, Any] = {"steps": steps, "batch": s.precision_batch}
    for precision, r in runs.items():
        row[precision] = {"mse_at_step": {str(i + 1): r["mse"][i] for i in shown},
                          "loss_at_step": {str(i + 1): r["loss"][i] for i in shown},
                          "step_ms": r["step_ms"], "all_finite": r["all_finite"]}
    for key in ("loss", "mse"):
        diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(runs["bf16"][key], runs["fp32"][key])]
        row[f"max_rel_diff_{key}"] = max(diffs)
        row[f"final_rel_diff_{key}"] = diffs[-1]
    row["within_tolerance"] = row["max_rel_diff_mse"] <= TOLERANCE["bf16"]
    row["bf16_speedup"] = runs["fp32"]["step_ms"] / runs["bf16"]["step_ms"]
    values = runs["bf16"]["loss"] + runs["fp32"]["loss"] + runs["bf16"]["mse"] + runs["fp32"]["mse"]
    if not all(math.isfinite(v) for v in values) or not (runs["bf16"]["all_finite"] and runs["fp32"]["all_finite"]):
        row.update(status="fail", error="a non-finite loss or step")
    return row


def precision(s: Settings, out: Results) -> None:
    """Each of the mode's objectives (α-Flow at α = 0, i.e. MeanFlow's tangent, and at α = ½; MeanFlow) for
    ``precision_steps`` trainer steps at the mode's model and batch, once in bf16 autocast (TF32 on, as training)
    and once in true fp32 (TF32 off), same initial weights (nudged off DiT's zero init, whose zero output would hide
    any difference), data and seeds: the losses and mse at
    a few steps, the max and final relative bf16-vs-fp32 difference (the adaptive weight pins the loss near 1; the
    unweighted mse shows the drift), the step times and bf16's speed-up. Tolerances are information."""
    dev = device_of(s)
    init = model(s.precision_model, s).state_dict()  # nudged: from DiT's zero init the output stays ~0 for 50 steps
    out.update(model=s.precision_model, batch=s.precision_batch, steps=s.precision_steps)
    for name, overrides in s.precision_objectives:
        attempt(out, name, lambda: _compare(s, dev, init, overrides), need_s=15 if dev.type == "cuda" else 0,
                cleanup=lambda: cleanup(s))
