"""Softmax attention and its forward-mode tangent in one flash-style Triton pass (no N×N tensor).

For one query row, with scale = d^-1/2 and tangents (q̇, k̇_j, v̇_j)::

    s_j = scale·q·k_j,   p = softmax(s),   o = Σ_j p_j v_j
    ṡ_j = scale·(q̇·k_j + q·k̇_j),   μ = Σ_j p_j ṡ_j,   ṗ_j = p_j (ṡ_j − μ)
    ȯ = Σ_j p_j ṡ_j v_j − μ·o + Σ_j p_j v̇_j

One pass over the key blocks keeps, beside the running max m and normaliser l = Σ e^{s_j−m}, three accumulators in
the same rescaled frame: A = Σ e^{s_j−m} v_j, B = Σ e^{s_j−m} (ṡ_j v_j + v̇_j), c = Σ e^{s_j−m} ṡ_j; at the end
o = A/l, μ = c/l, ȯ = B/l − μ·o. Accumulation is fp32 (μ·o cancels against part of B); products with a tangent
run in the promoted dtype of primal and tangent (fp32 tangents see a bf16 primal exactly); B adds e·ṡ·v as
e·(ṡ − μ′)·v + μ′·(e·v), μ′ the running μ, so 16-bit products round the centred term. K, V, K̇, V̇ are read once
per query block.

Triton is imported on first use, never at import. CPU tensors run only under Triton's interpreter
(``TRITON_INTERPRET=1``). What Triton 3.9 does with it: ``triton.knobs.runtime.interpret`` reads the environment at
each access, and ``triton.jit`` reads it when it *decorates* a function (``InterpretedFunction`` or
``JITFunction``), so the kernel is decorated lazily, once per mode. Triton's library functions (``tl.sum``,
``tl.max``, ``tl.zeros``) are decorated at ``import triton``: set after that import, the variable leaves them
compiled-mode functions that an interpreted kernel cannot call ("Cannot call @triton.jit'd outside of the scope
of a kernel"), so ``_build`` re-decorates the two reductions for the kernel's mode and the kernel avoids
``tl.zeros``; the order of import and environment then does not matter. The interpreter also takes a parameter
annotated with the *string* ``"tl.constexpr"`` for no constexpr (it recompiles the source with postponed
annotations), and its dot multiplies bfloat16's raw uint16 bits, so bfloat16 dots run as float32 there (exact:
bf16 products fit fp32, like a bf16 dot's fp32 accumulator).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import types
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # names the kernel's source uses; at run time they live in the namespace that _build makes
    import triton.language as tl
    _row_max, _row_sum = tl.max, tl.sum

__all__ = ["triton_available", "interpreter_problem", "attention_with_tangent", "attention_tangent", "ATTENTION_IMPLS",
           "use_fused_tangent"]

ATTENTION_IMPLS = ("auto", "math", "triton")  # model.attention: how the DiT computes the attention tangent

# Tiles for an H100, compiled for sm_90 ahead of time by the slow test: a program holds q, q̇ and the fp32 A, B
# ([BLOCK_M, BLOCK_D] each) and makes six dots per key block (flash attention: two). 64 query rows, 8 warps, 32 keys
# a block while BLOCK_D ≤ 64 and 16 for BLOCK_D = 128 (head dims 72…128: 32 spills more and, for fp32 q, k, v,
# needs over 227 KiB of shared memory). Not yet timed on a GPU. fp32 operands use "tf32x3" (three TF32 tensor-core
# products, ≈ fp32 accuracy, fp32 accumulate): Triton 3.9's "ieee" FMA dots spilled far more and for fp32 q, k, v
# aborted the compiler on most tiles (an LLVM SLPVectorizer assertion). The interpreter computes in fp32.
BLOCK_M = 64
BLOCK_N = 32
BLOCK_N_WIDE = 16  # BLOCK_D = 128
NUM_WARPS = 8
NUM_STAGES = 2
FP32_DOT_PRECISION = "tf32x3"
MAX_HEAD_DIM = 128


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` can be imported (imports it on the first call; the answer is cached)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the kernel here, or None. Triton 3.6's interpreter evaluates the loop
    bound ``range(0, N, BLOCK_N)`` as ``int()`` of a one-element array, which NumPy ≥ 2.4 refuses ("only
    0-dimensional arrays can be converted to Python scalars"). Measured: Triton 3.6 fails with NumPy 2.4 and runs
    with NumPy 2.3; Triton 3.7, 3.8 and 3.9 run with NumPy 2.4. Older Triton is assumed to behave as 3.6. The
    compiled kernel on a GPU is not affected. None without triton (``triton_available`` says that). Imports triton
    and numpy."""
    if not triton_available():
        return None
    import numpy
    import triton

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("+")[0].split(".")[:2] if part.isdigit())

    if version(triton.__version__) < (3, 7) and version(numpy.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter cannot run with NumPy {numpy.__version__} (it converts "
                "one-element arrays to ints, which NumPy 2.4 refuses): use Triton >= 3.7 or NumPy < 2.4 for the "
                "kernel on CPU; the compiled kernel on a GPU is not affected")
    return None


def _interpreting() -> bool:
    """Whether Triton's interpreter is on: ``triton.knobs`` (Triton ≥ 3.4), else the variable itself."""
    import triton
    knobs = getattr(triton, "knobs", None)
    return bool(knobs.runtime.interpret) if knobs else os.environ.get("TRITON_INTERPRET", "0") in ("1", "true", "on")


def _attention_tangent_kernel(Q, K, V, DQ, DK, DV, O, DO,
                              s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
                              s_dqb, s_dqh, s_dqn, s_dkb, s_dkh, s_dkn, s_dvb, s_dvh, s_dvn,
                              s_ob, s_oh, s_on, s_dob, s_doh, s_don, H, N, D, num_m_blocks, qk_scale_log2, scale,
                              S_DOT: tl.constexpr, S_PRECISION: tl.constexpr, COMPUTE: tl.constexpr,
                              C_DOT: tl.constexpr, C_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """BLOCK_M query rows of one (batch row, head) of [B, H, N, D] tensors, each with its own (b, h, n) strides
    (s_…; the last dimension contiguous), so views of the qkv projection need no copy; a 1-D grid, consecutive
    programs on one head (K, V in L2). q·kᵀ in S_DOT (primal dtype), other products in C_DOT (COMPUTE: the
    promoted dtype), p rounded to COMPUTE."""
    pid = tl.program_id(0)
    g = pid // num_m_blocks
    b, h = (g // H).to(tl.int64), (g % H).to(tl.int64)  # offsets in int64
    q_base, q_sn = b * s_qb + h * s_qh, s_qn
    k_base, k_sn = b * s_kb + h * s_kh, s_kn
    v_base, v_sn = b * s_vb + h * s_vh, s_vn
    dq_base, dq_sn = b * s_dqb + h * s_dqh, s_dqn
    dk_base, dk_sn = b * s_dkb + h * s_dkh, s_dkn
    dv_base, dv_sn = b * s_dvb + h * s_dvh, s_dvn
    o_base, o_sn = b * s_ob + h * s_oh, s_on
    do_base, do_sn = b * s_dob + h * s_doh, s_don
    rows = (pid % num_m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    q_mask = (rows[:, None] < N) & col_ok[None, :]
    q = tl.load(Q + q_base + rows[:, None] * q_sn + cols[None, :], mask=q_mask, other=0.0)
    q_s, q_c = q.to(S_DOT), q.to(C_DOT)
    dq = tl.load(DQ + dq_base + rows[:, None] * dq_sn + cols[None, :], mask=q_mask, other=0.0).to(C_DOT)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)  # not tl.zeros, a library @jit function (see above)
    c_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc_a = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    acc_b = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    for start_n in range(0, N, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        key_ok = keys < N
        kv_mask = key_ok[:, None] & col_ok[None, :]
        k = tl.load(K + k_base + keys[:, None] * k_sn + cols[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + v_base + keys[:, None] * v_sn + cols[None, :], mask=kv_mask, other=0.0).to(C_DOT)
        dk = tl.load(DK + dk_base + keys[:, None] * dk_sn + cols[None, :], mask=kv_mask, other=0.0).to(C_DOT)
        dv = tl.load(DV + dv_base + keys[:, None] * dv_sn + cols[None, :], mask=kv_mask, other=0.0).to(C_DOT)
        s = tl.dot(q_s, tl.trans(k.to(S_DOT)), input_precision=S_PRECISION)  # [BLOCK_M, BLOCK_N], fp32
        ds = tl.dot(dq, tl.trans(k.to(C_DOT)), input_precision=C_PRECISION)
        ds = tl.dot(q_c, tl.trans(dk), ds, input_precision=C_PRECISION) * scale
        s = tl.where(key_ok[None, :], s * qk_scale_log2, float("-inf"))  # log2 units: exp2 below
        m_new = tl.maximum(m_i, _row_max(s, 1))  # finite: every key block has a key < N
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])  # 0 on the masked keys
        l_i = l_i * alpha + _row_sum(p, 1)
        c_i = c_i * alpha + _row_sum(p * ds, 1)
        mu = (c_i / l_i)[:, None]  # running μ: B's products round e·(ṡ − μ), small where e·ṡ would cancel
        p_c = p.to(COMPUTE).to(C_DOT)
        pv = tl.dot(p_c, v, input_precision=C_PRECISION)
        acc_a = acc_a * alpha[:, None] + pv
        p_ds = (p * (ds - mu)).to(COMPUTE).to(C_DOT)
        acc_b = tl.dot(p_ds, v, acc_b * alpha[:, None] + mu * pv, input_precision=C_PRECISION)
        acc_b = tl.dot(p_c, dv, acc_b, input_precision=C_PRECISION)
        m_i = m_new
    o = acc_a / l_i[:, None]
    do = acc_b / l_i[:, None] - (c_i / l_i)[:, None] * o
    tl.store(O + o_base + rows[:, None] * o_sn + cols[None, :], o.to(O.dtype.element_ty), mask=q_mask)
    tl.store(DO + do_base + rows[:, None] * do_sn + cols[None, :], do.to(DO.dtype.element_ty), mask=q_mask)


@functools.cache
def _build(interpret: bool) -> Any:
    """The kernel decorated for one mode (interpreted or compiled), in a namespace of its own."""
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    def for_mode(fn: Any) -> Any:  # a library @triton.jit function, re-decorated if made for the other mode
        return fn if isinstance(fn, InterpretedFunction) == interpret else triton.jit(fn.fn)

    ns: dict[str, Any] = {"__name__": __name__, "__builtins__": builtins, "tl": tl,
                          "_row_max": for_mode(tl.max), "_row_sum": for_mode(tl.sum)}
    code = _attention_tangent_kernel
    return triton.jit(types.FunctionType(code.__code__, ns, code.__name__))


def _check(named: dict[str, Tensor], blocks: dict[str, int | None], ndim: int = 3) -> None:
    """ValueError naming the argument unless all are [G, N, d] (ndim 4: [B, H, N, d]) of q's shape on q's device,
    q, k, v of one dtype and q̇, k̇, v̇ of one (float16, bfloat16 or float32), d ≤ MAX_HEAD_DIM, and the blocks
    powers of two ≥ 16."""
    layout = "[G, N, d]" if ndim == 3 else "[B, H, N, d]"
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
        if t.ndim != ndim:
            raise ValueError(f"{name} must be {layout} ({ndim} dimensions), got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name} has dtype {t.dtype}, expected float16, bfloat16 or float32")
    q, dq = named["q"], named["dq"]
    for name, t in named.items():
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected q's shape {tuple(q.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, expected q's device {q.device}")
        ref, ref_name = (q, "q") if name in ("q", "k", "v") else (dq, "dq")
        if t.dtype != ref.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, expected {ref_name}'s dtype {ref.dtype}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"q has head dim {q.shape[-1]}, expected at most {MAX_HEAD_DIM}")
    for name, b in blocks.items():
        if b is not None and (b < 16 or b & (b - 1)):
            raise ValueError(f"{name} must be a power of two ≥ 16, got {b}")


def _config(dtype: torch.dtype, tangent_dtype: torch.dtype, d: int, interpret: bool,
            block_m: int | None = None, block_n: int | None = None) -> dict[str, Any]:
    """The kernel's constexprs and launch options (num_warps, num_stages) for q's and dq's dtypes and head dim d."""
    import triton.language as tl
    block_d = max(16, 1 << (d - 1).bit_length())  # the next power of two, at least tl.dot's 16
    bm, bn = block_m or BLOCK_M, block_n or (BLOCK_N if block_d <= 64 else BLOCK_N_WIDE)
    compute = torch.promote_types(dtype, tangent_dtype)
    s_dot, c_dot = ((torch.float32 if interpret and t == torch.bfloat16 else t) for t in (dtype, compute))
    tl_dtype = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
    precision = {dt: FP32_DOT_PRECISION if dt == torch.float32 else None for dt in (s_dot, c_dot)}
    return dict(S_DOT=tl_dtype[s_dot], S_PRECISION=precision[s_dot], COMPUTE=tl_dtype[compute],
                C_DOT=tl_dtype[c_dot], C_PRECISION=precision[c_dot], BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d,
                num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def _launch(q: Tensor, k: Tensor, v: Tensor, dq: Tensor, dk: Tensor, dv: Tensor,
            block_m: int | None, block_n: int | None) -> tuple[Tensor, Tensor]:
    """Run the kernel on [B, H, N, d] inputs of any strides (a copy only where the last one is not 1): o in q's
    dtype and ȯ in dq's dtype, each [B, N, H, d] contiguous (token-major: the DiT's layout after attention)."""
    if not triton_available():
        raise RuntimeError("attention_with_tangent needs triton (pip install 'alphaflow[gpu]')")
    interpret = _interpreting()
    if q.device.type == "cpu" and not interpret:
        raise RuntimeError("attention_with_tangent runs on CPU tensors only under Triton's interpreter "
                           "(set TRITON_INTERPRET=1); use a CUDA device, or the math attention_jvp on CPU")
    if interpret and (problem := interpreter_problem()):
        raise RuntimeError(problem)
    B, H, N, d = q.shape
    o, do = q.new_empty(B, N, H, d), dq.new_empty(B, N, H, d)
    if o.numel() == 0:
        return o, do
    inputs = [t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, dq, dk, dv)]
    views = [*inputs, o.transpose(1, 2), do.transpose(1, 2)]  # every tensor as [B, H, N, d]
    strides = [s for t in views for s in t.stride()[:3]]  # host ints: no device copy, no sync
    config = _config(q.dtype, dq.dtype, d, interpret, block_m, block_n)
    num_m, scale = -(-N // config["BLOCK_M"]), d ** -0.5
    with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
        _build(interpret)[(B * H * num_m,)](*inputs, o, do, *strides, H, N, d, num_m,
                                           scale * 1.4426950408889634, scale, **config)  # scale·log2(e)
    return o, do


class _AttentionWithTangent(torch.autograd.Function):
    """(o, ȯ) from the kernel; backward: o's gradient w.r.t. q, k, v by recomputing o with SDPA (on CUDA its
    fused backward). ȯ is non-differentiable, and the tangents get no gradient."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, dq: Tensor, dk: Tensor, dv: Tensor,
                block_m: int | None, block_n: int | None) -> tuple[Tensor, Tensor]:
        q_, k_, v_, dq_, dk_, dv_ = (t.unsqueeze(1) for t in (q, k, v, dq, dk, dv))  # views, named for mypy
        o, do = (t.squeeze(2) for t in _launch(q_, k_, v_, dq_, dk_, dv_, block_m, block_n))
        ctx.save_for_backward(q, k, v)
        ctx.mark_non_differentiable(do)
        return o, do

    @staticmethod
    def backward(ctx: Any, grad_o: Tensor | None, grad_do: Tensor | None) -> tuple[Tensor | None, ...]:
        needs = ctx.needs_input_grad[:3]
        if grad_o is None or not any(needs):
            return (None,) * 8
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs)]
            o = F.scaled_dot_product_attention(*(t.unsqueeze(0) for t in leaves)).squeeze(0)  # 4-D: fused kernels
            grads = iter(torch.autograd.grad(o, [t for t in leaves if t.requires_grad], grad_o))
        return (*(next(grads) if need else None for need in needs), None, None, None, None, None)


def attention_with_tangent(q: Tensor, k: Tensor, v: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, *,
                           block_m: int | None = None, block_n: int | None = None) -> tuple[Tensor, Tensor]:
    """o = softmax(q·kᵀ/√d)·v and its tangent ȯ along (dq, dk, dv), in one fused pass (equations above).

    q, k, v: [G, N, d] (G = batch·heads) of one dtype, float16, bfloat16 or float32; dq, dk, dv: [G, N, d] of
    one such dtype, which may differ (fp32 tangents on a bf16 primal). Any N; any d ≤ 128 (masked up to a power
    of two). Any strides (a copy only where the last is not 1). Returns (o in q's dtype, ȯ in dq's dtype),
    [G, N, d] each, contiguous.
    o is differentiable w.r.t. q, k, v (backward through SDPA); ȯ carries no gradient (MeanFlow puts it in a
    stop-gradient target) and the tangents get none. Not for use inside ``torch.func`` transforms. block_m,
    block_n (powers of two ≥ 16) override the tiles (fast tests under the interpreter). CUDA tensors run the
    compiled kernel, CPU tensors only under ``TRITON_INTERPRET=1``. Raises ValueError for bad inputs,
    RuntimeError without triton, on CPU without the interpreter, or with an interpreter that cannot run it
    (``interpreter_problem``).
    """
    _check({"q": q, "k": k, "v": v, "dq": dq, "dk": dk, "dv": dv}, {"block_m": block_m, "block_n": block_n})
    return _AttentionWithTangent.apply(q, k, v, dq, dk, dv, block_m, block_n)


@torch.library.custom_op("alphaflow::attention_tangent", mutates_args=())
def attention_tangent(q: Tensor, k: Tensor, v: Tensor, dq: Tensor, dk: Tensor, dv: Tensor) -> tuple[Tensor, Tensor]:
    """``attention_with_tangent`` without autograd, as one opaque op: what the DiT's tangent mode calls (its tangent
    feeds a stop-gradient target; the prediction's attention stays the ordinary fused SDPA), and what
    ``torch.compile`` and fake tensors (``alphaflow bench --census``) see.

    [B, H, N, d] each, of any strides (views of the qkv projection: no copy) → (o, ȯ), each [B, N, H, d]
    contiguous: token-major, so the output projection reads ȯ.view(B, N, H·d) without a copy."""
    _check({"q": q, "k": k, "v": v, "dq": dq, "dk": dk, "dv": dv}, {}, ndim=4)
    return _launch(q, k, v, dq, dk, dv, None, None)


@attention_tangent.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, dq: Tensor, dk: Tensor, dv: Tensor) -> tuple[Tensor, Tensor]:
    B, H, N, d = q.shape
    return q.new_empty(B, N, H, d), dq.new_empty(B, N, H, d)


def use_fused_tangent(impl: str, x: Tensor, head_dim: int) -> bool:
    """Whether the attention tangent of activations x runs the fused kernel under ``model.attention=impl``: always
    for "triton", never for "math", and for "auto" on CUDA when Triton is importable and the kernel takes x's
    dtype (fp16/bf16/fp32) and the head dim (≤ 128); the math form elsewhere (the CPU, float64 checks)."""
    if impl == "triton":
        return True
    return (impl == "auto" and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and head_dim <= MAX_HEAD_DIM and triton_available())
