"""Sections environment, bench, train and attention of ``alphaflow doctor``."""

from __future__ import annotations


import contextlib
import math
import statistics
import warnings
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.perf.bench import H100_BF16_PEAK, run_bench, time_step
from alphaflow.perf.gpucheck.settings import Settings

from alphaflow.perf.gpucheck.helpers import (FUSED_BACKENDS, MEANFLOW_RATIO_GOAL, MFU_GOAL, TOLERANCE, TRAIN_RUNS, autocast,
                                            batch, check_finite, cleanup, device_of, first_line, model, objective_for,
                                            reference_peak, rel, tf32, train_steps)


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
