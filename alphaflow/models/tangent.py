"""Forward-mode rules for the backbones: a Linear whose JVP skips the weight, and the DiT's tangent mode.

MeanFlow needs du/dt, the JVP of u_θ(z, r, t) along (ṽ, 0, 1) (docs/jvp.md#what-is-differentiated), and never a
tangent of the parameters. Two ways to get it cheaply (docs/jvp.md#the-zero-weight-tangent,
docs/jvp.md#the-dit-tangent-mode):

1. ``Linear``: an ``nn.Linear`` whose forward-mode rule is dy = dx·Wᵀ (+ x·dWᵀ + db only when the weight
   or bias really carries a tangent). Stock ``addmm`` also multiplies x by the all-zero weight tangent, a
   wasted GEMM per layer (pytorch issue 69687). The rule is routed only while a ``torch.func`` transform
   is active (the input is a functorch wrapper), so ordinary forwards and ``torch.compile`` see plain
   ``F.linear``.
2. The DiT's *tangent mode* (``DiT.forward(..., tangent=...)``): the modules run their ordinary primal
   (fused attention, the same autograd graph as flow matching) and, beside it, propagate a tangent by
   hand under no-grad for a subset of rows, from the detached primal intermediates of those rows. The
   rules below are that arithmetic: plain tensor math, no modules of the DiT imported here.

Tangents travel in the compute dtype (``tangent_dtype``: bf16 under bf16 autocast, the weights' dtype, at least
fp32, otherwise), so a tangent GEMM reads and writes what the primal's does, with no cast around it. fp32 stays
where a difference cancels: the fused kernels (LayerNorm's and softmax's backward, GELU's derivative) accumulate
in fp32 whatever their inputs; the attention tangent in math form is computed in fp32 (dS − rowsum(P ⊙ dS), and
μ·o against the rest of ȯ, cancel); the DiT returns du/dt in at least fp32 (the target ṽ − (t − r)·du/dt
cancels). docs/jvp.md#precision gives the measured error. ``rows``: [P] int64 row indices into the
batch, a slice of the batch, or None for all rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Linear", "tangent_dtype", "take", "linear_jvp", "silu_jvp", "mlp_jvp", "modulate_jvp", "split_heads",
           "attention_jvp",
           "gated_residual_jvp", "sinusoid_jvp", "conv_patch_jvp"]

Rows = Tensor | slice | None  # [P] int64 indices into the batch, a slice of it (views, no copies), or None: all


class _LinearJVP(torch.autograd.Function):
    """y = x·Wᵀ + b with the forward-mode rule dy = dx·Wᵀ + x·dWᵀ + db, terms with no tangent skipped."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)  # a missing tangent arrives as None, not as zeros to multiply

    @staticmethod
    def jvp(ctx: Any, dx: Tensor | None, dweight: Tensor | None, dbias: Tensor | None) -> Tensor | None:
        x, weight = ctx.saved_tensors
        out = None if dx is None else F.linear(dx, weight)
        if dweight is not None:
            term = F.linear(x, dweight)
            out = term if out is None else out + term
        if dbias is not None:
            out = dbias.expand(x.shape[:-1] + dbias.shape) if out is None else out + dbias
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        if grad is None:
            return None, None, None
        gx = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        flat = grad.reshape(-1, grad.shape[-1])
        gw = flat.T @ x.reshape(-1, x.shape[-1]).to(grad.dtype) if ctx.needs_input_grad[1] else None
        gb = flat.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) with a forward-mode rule that skips the zero weight
    tangent. Outside ``torch.func`` transforms and inside ``torch.compile`` it is exactly ``F.linear``."""

    def forward(self, x: Tensor) -> Tensor:
        # debug_unwrap(x) is not x only while a torch.func transform (jvp, vmap, grad) wraps x; it costs ~0.5 µs.
        if not torch.compiler.is_compiling() and torch.func.debug_unwrap(x) is not x:
            return _LinearJVP.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


# ----------------------------------------------------------------------------------- tangent-mode rules
# Every rule takes detached primal values of the tangent rows ("_s", [P, ...]) and tangents (d…, [P, ...]
# in the tangent dtype) and returns a tangent in that dtype; none records autograd history.


def tangent_dtype(weight: Tensor) -> torch.dtype:
    """The dtype tangents travel in: autocast's on the weight's device when it is on, else the weight's (≥ fp32)."""
    if torch.is_autocast_enabled(weight.device.type):
        return torch.get_autocast_dtype(weight.device.type)
    return torch.promote_types(weight.dtype, torch.float32)


def take(x: Tensor, rows: Rows) -> Tensor:
    """The detached primal rows x[rows] ([B, ...] → [P, ...]); a view for a slice or None (all rows)."""
    x = x.detach()
    if rows is None:
        return x
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


@torch.no_grad()
def linear_jvp(dx: Tensor, weight: Tensor) -> Tensor:
    """d(x·Wᵀ + b) = dx·Wᵀ. dx: [P, ..., in], weight: [out, in] → [P, ..., out] in dx's dtype (under autocast
    both are the compute dtype already: no cast)."""
    out = F.linear(dx, weight)
    return out if out.dtype == dx.dtype else out.to(dx.dtype)


@torch.no_grad()
def silu_jvp(x_s: Tensor, dx: Tensor) -> Tensor:
    """d silu(x) = σ(x)(1 + x(1 − σ(x)))·dx, elementwise (aten's fused SiLU derivative)."""
    return torch.ops.aten.silu_backward(dx, x_s.to(dx.dtype))


