"""Sections ``kernel`` and ``tangent`` of ``alphaflow doctor``: the JVP of attention and of the whole DiT.

On the CPU rehearsal the Triton kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, set in this
section's own process) at tiny shapes, so the code path is exercised; its times mean nothing there.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.perf.gpucheck.helpers import (TOLERANCE, check_finite, cleanup, config_has, device_of, max_abs, model,
                                             rel, stock_linear, tf32, time_ms)
from alphaflow.perf.gpucheck.live import Results, attempt
from alphaflow.perf.gpucheck.settings import Settings, Skip

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _kernel_module(s: Settings) -> ModuleType:
    """``alphaflow.models.jvp_attention``, or Skip naming what is missing (the module, Triton, on the CPU an
    interpreter that can run it: ``interpreter_problem``)."""
    try:
        from alphaflow.models import jvp_attention
    except ModuleNotFoundError as exc:
        if exc.name not in ("alphaflow.models.jvp_attention", "triton"):
            raise
        raise Skip(f"alphaflow/models/jvp_attention.py cannot be imported here ({exc})") from None
    if not jvp_attention.triton_available():
        raise Skip("triton is not importable, so the fused JVP-attention kernel cannot run")
    if s.device == "cpu":
        if problem := jvp_attention.interpreter_problem():
            raise Skip(problem)
        os.environ["TRITON_INTERPRET"] = "1"  # this process only: CPU tensors run under Triton's interpreter
    return jvp_attention


def _inputs(G: int, N: int, d: int, dtype: torch.dtype, dev: torch.device, seed: int = 0) -> list[Tensor]:
    g = torch.Generator(device=dev).manual_seed(seed)
    return [torch.randn(G, N, d, generator=g, device=dev).to(dtype) for _ in range(6)]


def _accuracy(jvp_attention: ModuleType, s: Settings, G: int, N: int, d: int, dtype: str,
              dev: torch.device) -> dict[str, Any]:
    """The kernel's (o, ȯ) against float64 math attention and its tangent (``attention_jvp``)."""
    from alphaflow.models.tangent import attention_jvp

    args = _inputs(G, N, d, DTYPES[dtype], dev)
    block_m, block_n = s.kernel_blocks
    o, do = jvp_attention.attention_with_tangent(*args, block_m=block_m, block_n=block_n)
    q, k, v, dq, dk, dv = (a.double() for a in args)
    o_ref = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5, dim=-1) @ v
    do_ref = attention_jvp(q, k, v, dq, dk, dv)
    row = {"o_max_abs": max_abs(o, o_ref), "o_rel": rel(o, o_ref), "do_max_abs": max_abs(do, do_ref),
           "do_rel": rel(do, do_ref), "tolerance": TOLERANCE[dtype]}
    row["within_tolerance"] = row["o_rel"] <= TOLERANCE[dtype] and row["do_rel"] <= TOLERANCE[dtype]
    check_finite(f"kernel {dtype}", row)
    return row


def _timing(jvp_attention: ModuleType, s: Settings, G: int, N: int, d: int, dev: torch.device) -> dict[str, Any]:
    """bf16: the kernel's (o, ȯ) against what the DiT runs without it, SDPA for o plus math ``attention_jvp``."""
    from alphaflow.models.tangent import attention_jvp

    if dev.type != "cuda":
        raise Skip("times mean something on CUDA only (the rehearsal interprets the kernel)")
    q, k, v, dq, dk, dv = _inputs(G, N, d, torch.bfloat16, dev)
    with torch.no_grad():
        kernel = time_ms(lambda: jvp_attention.attention_with_tangent(q, k, v, dq, dk, dv), dev, reps=s.kernel_reps,
                         warmup=2)
        sdpa = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), dev, reps=s.kernel_reps, warmup=2)
        math = time_ms(lambda: attention_jvp(q, k, v, dq, dk, dv), dev, reps=s.kernel_reps, warmup=2)
    flops = 6 * 2 * G * N * N * d  # six N×N×d products (alphaflow.perf.census.attention_jvp_flops)
    return {"kernel_ms": kernel, "sdpa_ms": sdpa, "math_jvp_ms": math,
            "speedup_vs_sdpa_plus_math": (sdpa + math) / kernel,
            "kernel_tflops": flops / (kernel / 1e3) / 1e12}


def kernel(s: Settings, out: Results) -> None:
    """The Triton kernel ``attention_with_tangent(q, k, v, dq, dk, dv) -> (o, ȯ)`` against math attention in
    float64, in bf16 and fp32: max abs and relative errors of o and ȯ; on CUDA the bf16 times of the kernel, of
    SDPA (o alone) and of the math tangent, at the shapes of B/2 (G = 32·12 heads, N = 256, d = 64) and XL/2
    (G = 32·16, d = 72)."""
    dev = device_of(s)
    jvp_attention = _kernel_module(s)
    out["interpreted"] = s.device == "cpu"
    for name, G, N, d in s.kernel_shapes:
        out[name] = {"G": G, "N": N, "d": d}
        for dtype in ("bf16", "fp32"):
            attempt(out[name], dtype, lambda: _accuracy(jvp_attention, s, G, N, d, dtype, dev),
                    cleanup=lambda: cleanup(s))
        attempt(out[name], "timing", lambda: _timing(jvp_attention, s, G, N, d, dev), cleanup=lambda: cleanup(s))
        out.flush()
    for name, *_ in s.kernel_shapes:
        for key, row in out[name].items():
            if isinstance(row, dict) and row.get("status") == "fail":
                out.failures.append(f"{name} {key}: {row.get('error')}")


