"""The DiT's layers (DiT arXiv 2212.09748; docs/conventions.md#the-backbone): LayerNorm and adaLN modulation in fp32,
the 2-D sin-cos positional embedding, the timestep embedder, attention, the adaLN-Zero block and the final layer.

Each module takes an optional ``tangent`` and then returns (primal, tangent): the tangent mode of
``alphaflow.models.dit`` (rules in ``alphaflow.models.tangent``).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alphaflow.models.jvp_attention import attention_tangent, use_fused_tangent
from alphaflow.models.logvar import timestep_phases
from alphaflow.models.tangent import (Linear, Rows, attention_jvp, gated_residual_jvp, linear_jvp, mlp_jvp, modulate_jvp,
                                      silu_jvp, sinusoid_jvp, split_heads, take)

__all__ = ["layer_norm", "modulate", "sincos_pos_embed_2d", "TimestepEmbedder", "Attention", "DiTBlock",
           "FinalLayer"]

def layer_norm(x: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last dimension without affine: (x − mean)/√(var + eps), [..., D] → [..., D].

    ``F.layer_norm`` everywhere but in one place: inside a ``torch.func`` transform with grad enabled (a JVP that
    is itself differentiated, Modular MeanFlow's λ > 0), where its forward-mode rule is not differentiated
    correctly (pytorch/pytorch#196700: the second-order result is silently wrong). There the same function is
    written out in primitive ops, whose rules are.
    """
    if torch.is_grad_enabled() and not torch.compiler.is_compiling() and torch.func.debug_unwrap(x) is not x:
        mean = x.mean(-1, keepdim=True)
        centred = x - mean
        return centred * torch.rsqrt((centred * centred).mean(-1, keepdim=True) + eps)
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """LayerNorm (no affine, eps 1e-6) then x·(1 + scale) + shift (docs/conventions.md#the-backbone; precision:
    docs/conventions.md#optimiser-ema-and-precision).

    x: [B, N, D]; shift, scale: [B, D]. Returns [B, N, D] in x's dtype (the activation dtype). The arithmetic is
    fp32 at least: in an fp32 or float64 model directly; for bf16 activations (autocast) inside the kernels, which
    read and write bf16 (LayerNorm's mean and variance, and addcmul's products, in fp32 registers: ŷ is rounded to
    bf16 once before the modulation). Writing fp32 copies of [B, N, D] instead moved about a third of a
    flow-matching step's non-matmul bytes (docs/jvp.md#the-census), for a value the next Linear casts to bf16.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        with torch.autocast(x.device.type, enabled=False):  # autocast would run layer_norm in fp32 I/O
            y = layer_norm(x, eps=1e-6)
            return torch.addcmul(shift.to(x.dtype).unsqueeze(1), y, (1 + scale.to(x.dtype)).unsqueeze(1))
    compute = torch.promote_types(x.dtype, torch.float32)
    xf = layer_norm(x.to(compute), eps=1e-6)
    xf = xf * (1 + scale.to(compute).unsqueeze(1)) + shift.to(compute).unsqueeze(1)
    return xf.to(x.dtype)


def sincos_pos_embed_2d(dim: int, h: int, w: int) -> Tensor:
    """Fixed 2-D sin-cos positional embedding for an h×w token grid, row-major: [h·w, dim].

    The first dim/2 channels encode the row index, the last dim/2 the column index; each half is
    [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(−k/(dim/4)). Computed in float64, returned float32.
    """
    if dim % 4 != 0:
        raise ValueError(f"hidden_size must be divisible by 4 for the 2-D sin-cos embedding, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def embed_1d(pos: Tensor) -> Tensor:  # [M] -> [M, dim/2]
        out = pos[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.cat([embed_1d(rows.reshape(-1)), embed_1d(cols.reshape(-1))], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Scalar time → [B, D]: 256-d sinusoid ([cos, sin], max period 10000) → Linear → SiLU → Linear."""

    def __init__(self, hidden_size: int, freq_dim: int = 256, time_scale: float = 1.0):
        super().__init__()
        self.freq_dim, self.time_scale = freq_dim, time_scale
        self.mlp = nn.Sequential(Linear(freq_dim, hidden_size), nn.SiLU(), Linear(hidden_size, hidden_size))

    def phases(self, t: Tensor) -> Tensor:
        """a = time_scale·t·ω_k, ω_k = 10000^(−k/half): [B] → [B, half], in at least fp32. Linear in t."""
        return timestep_phases(t, self.freq_dim, self.time_scale)

    def forward(self, t: Tensor, tangent: tuple[Rows, Tensor] | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """t: [B] → [B, D]; with tangent = (rows, dt [P]) also the tangent [P, D] (SiLU′ from the rows' hidden)."""
        args = self.phases(t)  # [B, half]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 256]
        lin1, _, lin2 = cast(tuple[Linear, nn.SiLU, Linear], self.mlp)  # nn.Sequential does not type its layers
        if tangent is None:
            return self.mlp(emb.to(lin1.weight.dtype))
        rows, dt = tangent
        hidden = lin1(emb.to(lin1.weight.dtype))
        out = lin2(self.mlp[1](hidden))
        demb = sinusoid_jvp(take(args, rows), self.phases(dt))  # phases is linear: d phases(t) = phases(dt)
        return out, linear_jvp(silu_jvp(take(hidden, rows), linear_jvp(demb, lin1.weight)), lin2.weight)


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear (bias, no qk-norm) → SDPA → out projection.

    ``impl`` (``model.attention``) picks how the tangent mode computes the attention tangent: the fused Triton
    kernel (``alphaflow.models.jvp_attention``: no N×N tensor) or the math form (``attention_jvp``); "auto" takes
    the kernel on CUDA when Triton is importable. The primal is SDPA either way."""

    def __init__(self, dim: int, num_heads: int, impl: str = "auto"):
        super().__init__()
        self.num_heads, self.impl = num_heads, impl
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)

    def forward(self, x: Tensor, tangent: tuple[Rows, Tensor] | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """x: [B, N, D] → [B, N, D]; with tangent = (rows, dx [P, N, D]) also the tangent [P, N, D]."""
        B, N, D = x.shape
        lin = self.qkv(x)  # [B, N, 3D]
        qkv = lin.reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        # unbind, not qkv[0], qkv[1], qkv[2]: three selects' backward would each zero-fill a qkv-sized gradient
        o = F.scaled_dot_product_attention(*qkv.unbind(0))  # [B, heads, N, head_dim]
        out = self.proj(o.transpose(1, 2).reshape(B, N, D))
        if tangent is None:
            return out
        rows, dx = tangent
        P, H = dx.shape[0], self.num_heads
        dlin = linear_jvp(dx, self.qkv.weight)  # [P, N, 3D]
        if use_fused_tangent(self.impl, lin, D // H):  # fused SDPA has no forward rule: our kernel, or the math form
            q, k, v = take(lin, rows).view(P, N, 3, H, -1).permute(2, 0, 3, 1, 4).unbind(0)  # [P, H, N, hd] views
            dq, dk, dv = dlin.view(P, N, 3, H, -1).permute(2, 0, 3, 1, 4).unbind(0)
            with torch.no_grad():
                do = attention_tangent(q, k, v, dq, dk, dv)[1].view(P, N, D)  # token-major: no copy
        else:
            q, k, v = split_heads(lin, H, rows)  # [P·heads, N, head_dim] each
            do = attention_jvp(q, k, v, *split_heads(dlin, H))
            do = do.view(P, H, N, -1).transpose(1, 2).reshape(P, N, D)
        return out, linear_jvp(do, self.proj.weight)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: x += gate·f(modulate(LN(x))) for f = attention, MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, attention: str = "auto"):
        super().__init__()
        hidden_mlp = int(hidden_size * mlp_ratio)
        self.attn = Attention(hidden_size, num_heads, attention)
        self.mlp = nn.Sequential(
            Linear(hidden_size, hidden_mlp), nn.GELU(approximate="tanh"), Linear(hidden_mlp, hidden_size)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor, tangent: tuple[Rows, Tensor, Tensor] | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        """x: [B, N, D], c: [B, D] → [B, N, D]; with tangent = (rows, dx [P, N, D], dc [P, D]) also [P, N, D]."""
        mod = self.adaLN_modulation(c)  # [B, 6D]
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=1)
        if tangent is None:
            # x + g·h as one addcmul: the residual stream is read and written once per branch
            x = torch.addcmul(x, gate_a.unsqueeze(1), self.attn(modulate(x, shift_a, scale_a)))
            x = torch.addcmul(x, gate_m.unsqueeze(1), self.mlp(modulate(x, shift_m, scale_m)))
            return x
        # The same primal as above, with the tangent of each step beside it (rules in models/tangent.py).
        rows, dx, dc = tangent
        _, s_scale_a, s_gate_a, _, s_scale_m, s_gate_m = take(mod, rows).chunk(6, dim=1)
        d = linear_jvp(silu_jvp(take(c, rows), dc), cast(Linear, self.adaLN_modulation[1]).weight).chunk(6, dim=1)
        dh = modulate_jvp(take(x, rows), s_scale_a, dx, d[0], d[1])
        a, da = self.attn(modulate(x, shift_a, scale_a), (rows, dh))
        dx = gated_residual_jvp(dx, s_gate_a, take(a, rows), d[2], da)
        x = torch.addcmul(x, gate_a.unsqueeze(1), a)
        dh = modulate_jvp(take(x, rows), s_scale_m, dx, d[3], d[4])
        fc1, act, fc2 = cast(tuple[Linear, nn.GELU, Linear], self.mlp)
        pre = fc1(modulate(x, shift_m, scale_m))  # [B, N, 4D]
        m = fc2(act(pre))
        dx = gated_residual_jvp(dx, s_gate_m, take(m, rows), d[5], mlp_jvp(fc1, fc2, take(pre, rows), dh))
        return torch.addcmul(x, gate_m.unsqueeze(1), m), dx


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + LayerNorm + Linear(D, p²·C_out): [B, N, D] → [B, N, p²·C_out]."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.linear = Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor, tangent: tuple[Rows, Tensor, Tensor] | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        """x: [B, N, D], c: [B, D] → [B, N, p²C]; with tangent = (rows, dx, dc) also the tangent [P, N, p²C]."""
        mod = self.adaLN_modulation(c)  # [B, 2D]
        shift, scale = mod.chunk(2, dim=1)
        out = self.linear(modulate(x, shift, scale))
        if tangent is None:
            return out
        rows, dx, dc = tangent
        adaLN = cast(Linear, self.adaLN_modulation[1])
        dshift, dscale = linear_jvp(silu_jvp(take(c, rows), dc), adaLN.weight).chunk(2, dim=1)
        dh = modulate_jvp(take(x, rows), take(scale, rows), dx, dshift, dscale)
        return out, linear_jvp(dh, self.linear.weight)