@torch.no_grad()
def mlp_jvp(fc1: nn.Linear, fc2: nn.Linear, pre_s: Tensor, dx: Tensor) -> Tensor:
    """d fc2(gelu_tanh(fc1(x))) = W₂·(gelu′(pre)·(W₁·dx)), pre = fc1(x) the primal pre-activation.

    gelu′ of the tanh form is aten's fused GELU derivative. pre_s: [P, N, H], dx: [P, N, D] → [P, N, D].
    """
    dpre = linear_jvp(dx, fc1.weight)
    gelu_grad = torch.ops.aten.gelu_backward.grad_input  # in place into dpre: the widest tangent, allocated once
    return linear_jvp(gelu_grad(dpre, pre_s.to(dpre.dtype), approximate="tanh", grad_input=dpre), fc2.weight)


@torch.no_grad()
def modulate_jvp(x_s: Tensor, scale_s: Tensor, dx: Tensor, dshift: Tensor, dscale: Tensor,
                 eps: float = 1e-6) -> Tensor:
    """Tangent of y = LN(x)·(1 + scale) + shift (LayerNorm without affine, as ``modulate``).

        ŷ = (x − μ)/σ,   dŷ = (dx − mean(dx) − ŷ·mean(ŷ·dx))/σ,
        dy = dŷ·(1 + scale) + ŷ·dscale + dshift

    LayerNorm's Jacobian is symmetric, so dŷ is LayerNorm's own fused backward applied to dx.
    x_s, dx: [P, N, D]; scale_s, dshift, dscale: [P, D] → [P, N, D], in the tangent dtype (the LayerNorm kernels
    keep their means and sums in fp32 whatever their inputs).
    """
    dtype, shape = dx.dtype, x_s.shape[-1:]
    x = x_s.to(dtype)
    y_hat, mean, rstd = torch.native_layer_norm(x, shape, None, None, eps)
    dy_hat = torch.ops.aten.native_layer_norm_backward(dx, x, shape, mean, rstd, None, None, [True, False, False])[0]
    dy = torch.addcmul(dshift.unsqueeze(1), dy_hat, 1 + scale_s.to(dtype).unsqueeze(1))
    return dy.addcmul_(y_hat, dscale.unsqueeze(1))


def split_heads(qkv: Tensor, heads: int, rows: Rows = None) -> Tensor:
    """[B, N, 3D] (the qkv projection) → q, k, v stacked as [3, P·heads, N, D/heads], contiguous, rows taken."""
    qkv = take(qkv, rows)  # [P, N, 3D]: whole rows first, a fast gather
    P, N, D3 = qkv.shape
    return qkv.view(P, N, 3, heads, D3 // (3 * heads)).permute(2, 0, 3, 1, 4).reshape(3, P * heads, N, -1)


@torch.no_grad()
def attention_jvp(q_s: Tensor, k_s: Tensor, v_s: Tensor, dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
    """Tangent of O = softmax(QKᵀ/√d)·V, in math form on the tangent rows:

        S = QKᵀ/√d,  P = softmax(S),  dS = (dQ·Kᵀ + Q·dKᵀ)/√d,
        dP = P ⊙ (dS − rowsum(P ⊙ dS)),  dO = dP·V + P·dV

    Softmax's Jacobian is symmetric, so dP is softmax's fused backward applied to dS. All [G, N, d]
    (G = rows·heads; S, P: [G, N, N]) → dO [G, N, d] in dq's dtype, computed with autocast off in at least
    fp32: dS − rowsum(P ⊙ dS) cancels. Writes four [G, N, N] tensors: the fallback where the fused kernel
    (``alphaflow.models.jvp_attention``) does not run.
    """
    out_dtype, dtype = dq.dtype, torch.promote_types(dq.dtype, torch.float32)
    with torch.autocast(dq.device.type, enabled=False):
        q, k, v = q_s.to(dtype), k_s.to(dtype), v_s.to(dtype)
        dq, dk, dv = dq.to(dtype), dk.to(dtype), dv.to(dtype)
        scale = q.shape[-1] ** -0.5
        p = torch.softmax(torch.bmm(q, k.transpose(1, 2)).mul_(scale), dim=-1)
        ds = torch.bmm(dq, k.transpose(1, 2)).add_(torch.bmm(q, dk.transpose(1, 2))).mul_(scale)
        dp = torch.ops.aten._softmax_backward_data(ds, p, -1, dtype)
        out = torch.bmm(dp, v).add_(torch.bmm(p, dv))  # (baddbmm_ copies on CPU; two bmm do not)
    return out.to(out_dtype)


@torch.no_grad()
def gated_residual_jvp(dx: Tensor, gate_s: Tensor, h_s: Tensor, dgate: Tensor, dh: Tensor) -> Tensor:
    """d(x + g·h) = dx + dg·h + g·dh.  dx, h_s, dh: [P, N, D]; gate_s, dgate: [P, D] → [P, N, D]."""
    out = torch.addcmul(dx, dgate.unsqueeze(1), h_s.to(dx.dtype))
    return out.addcmul_(gate_s.to(dx.dtype).unsqueeze(1), dh)


@torch.no_grad()
def sinusoid_jvp(args_s: Tensor, dargs: Tensor) -> Tensor:
    """d[cos(a), sin(a)] = [−sin(a)·da, cos(a)·da].  args_s, dargs: [P, half] → [P, 2·half]."""
    a = args_s.to(dargs.dtype)
    return torch.cat([-torch.sin(a) * dargs, torch.cos(a) * dargs], dim=-1)


@torch.no_grad()
def conv_patch_jvp(conv: nn.Conv2d, dz: Tensor) -> Tensor:
    """Tangent of the patch embedding conv(z) + b: conv(dz) without bias, as tokens.

    dz: [P, C, H, W] → [P, N, D], N = (H/p)·(W/p), in dz's dtype.
    """
    out = F.conv2d(dz, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.flatten(2).transpose(1, 2).contiguous().to(dz.dtype)
