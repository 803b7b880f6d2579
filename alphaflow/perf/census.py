"""``alphaflow bench --census``: one training step counted op by op on fake tensors, and a GPU time from a roofline.

The trainer's step (``alphaflow.train.step.training_step`` through ``alphaflow.perf.fakestep``) runs in a
``FakeRun`` (nothing is computed or allocated), under a dispatch mode that records every aten op:

    matrix FLOPs   mm / addmm / bmm / baddbmm / convolution (and their backward), 2 per multiply-add, by dtype
    attention      the fused SDPA kernels (forward and backward) and the JVP-attention kernel (``attention_tangent``)
    bytes          every other op: its tensor inputs read plus its outputs written (views move nothing)
    kernels        one per op that moves data, one per 64 tensors for a ``_foreach`` op (CUDA's multi-tensor
                   launches); views and metadata ops launch nothing
    region         forward (grad), targets (the no-grad passes inside the objective: α-Flow's jump, guidance,
                   MeanFlow's tangent), backward, optimizer, ema, other (the step's flag reduction)

Two rules model CUDA where the fake run takes the CPU's path: fused attention on the CPU is counted with the CUDA
kernels' formulas, and the per-parameter loops of the gradient norm and clipping (``_foreach`` ops on CUDA) are
counted as multi-tensor launches. The sample (t, r, ε) is drawn before the count, as it costs the same for every
objective.

And the largest tensor written on the no-grad path of the forward, with the count of [.., N, N] tensors there
(N the token count): the tangent of attention in math form writes four per block; the fused kernel none.

The estimate (``Roofline``): each op takes max(FLOPs / rate, bytes / bandwidth, kernels × floor); the GPU time
is their sum; eager PyTorch also spends ``dispatch_s`` of CPU per kernel, and the step takes the larger of the
two. An estimate of where time goes, not a measurement: the GPU check (scripts/gpu_check.sh) measures.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import torch
from torch import Tensor, nn
from torch._ops import OpOverload
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from alphaflow.objectives import Objective
from alphaflow.perf.fakestep import FakeStep
from alphaflow.perf.memtrack import FakeRun

__all__ = ["Roofline", "ROOFLINES", "OpRecord", "Census", "count_step"]

_aten = torch.ops.aten


@dataclass(frozen=True)
class Roofline:
    """Rates of one GPU for the estimate. Peaks are the data sheet's; the achieved rates are planning figures
    for DiT-sized work (the GPU check measures the real ones)."""

    name: str
    matmul: dict[str, float]       # achieved FLOP/s of matrix products by input dtype
    attention: float               # achieved FLOP/s of fused attention kernels
    bandwidth: float               # achieved bytes/s of memory-bound kernels
    kernel_s: float                # the shortest a kernel takes (launch and tail)
    dispatch_s: float              # CPU time eager PyTorch spends per kernel
    peak: float                    # dense bf16 peak FLOP/s: the MFU denominator
    source: str


# NVIDIA H100 SXM data sheet: 989 TFLOP/s dense bf16/fp16, 494 TF32, 3.35 TB/s HBM3; the H200: the same chip with
# 4.8 TB/s HBM3e. Achieved: bf16 GEMMs of DiT's shapes at ≈ 2/3 of peak (large square products reach ≈ 80 %),
# TF32 ≈ 300, fused attention at 256 tokens ≈ 350, memory-bound kernels at ≈ 84 % of the bandwidth; ≥ 2.5 µs
# per kernel and ≈ 9 µs of eager dispatch per kernel.
ROOFLINES: dict[str, Roofline] = {
    "h100": Roofline("H100 SXM", {"bfloat16": 650e12, "float16": 650e12, "float32": 300e12, "float64": 60e12},
                     350e12, 2.8e12, 2.5e-6, 9e-6, 989e12,
                     "data sheet peaks; achieved rates are planning figures (docs/jvp.md#the-census)"),
    "h200": Roofline("H200 SXM", {"bfloat16": 650e12, "float16": 650e12, "float32": 300e12, "float64": 60e12},
                     350e12, 4.0e12, 2.5e-6, 9e-6, 989e12,
                     "H100's compute, 4.8 TB/s HBM3e at 84 %; planning figures (docs/jvp.md#the-census)"),
}

# fused attention on the CPU (fake tensors run the CPU kernels) counted with the CUDA kernels' formulas
_ATTENTION_ALIASES = {
    "_scaled_dot_product_flash_attention_for_cpu": _aten._scaled_dot_product_flash_attention,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _aten._scaled_dot_product_flash_attention_backward,
}
_PER_TENSOR_ON_CPU = ("optimizer", "other")
_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "convolution", "_convolution", "convolution_backward",
           "_slow_conv2d_forward", "_scaled_mm"}
_NOTHING_MOVES = {"_local_scalar_dense", "_unsafe_view", "lift_fresh", "alias", "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided",
                  "_record_function_enter_new", "_record_function_exit", "set_", "resize_"}


def attention_jvp_flops(q: Tensor) -> int:
    """FLOPs of the fused JVP attention on q: [B, H, N, d]: QKᵀ, Q̇Kᵀ, QK̇ᵀ, P·V, (P⊙Ṡ)·V, P·V̇: six N×N×d
    products, 2 FLOPs per multiply-add."""
    *heads, N, d = q.shape
    return 6 * 2 * math.prod(heads) * N * N * d


@dataclass
class OpRecord:
    op: str
    region: str
    kind: str          # "matmul", "attention" or "memory"
    dtype: str
    flops: int
    nbytes: int
    kernels: int
    calls: int = 1

    def seconds(self, roofline: Roofline) -> float:
        """Its estimated time: the slowest of its FLOPs at the kind's rate, its bytes, and its kernels' floor."""
        rate = roofline.attention if self.kind == "attention" else roofline.matmul.get(self.dtype, 0.0)
        return max(self.flops / rate if self.flops and rate else 0.0, self.nbytes / roofline.bandwidth,
                   self.kernels * roofline.kernel_s)


@dataclass
class Census:
    """The records of one step and what was seen on the tangent path; ``summary(roofline)`` totals them."""

    records: list[OpRecord] = field(default_factory=list)
    largest_target_tensor: tuple[int, tuple[int, ...]] = (0, ())
    nxn_target_tensors: int = 0

    def summary(self, roofline: Roofline) -> dict[str, Any]:
        """Totals and the estimate: FLOPs by kind and dtype, bytes and kernels by region, ms and MFU."""
        flops: dict[str, float] = defaultdict(float)
        regions: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        gpu_s = 0.0
        for r in self.records:
            if r.kind != "memory":
                flops[f"{r.kind}_{r.dtype}"] += r.flops
            t = r.seconds(roofline)
            gpu_s += t
            reg = regions[r.region]
            reg["ms"] += t * 1e3
            reg["kernels"] += r.kernels
            reg["memory_bytes" if r.kind == "memory" else "matmul_bytes"] += r.nbytes
        kernels = sum(r.kernels for r in self.records)
        dispatch_s = kernels * roofline.dispatch_s
        step_s = max(gpu_s, dispatch_s)
        total_flops = sum(flops.values())
        return {"gpu": roofline.name, "matmul_flops": sum(v for k, v in flops.items() if k.startswith("matmul")),
                "attention_flops": sum(v for k, v in flops.items() if k.startswith("attention")),
                "flops_by_dtype": dict(flops),
                "memory_bytes": sum(r.nbytes for r in self.records if r.kind == "memory"),
                "kernels": kernels, "gpu_ms": gpu_s * 1e3, "dispatch_ms": dispatch_s * 1e3, "ms": step_s * 1e3,
                "mfu": total_flops / step_s / roofline.peak if step_s else 0.0,
                "regions": {k: dict(v) for k, v in regions.items()},
                "largest_target_tensor": {"bytes": self.largest_target_tensor[0],
                                          "shape": list(self.largest_target_tensor[1])},
                "nxn_target_tensors": self.nxn_target_tensors}

    def top_ops(self, roofline: Roofline, n: int = 12) -> list[dict[str, Any]]:
        """The ``n`` ops (by name and region) that take the most estimated time."""
        rows: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for r in self.records:
            row = rows[(r.op, r.region)]
            row["ms"] += r.seconds(roofline) * 1e3
            row["calls"] += 1
            row["bytes"] += r.nbytes
        ranked = sorted(rows.items(), key=lambda kv: -kv[1]["ms"])[:n]
        return [{"op": op, "region": region, **dict(v)} for (op, region), v in ranked]


class _Counter(FakeRun):
    """``FakeRun`` that also records every op into a ``Census`` while ``recording`` is set."""

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.census, self.recording, self.tokens = Census(), False, tokens
        self._regions: list[str] = []

    def _region(self) -> str:
        if torch._C._current_autograd_node() is not None:
            return "backward"
        for name in reversed(self._regions):
            if name == "alphaflow.forward":
                return "forward" if torch.is_grad_enabled() else "targets"
            if name.startswith("alphaflow."):
                return name.removeprefix("alphaflow.")
        return "other"

    def __torch_dispatch__(self, func: OpOverload, types: Sequence[type], args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        name = func.__name__.split(".")[0]
        if name == "_record_function_enter_new":
            self._regions.append(args[0])
        elif name == "_record_function_exit" and self._regions:
            self._regions.pop()
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.recording:
            self._record(func, name, args, kwargs or {}, out)
        return out

    def _record(self, func: OpOverload, name: str, args: Sequence[Any], kwargs: dict[str, Any], out: object) -> None:
        if func.namespace not in ("aten", "alphaflow") or name in _NOTHING_MOVES or _is_view(func):
            return  # prim:: and profiler:: ops ask for metadata; views share their input's storage
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
        in_place = name.endswith("_") or name.startswith(("_foreach", "_fused"))
        if not inputs or not (outputs or in_place):
            return  # a metadata query (sizes, strides, is_same_size) or a factory with nothing read
        nbytes = sum(_nbytes(t) for t in inputs + outputs)
        dtype = str((inputs or outputs)[0].dtype).removeprefix("torch.")
        kind, flops = "memory", 0
        packet = _ATTENTION_ALIASES.get(name, func._overloadpacket)
        if packet in flop_registry:
            kind = "matmul" if name in _MATMUL else "attention"
            flops = int(flop_registry[packet](*args, **kwargs, out_val=out))
        elif name == "attention_tangent":
            kind, flops = "attention", attention_jvp_flops(args[0])
        multi = name.startswith(("_foreach", "_fused_adam")) and isinstance(args[0], (list, tuple))
        kernels = max(1, math.ceil(len(args[0]) / 64)) if multi else 1  # CUDA's multi-tensor apply: ≈ 64 a launch
        region = self._region()
        last = self.census.records[-1] if self.census.records else None
        if region in _PER_TENSOR_ON_CPU and last is not None and (last.op, last.region) == (name, region):
            # the gradient norm and clipping loop over the parameters on the CPU; CUDA runs them as _foreach ops
            last.calls, last.nbytes = last.calls + 1, last.nbytes + nbytes
            last.kernels = math.ceil(last.calls / 64)
            return
        self.census.records.append(OpRecord(name, region, kind, dtype, flops, nbytes, kernels))
        if region == "targets":
            for t in outputs:
                size = _nbytes(t)
                if size > self.census.largest_target_tensor[0]:
                    self.census.largest_target_tensor = (size, tuple(t.shape))
                if t.ndim >= 3 and t.shape[-1] == t.shape[-2] == self.tokens:  # [G, N, N]: per head
                    self.census.nxn_target_tensors += 1


def _is_view(func: OpOverload) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def count_step(build: Callable[[], nn.Module], objective: Objective, batch: int, shape: tuple[int, ...], *,
               bf16: bool = True, tokens: int = 0) -> Census:
    """Count the second of two trainer steps (the first makes Adam's moments) of ``objective`` on a fake batch
    [batch, *shape] of the network ``build()`` builds; ``tokens``: N, to spot [.., N, N] tensors."""
    counter = _Counter(tokens)
    with counter, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        fake = FakeStep(counter, build, objective, bf16=bf16)
        x = counter.fake((batch, *shape))
        fake.step(x, step=0)
        sample = fake.sample(x, step=1)
        counter.recording = True
        fake.step(x, step=1, sample=sample)
        counter.recording = False
    return counter.census


def run_census(model: str = "DiT-B/2", *, batch: int = 32, shape: tuple[int, ...] = (4, 32, 32), classes: int = 1000,
               precision: str = "bf16", variants: tuple[str, ...] = ("fm", "alpha_mid", "mf_p25", "mf_p100"),
               gpu: str = "h100", model_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The census of each variant's trainer step (``alphaflow.perf.bench.step_objectives``) and its estimate on
    ``gpu`` (a key of ``ROOFLINES``), with ratios to flow matching. ``precision`` auto means bf16 (a GPU run)."""
    from alphaflow.models import build_for_data
    from alphaflow.perf.bench import step_objectives

    objectives = step_objectives()
    unknown = [v for v in variants if v not in objectives]
    if unknown or "fm" not in variants:
        raise ValueError(f"--census counts trainer steps of objectives: variants must include fm and come from "
                         f"{sorted(objectives)}, got {list(variants)}")
    if gpu not in ROOFLINES:
        raise ValueError(f"--gpu must be one of {sorted(ROOFLINES)}, got {gpu!r}")
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    options = dict(model_options or {})
    if options.get("attention", "auto") == "auto":  # what auto means on CUDA: the kernel where Triton is importable
        from alphaflow.models.jvp_attention import triton_available

        options["attention"] = "triton" if triton_available() else "math"
    if "imf_p100" in variants:
        options.setdefault("aux_head_depth", 0)  # iMF's velocity head (unused by the others)
    net = build_for_data(model, shape, classes, **options)  # a real one, once: errors name the model, and N
    grid = cast("tuple[int, int]", net.grid) if hasattr(net, "grid") else None  # a DiT's patch grid
    tokens = grid[0] * grid[1] if grid is not None else 0
    del net
    roofline = ROOFLINES[gpu]
    out: dict[str, Any] = {}
    for name in variants:
        census = count_step(lambda: build_for_data(model, shape, classes, **options), objectives[name], batch, shape,
                            bf16=precision != "fp32", tokens=tokens)
        out[name] = {**census.summary(roofline), "top_ops": census.top_ops(roofline)}
    for row in out.values():
        row["ratio"] = row["ms"] / out["fm"]["ms"]
    out["meta"] = {"model": model, "batch": batch, "shape": list(shape), "classes": classes, "tokens": tokens,
                   "precision": "fp32" if precision == "fp32" else "bf16", "gpu": gpu, "roofline": vars(roofline),
                   "model_options": options}
    return out


def format_census(results: dict[str, Any]) -> str:
    """The human output: conditions, one row per variant, then where the largest variant's time goes."""
    meta = results["meta"]
    rows = {k: v for k, v in results.items() if k != "meta"}
    lines = [f"census of one trainer step on fake tensors: {meta['model']} x{meta['batch']} of "
             f"{'x'.join(map(str, meta['shape']))} ({meta['tokens']} tokens), {meta['precision']}, attention tangent "
             f"{meta['model_options']['attention']}; estimated on "
             f"{meta['roofline']['name']} (an estimate from a roofline, not a measurement)",
             f"{'variant':<14} {'matmul TF':>9} {'attn TF':>8} {'other GB':>9} {'kernels':>8} {'est ms':>8} "
             f"{'MFU':>5} {'vs fm':>6} {'N×N':>4} {'largest no-grad tensor':>24}"]
    for name, r in rows.items():
        big = r["largest_target_tensor"]
        lines.append(f"{name:<14} {r['matmul_flops'] / 1e12:>9.1f} {r['attention_flops'] / 1e12:>8.2f} "
                     f"{r['memory_bytes'] / 1e9:>9.0f} {r['kernels']:>8} {r['ms']:>8.1f} {r['mfu']:>5.0%} "
                     f"{r['ratio']:>6.2f} {r['nxn_target_tensors']:>4} "
                     f"{big['bytes'] / 2**20:>9.0f} MiB {str(big['shape']):>10}")
    worst = max(rows, key=lambda k: rows[k]["ms"])
    lines.append(f"where {worst}'s estimated time goes, by region: " + ", ".join(
        f"{reg} {v['ms']:.1f} ms" for reg, v in rows[worst]["regions"].items()))
    return "\n".join(lines)