def _attention_model(name: str, s: Settings, attention: str | None, init: dict[str, Tensor] | None) -> nn.Module:
    """The DiT (nudged off its zero init) with ``model.attention=attention`` when given (the option as a run's
    config builds it), then ``init``'s weights when given."""
    options: dict[str, Any] = {}
    if attention is not None:
        from alphaflow.config import load_config
        from alphaflow.models import model_options

        options = model_options(load_config(None, [f"model.name={name}", f"model.attention={attention}"]).model)
    net = model(name, s, **options)
    if init is not None:
        net.load_state_dict(init)
    return net


def _tangent_rows(net: nn.Module, ref: nn.Module, dev: torch.device, B: int, s: Settings,
                  bf16: bool) -> dict[str, Any]:
    """``net``'s tangent mode against ``torch.func.jvp`` of ``ref`` (same weights; MATH attention, stock Linear,
    true fp32) on all rows and on every other row; with ``bf16`` the tangent mode under bf16 autocast."""
    g = torch.Generator(device=dev).manual_seed(3)
    z = torch.randn(B, *s.shape, generator=g, device=dev)
    y = torch.randint(0, s.classes, (B,), generator=g, device=dev)
    t = torch.rand(B, generator=g, device=dev) * 0.8 + 0.1
    r = t * torch.rand(B, generator=g, device=dev)
    result: dict[str, Any] = {}
    with tf32(False), torch.no_grad():
        for case, rows in (("all_rows", None), ("row_subset", torch.arange(0, B, 2, device=dev))):
            idx = torch.arange(B, device=dev) if rows is None else rows
            P = idx.shape[0]
            dz = torch.randn(P, *s.shape, generator=g, device=dev)
            dr, dt = torch.zeros(P, device=dev), torch.ones(P, device=dev)
            with sdpa_kernel([SDPBackend.MATH]), stock_linear():
                ref_u, ref_du = cast(tuple[Tensor, Tensor],  # jvp without has_aux: (output, tangent output)
                                     torch.func.jvp(lambda a, b, c: ref(a, b, c, y[idx]), (z[idx], r[idx], t[idx]),
                                                    (dz, dr, dt)))
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                u, du = net(z, r, t, y, tangent=(rows, dz, dr, dt))
            row = {"rows": P, "u_rel": rel(u[idx], ref_u), "du_max_abs": max_abs(du, ref_du), "du_rel": rel(du, ref_du),
                   "du_norm": float(ref_du.norm())}
            row["within_tolerance"] = row["du_rel"] <= TOLERANCE["bf16" if bf16 else "fp32"]
            check_finite(f"tangent {case}", row)
            result[case] = row
    return result


def tangent(s: Settings, out: Results) -> None:
    """The DiT's tangent mode ``net(z, r, t, y, tangent=(rows, dz, dr, dt))`` against stock ``torch.func.jvp``
    (MATH attention, true fp32) at each model of the mode (B/2, XL/2), in fp32 and under bf16 autocast; with
    ``model.attention`` in this tree, once per attention choice (math, triton): relative errors of u and du."""
    dev = device_of(s)
    has_option = config_has("model", "attention")
    out["model_attention_option"] = has_option
    choices: list[str | None] = ["math", "triton"] if has_option else [None]
    if has_option and s.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # this process only
    for name, B in s.tangent_models:
        entry = out.setdefault(name, {"batch": B})
        built: dict[str, nn.Module] = {}
        attempt(entry, "build", lambda: built.update(ref=_attention_model(name, s, "math" if has_option else None,
                                                                        None).to(dev)) or {},
                cleanup=lambda: cleanup(s))
        if "ref" not in built:
            continue  # e.g. out of memory: this model's cases fail, the next model runs
        ref = built.pop("ref")
        init = ref.state_dict()
        for attention in choices:
            label = attention or "default"

            def case(bf16: bool, attention: str | None = attention) -> dict[str, Any]:
                if attention == "triton":
                    _kernel_module(s)  # Skip, with the reason, where the kernel cannot run here
                net = ref if attention in (None, "math") else _attention_model(name, s, attention, init).to(dev)
                return _tangent_rows(net, ref, dev, B, s, bf16)

            for precision in ("fp32", "bf16"):
                attempt(entry, f"{label}_{precision}", lambda: case(precision == "bf16"), cleanup=lambda: cleanup(s))
        del ref, init
        cleanup(s)
        out.flush()
    for name, _ in s.tangent_models:
        for key, row in out[name].items():
            if isinstance(row, dict) and row.get("status") == "fail":
                out.failures.append(f"{name} {key}: {row.get('error')}")
