"""The sections of ``alphaflow doctor`` (alphaflow/gpucheck.py), one function each.

Each ``section(settings, out)`` fills the dict ``out`` as it measures, so a section that fails half-way
still reports what it measured; it raises ``Skip`` when it cannot run here and any other exception on
failure. Goals (MFU, MeanFlow's cost, tolerances) are reported as met / not met and never fail a section;
a section fails on errors, non-finite numbers and missing gradients, i.e. on a broken CUDA path.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import math
import os
import socket
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.bench import H100_BF16_PEAK, peak_memory, run_bench, time_step
from alphaflow.objectives import objective_from_options
from alphaflow.config import load_config
from alphaflow.gpucheck import Settings, Skip
from alphaflow.models import build_for_data
from alphaflow.optim import build_optimizer, sanitize_and_clip
from alphaflow.probes import probe_gradients, probe_sample

MFU_GOAL, MEANFLOW_RATIO_GOAL = 0.40, 1.45  # a DiT-B/2 FM step at ≥ 40 % of bf16 peak; MeanFlow ≤ 1.45× FM
# Objective runs of ``train`` and ``compile``: config overrides, so the objectives are built as a run builds them.
TRAIN_RUNS = {"meanflow": ["objective.name=meanflow"],
              "alphaflow_0.5": ["objective.name=alphaflow", "objective.alpha=0.5"],
              "alphaflow_0": ["objective.name=alphaflow", "objective.alpha=0"]}
FUSED_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                  "cudnn": SDPBackend.CUDNN_ATTENTION}
TOLERANCE = {"bf16": 5e-2, "fp32": 1e-3}  # information only: relative (norm-wise) disagreement expected at most


# ----------------------------------------------------------------------------- helpers

def device_of(s: Settings) -> torch.device:
    """The mode's device; on the GPU mode a missing CUDA is the failure this whole check exists to find."""
    if s.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"CUDA is not available to this torch ({torch.__version__}, built for CUDA "
                           f"{torch.version.cuda}); nothing on the GPU path can run")
    return torch.device(s.device)


