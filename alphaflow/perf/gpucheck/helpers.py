"""What the sections of ``alphaflow doctor`` share: the device, clean-up, timing, comparisons (imports torch).

Each section ``name(settings, out)`` fills ``out`` (``live.Results``) as it measures and runs each measurement
through ``live.attempt``; it raises ``Skip`` when it cannot run here. Goals (MFU, ratios, tolerances) are reported
as met / not met and never fail a section; a measurement fails on errors and on non-finite numbers.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import statistics
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from alphaflow.perf.gpucheck.settings import H100_BF16_PEAK, Settings, Skip

GIB = 2 ** 30
TOLERANCE = {"bf16": 5e-2, "fp32": 1e-3}  # information only: relative (norm-wise) disagreement expected at most


def device_of(s: Settings) -> torch.device:
    """The mode's device; on the GPU mode a missing CUDA is the failure this whole check exists to find."""
    if s.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"CUDA is not available to this torch ({torch.__version__}, built for CUDA "
                           f"{torch.version.cuda}); nothing on the GPU path can run")
    return torch.device(s.device)


def cuda_only(s: Settings, what: str) -> None:
    """Skip on the CPU rehearsal with the reason that ``what`` needs CUDA."""
    if s.device != "cuda":
        raise Skip(f"{what} needs CUDA; the CPU rehearsal has none")


def cleanup(s: Settings | None = None) -> None:
    """Free what a measurement left behind so the next one starts from an empty device, peak statistics reset."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def scratch_root(s: Settings, need_bytes: int = 40 * 2 ** 30) -> str | None:
    """Where run folders go: /dev/shm (memory) on the GPU mode when it has ``need_bytes`` free, since every run
    ends with a checkpoint (11 GB at XL/2, written and fsynced) and the GPU machine's disk speed is unknown; else
    None, the system's temporary folder."""
    if s.device != "cuda":
        return None
    try:
        shm = "/dev/shm"
        if os.path.isdir(shm) and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > need_bytes:
            return shm
    except OSError:
        pass
    return None


def sync(dev: torch.device) -> None:
    """Wait for the device (a no-op on the CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reference_peak(name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU when it is an H100 or H200 (the same peak), else None."""
    return H100_BF16_PEAK if name and ("H100" in name or "H200" in name) else None


def time_ms(fn: Callable[[], Any], dev: torch.device, *, reps: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` calls after ``warmup`` (``alphaflow bench``'s timer: CUDA
    events on the GPU)."""
    from alphaflow.perf.bench import time_step

    for _ in range(warmup):
        fn()
    return statistics.median(time_step(fn, dev) for _ in range(reps))


def peak_allocated(dev: torch.device) -> dict[str, int] | None:
    """The peak bytes allocated and reserved since the last reset (CUDA), None on the CPU."""
    if dev.type != "cuda":
        return None
    return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(dev),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(dev)}


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls on or off inside the block (fp32 references must be real fp32), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (the plain norm of the difference when b vanishes)."""
    a, b = a.detach().double(), b.detach().double()
    denom = float(b.norm())
    return float((a - b).norm()) / denom if denom > 0 else float((a - b).norm())


def max_abs(a: Tensor, b: Tensor) -> float:
    """max |a − b| in float64."""
    return float((a.detach().double() - b.detach().double()).abs().max())


def check_finite(what: str, values: dict[str, Any]) -> None:
    """Raise naming the non-finite numbers among ``values`` (floats, one level of nested dicts)."""
    flat = {f"{k}.{k2}": v2 for k, v in values.items() if isinstance(v, dict) for k2, v2 in v.items()}
    flat.update({k: v for k, v in values.items() if not isinstance(v, dict)})
    bad = [k for k, v in flat.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"{what}: non-finite {bad[:5]}")


def model(name: str, s: Settings, *, nudge: bool = True, seed: int = 0, **options: Any) -> nn.Module:
    """A registry DiT for the mode's latents (built on the CPU, as the trainer does); ``nudge`` moves it off DiT's
    zero init (as the bench does) so that every layer and tangent is non-trivial."""
    from alphaflow.models import build_for_data

    torch.manual_seed(seed)
    net = build_for_data(name, s.shape, s.classes, **options)
    if nudge:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return net


def config_has(section: str, key: str) -> bool:
    """Whether this tree's config schema has ``section.key`` (features wired while this check was written:
    ``model.attention``, ``train.micro_batch``)."""
    import dataclasses

    from alphaflow.config import schema

    cls = {"model": schema.ModelConfig, "train": schema.TrainConfig}[section]
    return key in {f.name for f in dataclasses.fields(cls)}


@contextlib.contextmanager
def stock_linear() -> Iterator[None]:
    """The DiT's ``Linear`` as plain ``nn.Linear`` under forward AD too, so ``torch.func.jvp`` is the stock
    reference and not the project's own Linear rule (as tests/test_fast_jvp.py does)."""
    from alphaflow.models.tangent import Linear

    saved = Linear.forward
    setattr(Linear, "forward", nn.Linear.forward)  # a method swapped for the block (setattr: mypy allows it)
    try:
        yield
    finally:
        setattr(Linear, "forward", saved)
