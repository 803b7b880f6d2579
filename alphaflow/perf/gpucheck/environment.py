"""Section ``environment`` of ``alphaflow doctor``: what machine this is, and two measured ceilings."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from typing import Any

import torch

from alphaflow.perf.gpucheck.helpers import config_has, device_of, reference_peak, time_ms
from alphaflow.perf.gpucheck.live import Results, attempt
from alphaflow.perf.gpucheck.settings import Settings


def environment(s: Settings, out: Results) -> None:
    """Versions (torch, CUDA, cuDNN, NCCL, Triton when importable), the GPUs (name, memory, SMs, capability),
    the SDPA backend switches, which features this tree has (``model.attention``, ``train.micro_batch``), then two
    measured ceilings: an n×n×n bf16 matmul in TFLOP/s (what MFU is read against) and a device-to-device copy in
    GB/s (bytes read plus bytes written per second)."""
    out.update(torch=torch.__version__, cuda_build=torch.version.cuda, cuda_available=torch.cuda.is_available(),
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               threads=torch.get_num_threads())
    out["triton"] = _triton_version()
    out["features"] = {"model.attention": config_has("model", "attention"),
                       "train.micro_batch": config_has("train", "micro_batch"),
                       "jvp_attention_module": importlib.util.find_spec("alphaflow.models.jvp_attention") is not None}
    sdpa = {}
    for key, fn in (("flash_enabled", "flash_sdp_enabled"), ("efficient_enabled", "mem_efficient_sdp_enabled"),
                    ("cudnn_enabled", "cudnn_sdp_enabled"), ("math_enabled", "math_sdp_enabled"),
                    ("flash_available", "is_flash_attention_available")):
        f = getattr(torch.backends.cuda, fn, None)  # absent in some torch versions: recorded as None
        try:
            sdpa[key] = bool(f()) if f is not None else None
        except Exception:  # noqa: BLE001
            sdpa[key] = None
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
        try:
            out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:  # noqa: BLE001 — a build without NCCL
            out["nccl"] = None
        out["nvidia_smi"] = _nvidia_smi()
    else:
        out.update(device_count=0, gpus=[], bf16_supported=True)  # CPU autocast bf16 exists in every torch >= 2
    out["bf16_peak_flops_reference"] = reference_peak(name)
    out.flush()
    attempt(out, "matmul_bf16", lambda: _matmul(s, dev, out["bf16_peak_flops_reference"]))
    attempt(out, "copy", lambda: _copy(s, dev))


def _triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton

        return triton.__version__
    except Exception as exc:  # noqa: BLE001 — installed but broken: say so
        return f"import failed: {type(exc).__name__}: {exc}"


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
        return proc.stdout.strip() or proc.stderr.strip()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def _matmul(s: Settings, dev: torch.device, peak: float | None) -> dict[str, Any]:
    n = s.matmul_size
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=dev).bfloat16()
    b = torch.randn(n, n, generator=g, device=dev).bfloat16()
    ms = time_ms(lambda: a @ b, dev, reps=10, warmup=3)
    result = {"n": n, "ms": ms, "tflops": 2 * n ** 3 / (ms / 1e3) / 1e12}
    if peak:
        result["fraction_of_peak"] = 2 * n ** 3 / (ms / 1e3) / peak
    return result


def _copy(s: Settings, dev: torch.device) -> dict[str, Any]:
    numel = s.copy_mib * 2 ** 20 // 4
    src = torch.randn(numel, device=dev)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), dev, reps=10, warmup=2)
    nbytes = 2 * numel * 4  # read once, written once
    return {"mib": s.copy_mib, "ms": ms, "gb_per_s": nbytes / (ms / 1e3) / 1e9}