def cleanup(s: Settings) -> None:
    """Free what a section left behind so the next one starts from an empty device."""
    gc.collect()
    if s.device == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def reference_peak(name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU when it is an H100 or H200 (the same peak), else None."""
    return H100_BF16_PEAK if name and ("H100" in name or "H200" in name) else None


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def autocast(dev: torch.device, bf16: bool):
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls on or off inside the block (fp32 references must be real fp32), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def model(s: Settings, name: str | None = None, *, nudge: bool = True, seed: int = 0) -> nn.Module:
    """A registry DiT for the mode's latents; ``nudge`` moves it off DiT's zero init (as bench does) so that
    every layer, gradient and cosine is non-trivial."""
    torch.manual_seed(seed)
    net = build_for_data(name or s.model, s.shape, s.classes)
    if nudge:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return net


def batch(s: Settings, dev: torch.device, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Synthetic latents x ~ N(0, I) [size, C, H, W] and labels [size]: the cost does not depend on values."""
    x = torch.randn(size, *s.shape, generator=generator, device=dev)
    return x, torch.randint(0, s.classes, (size,), generator=generator, device=dev)


def rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (0 when both vanish)."""
    a, b = a.detach().double(), b.detach().double()
    denom = float(b.norm())
    return float((a - b).norm()) / denom if denom > 0 else float((a - b).norm())


def check_finite(what: str, values: dict[str, Any]) -> None:
    """Raise naming the first non-finite number among ``values`` (floats only)."""
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"{what}: non-finite {bad[:5]}")


def objective_for(overrides: list[str], steps: int):
    """An objective exactly as a run with these ``objective.*`` overrides builds it."""
    return objective_from_options(load_config(None, [*overrides, f"train.steps={steps}"]).objective, steps)


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


# ----------------------------------------------------------------------------- 1. environment

def environment(s: Settings, out: dict) -> None:
    """Versions (torch, CUDA, cuDNN), the GPUs (name, memory, SMs, capability), bf16 support and the SDPA
    backend switches; plus a measured n×n×n bf16 matmul rate, the ceiling the bench's MFU is read against."""
    out.update(torch=torch.__version__, cuda_build=torch.version.cuda, cuda_available=torch.cuda.is_available(),
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               threads=torch.get_num_threads())
    sdpa = {}
    for key, fn in (("flash_enabled", "flash_sdp_enabled"), ("efficient_enabled", "mem_efficient_sdp_enabled"),
                    ("cudnn_enabled", "cudnn_sdp_enabled"), ("math_enabled", "math_sdp_enabled"),
                    ("flash_available", "is_flash_attention_available")):
        f = getattr(torch.backends.cuda, fn, None)  # absent in some torch versions: recorded as None
        sdpa[key] = bool(f()) if f is not None else None
    out["sdpa"] = sdpa
    dev = device_of(s)
    name = None
    if dev.type == "cuda":
        out["device_count"] = torch.cuda.device_count()
        out["gpus"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["gpus"].append({"name": p.name, "memory_bytes": p.total_memory, "sm_count": p.multi_processor_count,
                                "capability": f"{p.major}.{p.minor}"})
        name = out["gpus"][0]["name"]
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
        out["free_memory_bytes"], _ = torch.cuda.mem_get_info(dev)
    else:
        out.update(device_count=0, gpus=[], bf16_supported=True)  # CPU autocast bf16 exists in every torch ≥ 2
    out["bf16_peak_flops_reference"] = reference_peak(name)
    n = s.matmul_size
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=dev).bfloat16()
    b = torch.randn(n, n, generator=g, device=dev).bfloat16()
    for _ in range(3):
        a @ b
    reps = 10
    ms = statistics.median(time_step(lambda: a @ b, dev) for _ in range(reps))
    out["matmul_bf16"] = {"n": n, "ms": ms, "tflops": 2 * n**3 / (ms / 1e3) / 1e12}
    if out["bf16_peak_flops_reference"]:
        out["matmul_bf16"]["fraction_of_peak"] = 2 * n**3 / (ms / 1e3) / out["bf16_peak_flops_reference"]


# ----------------------------------------------------------------------------- 2. bench

def bench(s: Settings, out: dict) -> None:
    """``alphaflow bench`` in-process at each (model, batch) of the mode: per variant ms, images/s, MFU (CUDA),
    peak memory and the time and FLOP ratios to flow matching; then the goals (a DiT-B/2 FM step at ≥ 40 % of
    the bf16 peak, MeanFlow within 1.45× of FM) as met / not met. MFU is against the H100/H200 dense bf16
    peak (another GPU is measured against the same number, flagged in ``peak_flops_source``)."""
    dev = device_of(s)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    peak = reference_peak(name)
    out["peak_flops"] = peak or H100_BF16_PEAK
    out["peak_flops_source"] = (f"H100/H200 dense bf16 ({name})" if peak
                                else f"H100 dense bf16; this is {name or 'a CPU'}")
    errors = []
    for model_name, size in s.bench:
        try:  # one model failing (e.g. out of memory at XL/2) keeps the other's numbers
            res = run_bench(model_name, batch=size, shape=s.shape, classes=s.classes, device=s.device,
                            precision="bf16" if s.bf16 else "fp32", rounds=s.bench_rounds, warmup=s.bench_warmup,
                            peak_flops=out["peak_flops"], seed=0)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{model_name}: {first_line(exc)}")
            out[model_name] = {"batch": size, "error": first_line(exc)}
            cleanup(s)
            continue
        meta = res.pop("meta")
        out[model_name] = {"batch": size, "precision": meta["precision"], "rounds": meta["rounds"],
                           "variants": res, "ratio_to_fm": {v: r["ratio"] for v, r in res.items()},
                           "cpu_targets": meta["targets"]}
        cleanup(s)
    first, _ = s.bench[0]
    variants = out[first].get("variants", {})
    mfu = variants.get("fm", {}).get("mfu")
    ratio = variants.get("mf_p100", {}).get("ratio")
    out["goals"] = [
        {"goal": f"{first} flow-matching step at >= {MFU_GOAL:.0%} of the bf16 peak (MFU)", "value": mfu,
         "bound": MFU_GOAL, "met": None if mfu is None else mfu >= MFU_GOAL,
         **({} if mfu is not None else {"note": "no MFU without CUDA"})},
        {"goal": f"{first} MeanFlow step (JVP on every row, mf_p100) within {MEANFLOW_RATIO_GOAL}x of flow matching",
         "value": ratio, "bound": MEANFLOW_RATIO_GOAL, "met": None if ratio is None else ratio <= MEANFLOW_RATIO_GOAL,
         "mf_p25_ratio": variants.get("mf_p25", {}).get("ratio")}]
    if errors:
        raise RuntimeError("; ".join(errors))


# ----------------------------------------------------------------------------- 3. train

def train_steps(s: Settings, dev: torch.device, init: dict[str, Tensor], objective, *, bf16: bool, steps: int,
                size: int, net_wrapper: Callable[[nn.Module], nn.Module] | None = None) -> dict[str, Any]:
    """``steps`` optimiser steps as the trainer takes them (autocast objective, float loss, Adam after the
    gradient hygiene) from ``init`` with fixed seeds; per step the loss, the unweighted mse, the wall time and
    whether every parameter got a finite gradient (checked before ``sanitize_and_clip`` hides NaNs)."""
    net = build_for_data(s.model, s.shape, s.classes).to(dev)
    net.load_state_dict(init)
    params = list(net.parameters())
    run = net if net_wrapper is None else net_wrapper(net)
    opt = build_optimizer(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)  # the B/2 recipe
    data_gen = torch.Generator(device=dev).manual_seed(1)
    gen = torch.Generator(device=dev).manual_seed(2)
    losses, mses, ms, finite_flags, missing = [], [], [], [], 0
    for step in range(steps):
        x, y = batch(s, dev, size, data_gen)
        sync(dev)
        t0 = time.perf_counter()
        with autocast(dev, bf16):
            terms = objective(run, x, y, step=step, generator=gen)
        loss = terms.loss.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        missing = max(missing, sum(p.grad is None for p in params))
        finite_flags.append(torch.stack([torch.isfinite(p.grad).all() for p in params if p.grad is not None]).all())
        sanitize_and_clip(params, 16.0)
        opt.step()
        sync(dev)
        ms.append((time.perf_counter() - t0) * 1e3)
        losses.append(loss.detach())
        mses.append(terms.components["mse"].detach().float().mean())
    zero_grads = sum(int(p.grad is not None and not bool(p.grad.any())) for p in params)
    result = {"loss": torch.stack(losses).tolist(), "mse": torch.stack(mses).tolist(), "ms": ms,
              "grads_finite": bool(torch.stack(finite_flags).all()), "params_missing_grad": missing,
              "params_zero_grad_last_step": zero_grads, "params": len(params)}
    result["net"] = net
    return result


def train(s: Settings, out: dict) -> None:
    """MeanFlow, α-Flow at α = 0.5 and α-Flow at α = 0 (MeanFlow's JVP target through α-Flow), each for
    ``train_steps`` at DiT-B/2 on synthetic latents in bf16 autocast and again in true fp32 (TF32 off; the
    bf16 run keeps TF32 on, as training does) from the same initial weights (DiT's own zero-init start) and
    seeds: a few losses, the max relative bf16-vs-fp32 difference of the loss and of the unweighted mse (the
    adaptive weight pins the loss near 1, the mse shows the drift), that every parameter got a finite
    gradient on every step, and the median step time (optimiser step included). Fails on a non-finite loss
    or gradient, or a parameter left without gradient."""
    dev = device_of(s)
    init = model(s, nudge=False).to(dev).state_dict()
    steps = s.train_steps
    shown = sorted({0, 1, steps // 5, steps // 2, steps - 1})
    problems = []
    for name, overrides in TRAIN_RUNS.items():
        objective = objective_for(overrides, steps)
        row: dict[str, Any] = {}
        runs = {}
        for precision in ("bf16", "fp32"):
            with tf32(precision == "bf16"):  # bf16 runs as training does (TF32 on); the reference is true fp32
                r = train_steps(s, dev, init, objective, bf16=precision == "bf16", steps=steps, size=s.train_batch)
            r.pop("net")
            runs[precision] = r
            tail_ms = statistics.median(r["ms"][1:] or r["ms"])  # the first step pays for kernel selection
            row[precision] = {"losses_at_step": {str(i + 1): r["loss"][i] for i in shown},
                              "mse_at_step": {str(i + 1): r["mse"][i] for i in shown},
                              "step_ms": tail_ms, "images_per_s": s.train_batch / (tail_ms / 1e3),
                              "grads_finite": r["grads_finite"], "params_missing_grad": r["params_missing_grad"],
                              "params_zero_grad_last_step": r["params_zero_grad_last_step"], "params": r["params"]}
            if not all(math.isfinite(v) for v in r["loss"]):
                problems.append(f"{name} {precision}: non-finite loss")
            if not r["grads_finite"] or r["params_missing_grad"]:
                problems.append(f"{name} {precision}: {r['params_missing_grad']} parameters without gradient, "
                                f"grads finite: {r['grads_finite']}")
            cleanup(s)
        for key in ("loss", "mse"):
            diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(runs["bf16"][key], runs["fp32"][key])]
            row[f"max_rel_diff_{key}"] = max(diffs)
        row["bf16_speedup"] = row["fp32"]["step_ms"] / row["bf16"]["step_ms"]
        out[name] = row
    out["steps"], out["batch"], out["model"] = steps, s.train_batch, s.model
    if problems:
        raise FloatingPointError("; ".join(problems))


# ----------------------------------------------------------------------------- 4. attention

def _forward_backward(net: nn.Module, inputs: tuple, backends: list[SDPBackend], bf16: bool,
                      dev: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    net.zero_grad(set_to_none=True)
    with sdpa_kernel(backends), autocast(dev, bf16):
        u = net(*inputs)
    u.float().square().mean().backward()
    return u.detach().float(), {n: p.grad.detach().float().clone() for n, p in net.named_parameters()}


@contextlib.contextmanager
def stock_linear() -> Iterator[None]:
    """The DiT's ``Linear`` as plain ``nn.Linear`` under forward AD too, so ``torch.func.jvp`` is the stock
    reference and not the project's own Linear rule (as tests/test_fast_jvp.py does)."""
    from alphaflow.models.tangent import Linear

    saved = Linear.forward
    Linear.forward = nn.Linear.forward
    try:
        yield
    finally:
        Linear.forward = saved


def attention(s: Settings, out: dict) -> None:
    """The DiT's forward and backward under each fused SDPA backend (flash, efficient, cuDNN) against the
    MATH backend, same weights, inputs and autocast: max abs and relative difference of the output and of
    every parameter's gradient (relative: ‖Δ‖/‖ref‖ of the worst parameter). An unavailable backend is skipped
    with torch's reason. Then the tangent mode ``net(z, r, t, y, tangent=...)`` against stock
    ``torch.func.jvp`` under MATH in true fp32, on all rows and on a row subset, and the bf16 tangent mode
    with the default (fused) backends against that fp32 reference. Fails when a backend errs for another
    reason than being unavailable, or a number is non-finite; tolerances are information."""
    dev = device_of(s)
    net = model(s).to(dev)
    g = torch.Generator(device=dev).manual_seed(3)
    B = s.attention_batch
    x, y = batch(s, dev, B, g)
    t = torch.rand(B, generator=g, device=dev) * 0.8 + 0.1
    r = t * torch.rand(B, generator=g, device=dev)
    precision = "bf16" if s.bf16 else "fp32"
    ref_u, ref_g = _forward_backward(net, (x, r, t, y), [SDPBackend.MATH], s.bf16, dev)
    backends, problems = {}, []
    for name, backend in FUSED_BACKENDS.items():
        try:
            with warnings.catch_warnings(record=True) as caught:  # torch says why a backend declines as warnings
                warnings.simplefilter("always")
                u, grads = _forward_backward(net, (x, r, t, y), [backend], s.bf16, dev)
        except RuntimeError as exc:
            text = str(exc).lower()
            if "no available kernel" in text or "no viable backend" in text:  # not built / not for this GPU or dtype
                why = sorted({str(w.message).strip().splitlines()[0] for w in caught})
                backends[name] = {"status": "skipped", "reason": first_line(exc), "torch_warnings": why[:6]}
            else:
                backends[name] = {"status": "fail", "error": first_line(exc)}
                problems.append(f"{name}: {first_line(exc)}")
            continue
        per_param = {n: rel(grads[n], ref_g[n]) for n in grads if float(ref_g[n].norm()) > 0}
        worst = max(per_param, key=per_param.get)
        row = {"status": "ok", "out_max_abs": float((u - ref_u).abs().max()), "out_rel": rel(u, ref_u),
               "grad_max_abs": max(float((grads[n] - ref_g[n]).abs().max()) for n in grads),
               "grad_max_rel": per_param[worst], "grad_worst_param": worst}
        row["within_tolerance"] = row["out_rel"] <= TOLERANCE[precision] and row["grad_max_rel"] <= TOLERANCE[precision]
        check_finite(f"attention {name}", row)
        backends[name] = row
    out["backends"], out["precision"], out["tolerance"] = backends, precision, TOLERANCE[precision]
    out["tangent"] = _tangent_check(net, x, r, t, y, dev, s.bf16)
    if problems:
        raise RuntimeError("; ".join(problems))


def _tangent_check(net: nn.Module, z: Tensor, r: Tensor, t: Tensor, y: Tensor, dev: torch.device,
                   bf16: bool) -> dict[str, Any]:
    g = torch.Generator(device=dev).manual_seed(5)
    B = z.shape[0]
    cases = {"all_rows": None, "row_subset": torch.arange(0, B, 2, device=dev)}
    out: dict[str, Any] = {}
    with tf32(False), torch.no_grad():
        for case, rows in cases.items():
            idx = torch.arange(B, device=dev) if rows is None else rows
            P = idx.shape[0]
            dz = torch.randn(P, *z.shape[1:], generator=g, device=dev)
            dr, dt = torch.zeros(P, device=dev), torch.ones(P, device=dev)
            with sdpa_kernel([SDPBackend.MATH]):
                u, du = net(z, r, t, y, tangent=(rows, dz, dr, dt))
                with stock_linear():
                    ref_u, ref_du = torch.func.jvp(lambda a, b, c: net(a, b, c, y[idx]), (z[idx], r[idx], t[idx]),
                                                   (dz, dr, dt))
            row = {"rows": P, "u_max_abs": float((u[idx] - ref_u).abs().max()),
                   "du_max_abs": float((du - ref_du).abs().max()), "du_rel": rel(du, ref_du),
                   "du_norm": float(ref_du.norm())}
            row["within_tolerance"] = row["du_rel"] <= TOLERANCE["fp32"]
            if bf16:  # what training runs: bf16 autocast, fused attention in the primal
                with autocast(dev, True):
                    _, du16 = net(z, r, t, y, tangent=(rows, dz, dr, dt))
                row["bf16_du_rel"] = rel(du16, ref_du)
                row["bf16_within_tolerance"] = row["bf16_du_rel"] <= TOLERANCE["bf16"]
            check_finite(f"tangent {case}", row)
            out[case] = row
    return out


# ----------------------------------------------------------------------------- 5. probe

def probe(s: Settings, out: dict) -> None:
    """One gradient probe (``alphaflow.probes.probe_gradients``) as ``alphaflow probe`` draws it (MeanFlow
    drawer, r < t on every row, the run's α-Flow objective as the ``loss`` term) at the mode's model and probe
    batch, in fp32 with TF32 as the trainer sets it: the cosines and gradient norms, the time of one probe
    after a warm-up and its peak memory. Fails on a non-finite value."""
    dev = device_of(s)
    net = model(s).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x, y = batch(s, dev, s.probe_batch, g)
    objective = objective_for([], 1000)
    sample = probe_sample(x, y, objective, generator=g)
    values: dict[str, float] = {}

    def call() -> None:
        values.update(probe_gradients(net, x, sample, guidance=objective.guidance, training=objective, step=0))

    with tf32(True):
        call()  # warm-up: kernel selection, allocator growth
        out["ms"] = time_step(call, dev)
        out["peak_mem_bytes"], out["peak_mem_total_bytes"] = peak_memory(call, dev)
    out["cosines"] = {k: v for k, v in values.items() if k.startswith("cos_")}
    out["gradnorms"] = {k: v for k, v in values.items() if k.startswith("gradnorm_")}
    out["losses"] = {k: v for k, v in values.items() if k.startswith("loss_")}
    out["batch"], out["model"] = s.probe_batch, s.model
    check_finite("probe", values)


# ----------------------------------------------------------------------------- 6. compile

def compile_check(s: Settings, out: dict) -> None:
    """``torch.compile`` of the model as the trainer does it (``torch.compiler.reset()`` then
    ``torch.compile(model)``; the objective calls the prediction, with its tangent mode, through it) for
    ``compile_steps`` MeanFlow steps against the same steps eager, same initial weights and seeds: losses and
    mse of both and their max relative difference, the compile time (first compiled step less an eager step),
    the compiled and eager step times over the second half of the steps, and how many graphs dynamo built."""
    dev = device_of(s)
    from torch._dynamo.utils import counters  # after the device check: importing dynamo takes seconds

    init = model(s).to(dev).state_dict()
    objective = objective_for(TRAIN_RUNS["meanflow"], s.compile_steps)
    kw = dict(bf16=s.bf16, steps=s.compile_steps, size=s.compile_batch)
    with tf32(True):
        eager = train_steps(s, dev, init, objective, **kw)
        eager.pop("net")
        torch.compiler.reset()
        counters.clear()
        try:
            compiled = train_steps(s, dev, init, objective, **kw,
                                   net_wrapper=lambda n: torch.compile(n, backend=s.compile_backend))
            compiled.pop("net")
        finally:
            out["unique_graphs"] = int(counters["stats"]["unique_graphs"])
            torch.compiler.reset()
    half = s.compile_steps // 2
    eager_ms, compiled_ms = statistics.median(eager["ms"][half:]), statistics.median(compiled["ms"][half:])
    out.update(backend=s.compile_backend, steps=s.compile_steps, precision="bf16" if s.bf16 else "fp32",
               eager_loss=eager["loss"], compiled_loss=compiled["loss"], eager_mse=eager["mse"],
               compiled_mse=compiled["mse"], compile_seconds=(compiled["ms"][0] - eager_ms) / 1e3,
               eager_step_ms=eager_ms, compiled_step_ms=compiled_ms, speedup=eager_ms / compiled_ms,
               grads_finite=compiled["grads_finite"])
    for key in ("loss", "mse"):
        out[f"max_rel_diff_{key}"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(compiled[key], eager[key]))
    out["within_tolerance"] = out["max_rel_diff_mse"] <= TOLERANCE[out["precision"]]
    if not all(math.isfinite(v) for v in compiled["loss"]) or not compiled["grads_finite"]:
        raise FloatingPointError("the compiled steps gave a non-finite loss or gradient")


# ----------------------------------------------------------------------------- 7. memory and 8. ddp

PLAN_ATTRIBUTES = ("peak_bytes", "peak", "total_bytes", "total", "bytes")  # tried in order on a phase entry


def _planned_peak(entry: Any) -> tuple[int, str]:
    """(bytes, where they came from) of one ``MemoryPlan.phases`` entry: a number, or its first
    ``PLAN_ATTRIBUTES`` attribute / key."""
    if isinstance(entry, (int, float)):
        return int(entry), "value"
    for attr in PLAN_ATTRIBUTES:
        value = entry.get(attr) if isinstance(entry, dict) else getattr(entry, attr, None)
        if isinstance(value, (int, float)):
            return int(value), attr
    raise TypeError(f"a memory-plan phase entry {type(entry).__name__} has none of {PLAN_ATTRIBUTES}")


def write_latents(folder: Path, s: Settings, num: int = 64) -> Path:
    """A small random latents folder in the format ``extract_latents`` writes (float16 mean / log-variance)."""
    from alphaflow.data.latents import FORMAT, LABELS, LOGVAR, MEAN, META, VERSION

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    np.save(folder / MEAN, rng.standard_normal((num, *s.shape)).astype(np.float16))
    np.save(folder / LOGVAR, (rng.standard_normal((num, *s.shape)) * 0.1 - 2).astype(np.float16))
    np.save(folder / LABELS, rng.integers(0, s.classes, num).astype(np.int64))
    (folder / META).write_text(json.dumps({"format": FORMAT, "version": VERSION, "num": num, "shape": list(s.shape),
                                           "num_classes": s.classes, "classes": [], "dtype": "float16"}))
    return folder


def _measure(fn: Callable[[], Any], dev: torch.device) -> tuple[int, Any]:
    """(peak bytes allocated while ``fn`` ran, its result). CUDA: ``max_memory_allocated`` after a reset, so
    whatever was resident when it began counts too; CPU: the bench's allocator trace (above the start)."""
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        result = fn()
        sync(dev)
        return torch.cuda.max_memory_allocated(dev), result
    box: list = []
    peak, _ = peak_memory(lambda: box.append(fn()), dev)
    return peak, box[0]


def _resident_bytes(*objects: Any) -> int:
    """Bytes of the tensors of modules, optimisers and tensors (the CPU's stand-in for memory_allocated)."""
    total = 0
    for obj in objects:
        if isinstance(obj, nn.Module):
            tensors = [*obj.parameters(), *obj.buffers(), *(p.grad for p in obj.parameters() if p.grad is not None)]
        elif isinstance(obj, torch.optim.Optimizer):
            tensors = [v for st in obj.state.values() for v in st.values() if isinstance(v, Tensor)]
        else:
            tensors = [obj]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _train_phase(cfg, dev: torch.device, steps: int = 2) -> dict[str, Any]:
    """The trainer's set-up and ``steps`` steps (dataset, model, EMA, Adam, autocast objective, hygiene, EMA
    update), keeping everything a run keeps resident; the second step runs with Adam's moments allocated."""
    from alphaflow.data import build_dataset
    from alphaflow.optim import EMA

    data = build_dataset(cfg.data.name, path=cfg.data.path, resolution=cfg.data.resolution, seed=cfg.seed)
    data.fit_stats(torch.Generator().manual_seed(cfg.seed), cfg.data.stats_samples)
    torch.manual_seed(cfg.seed)
    net = build_for_data(cfg.model.name, data.shape, data.num_classes, time_scale=cfg.model.time_scale).to(dev)
    ema = EMA(net, cfg.ema.halflife_steps, cfg.ema.rampup_ratio)
    objective = objective_from_options(cfg.objective, cfg.train.steps)
    o = cfg.optim
    opt = build_optimizer(net.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and dev.type == "cuda")
    params = list(net.parameters())
    for step in range(steps):
        raw, labels = data.get(torch.arange(cfg.train.batch_size) % len(data))
        x, y = data.prepare(raw.to(dev), gen), labels.to(dev)
        with autocast(dev, bf16):
            terms = objective(net, x, y, step=step, generator=gen)
        loss = terms.loss.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sanitize_and_clip(params, o.grad_clip)
        opt.step()
        ema.update(net, step + 1)
        del terms, loss
    return {"data": data, "net": net, "ema": ema, "opt": opt, "objective": objective, "x": x, "y": y}


def _probe_call(cfg, state: dict[str, Any], x: Tensor, y: Tensor, step: int) -> dict[str, float]:
    objective = state["objective"]
    sample = probe_sample(x, y, objective, generator=torch.Generator(device=x.device).manual_seed(0))
    return probe_gradients(state["net"], x, sample, guidance=objective.guidance, training=objective if cfg.probe.loss else None,
                           step=step, parts=cfg.probe.parts)


def memory(s: Settings, out: dict) -> None:
    """``alphaflow.memplan.plan_memory(cfg, world_size=1)`` for a DiT-B/2 latents run against the peaks measured
    when those phases run for real (peak statistics reset between phases): "train" (the trainer's set-up and two
    steps from an empty device), "online_probe" (a probe with the training state resident) and "offline_probe"
    (``alphaflow probe``: a fresh model and one probe batch). Reports planned, measured and planned/measured."""
    dev = device_of(s)
    try:
        memplan = importlib.import_module("alphaflow.memplan")
    except ModuleNotFoundError as exc:
        if exc.name != "alphaflow.memplan":
            raise
        raise Skip("alphaflow/memplan.py (plan_memory) is not in this tree yet") from None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"model.name={s.model}", "data.name=latents",
                                 f"data.path={write_latents(Path(tmp) / 'latents', s)}", "data.stats_samples=64",
                                 f"data.resolution={8 * s.shape[-1]}",  # the plan's latent grid is resolution/8
                                 f"train.batch_size={s.memory_batch}", f"probe.batch_size={s.memory_batch}",
                                 f"train.device={s.device}", "train.steps=1000", "probe.every=100",
                                 "train.log_every=100"])
        plan = memplan.plan_memory(cfg, world_size=1, device=s.device)
        planned, source = {}, {}
        for phase, entry in plan.phases.items():
            planned[phase], source[phase] = _planned_peak(entry)
        out["planned_bytes"], out["plan_attribute"] = planned, source
        cleanup(s)
        measured: dict[str, int] = {}
        with tf32(True):
            measured["train"], state = _measure(lambda: _train_phase(cfg, dev), dev)
            peak, _ = _measure(lambda: _probe_call(cfg, state, state["x"], state["y"], 2), dev)
            # CUDA's peak already counts the resident training state; the CPU trace starts above it
            measured["online_probe"] = peak if dev.type == "cuda" else peak + _resident_bytes(
                state["net"], state["ema"].model, state["opt"], state["x"])
            weights = {k: v.detach().cpu() for k, v in state["net"].state_dict().items()}
            data, objective = state["data"], state["objective"]
            del state
            cleanup(s)
            out["base_bytes_before_offline"] = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0

            def offline() -> None:  # probe_run: a fresh net with the checkpoint's weights, one batch
                net = build_for_data(cfg.model.name, data.shape, data.num_classes).to(dev)
                net.load_state_dict(weights)
                raw, labels = data.get(torch.arange(cfg.probe.batch_size) % len(data))
                x = data.prepare(raw.to(dev), torch.Generator(device=dev).manual_seed(0))
                _probe_call(cfg, {"net": net, "objective": objective}, x, labels.to(dev), 2)

            measured["offline_probe"], _ = _measure(offline, dev)
    out["measured_bytes"] = measured
    out["planned_over_measured"] = {k: planned[k] / measured[k] for k in measured if k in planned and measured[k]}
    out["batch"], out["model"] = s.memory_batch, s.model
    missing = [k for k in ("train", "offline_probe") if k not in planned]
    if missing:
        raise KeyError(f"the memory plan has no phase {missing}; it has {sorted(planned)}")


def ddp(s: Settings, out: dict) -> None:
    """A 2-rank NCCL DDP run of the project's trainer (``alphaflow.trainer.train``) on the embedded digits:
    ``ddp_steps`` steps, a log tick and an online probe every half; the run's metrics rows (loss, images/s,
    the probe's cosines averaged over ranks), its wall time and its DONE marker. Needs ≥ 2 GPUs."""
    if s.device != "cuda":
        raise Skip("NCCL DDP needs >= 2 CUDA GPUs; the CPU rehearsal has none (tests/test_gpucheck.py runs the same "
                   "2-rank launch with gloo on the CPU)")
    device_of(s)
    n = torch.cuda.device_count()
    if n < 2:
        raise Skip(f"a 2-rank NCCL run needs >= 2 GPUs; this machine has {n}")
    with tempfile.TemporaryDirectory() as tmp:
        out.update(run_ddp(Path(tmp) / "ddp", device="cuda", model_name=s.ddp_model, steps=s.ddp_steps,
                           batch_size=s.ddp_batch))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    """One rank: the torchrun environment, then the trainer (``init_distributed`` reads it)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from alphaflow.trainer import train as train_run

    train_run(load_config(None, overrides), out, log=lambda _msg: None)


def run_ddp(folder: Path, *, device: str, model_name: str, steps: int, batch_size: int, world: int = 2,
            extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train ``world`` ranks (spawned processes) into ``folder`` and read back what the run wrote; raises
    when a rank fails, a tick or probe row is missing, or a logged number is non-finite."""
    from alphaflow.runfolder import RunFolder

    half = max(steps // 2, 1)
    overrides = [f"model.name={model_name}", f"train.steps={steps}", f"train.log_every={half}",
                 f"probe.every={half}", f"train.device={device}", f"train.batch_size={batch_size}",
                 f"train.ckpt_every={steps}", "train.sample_every=0", "sample.num=8", "sample.nfe=[1]", *extra]
    start = time.perf_counter()
    torch.multiprocessing.start_processes(_ddp_worker, args=(world, _free_port(), overrides, str(folder)),
                                          nprocs=world, join=True, start_method="spawn")
    wall = time.perf_counter() - start
    run = RunFolder(folder)
    rows = run.read_metrics()
    result = {"world_size": world, "steps": steps, "wall_seconds": wall, "done": run.is_done(),
              "rows": [{k: v for k, v in row.items() if k in ("step", "loss", "loss_mse", "grad_norm", "images_per_sec")
                        or k in ("probe_cos_tfm_tcc", "probe_cos_fmb_tcc", "probe_gradnorm_mf")} for row in rows]}
    probe_rows = [row for row in rows if any(k.startswith("probe_") for k in row)]
    if not result["done"] or [row["step"] for row in rows] != list(range(half, steps + 1, half)) or not probe_rows:
        raise RuntimeError(f"the DDP run is incomplete: done={result['done']}, metrics rows at steps "
                           f"{[row['step'] for row in rows]}, {len(probe_rows)} with a probe")
    for row in rows:
        check_finite(f"ddp metrics at step {row['step']}",
                     {k: v for k, v in row.items() if k.startswith(("loss", "probe_cos"))})
    return result


SECTION_FUNCTIONS: dict[str, Callable[[Settings, dict], None]] = {
    "environment": environment, "bench": bench, "train": train, "attention": attention, "probe": probe,
    "compile": compile_check, "memory": memory, "ddp": ddp,
}
