"""What the sections of ``alphaflow doctor`` share: constants, the device, models, batches, comparisons.

Each ``section(settings, out)`` fills the dict ``out`` as it measures, so a section that fails half-way
still reports what it measured; it raises ``Skip`` when it cannot run here and any other exception on
failure. Goals (MFU, MeanFlow's cost, tolerances) are reported as met / not met and never fail a section;
a section fails on errors, non-finite numbers and missing gradients, i.e. on a broken CUDA path.
"""

from __future__ import annotations


import contextlib
import gc
import math
import time
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend

from alphaflow.perf.bench import H100_BF16_PEAK
from alphaflow.objectives import objective_from_options
from alphaflow.config import load_config
from alphaflow.perf.gpucheck.settings import Settings
from alphaflow.models import build_for_data
from alphaflow.train.optim import build_optimizer, sanitize_and_clip



MFU_GOAL, MEANFLOW_RATIO_GOAL = 0.40, 1.45  # a DiT-B/2 FM step at ≥ 40 % of bf16 peak; MeanFlow ≤ 1.45× FM
# Objective runs of ``train`` and ``compile``: config overrides, so the objectives are built as a run builds them.
TRAIN_RUNS = {"meanflow": ["objective.name=meanflow"],
              "alphaflow_0.5": ["objective.name=alphaflow", "objective.alpha=0.5"],
              "alphaflow_0": ["objective.name=alphaflow", "objective.alpha=0"]}
FUSED_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                  "cudnn": SDPBackend.CUDNN_ATTENTION}
TOLERANCE = {"bf16": 5e-2, "fp32": 1e-3}  # information only: relative (norm-wise) disagreement expected at most





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
