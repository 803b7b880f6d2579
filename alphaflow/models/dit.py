"""DiT with adaLN-Zero for average-velocity networks u(z_t, r, t | y)  (docs/conventions.md#the-backbone;
DiT arXiv 2212.09748, SiT arXiv 2401.08740).

The backbone: embedders, the transformer block, the final layer and the ``DiT`` module with its one commented
``initialize_weights`` (the size registry: ``registry.py``). The call contract (``alphaflow.conventions``):

    u = net(z, r, t, labels)      z: [B, C, H, W], r, t: [B], labels: [B] int64 or None → u: [B, C, H, W]

Two-time conditioning (docs/conventions.md#the-backbone): c = emb_t(t) + emb_Δ(t − r) + emb_y(labels), two *separate*
timestep embedders, times fed raw in [0, 1] (no ×1000, docs/official_code.md#timestep-scaling); the output is u.

Attention is ``F.scaled_dot_product_attention``. Its fused CPU/GPU kernels have no forward-mode
AD rule (docs/jvp.md#fused-attention-has-no-forward-mode-rule): wrap ``torch.func.jvp`` in
``sdpa_kernel([SDPBackend.MATH])``.

Tangent mode (``alphaflow.models.tangent``) computes the prediction and a JVP in one pass:

    u, du = net(z, r, t, labels, tangent=(rows, dz, dr, dt))

u: [B, C, H, W] exactly the ordinary forward's (same ops, same autograd graph); du: [P, C, H, W], the
no-grad directional derivative of u along (dz, dr, dt) on the P rows ``rows`` ([P] int64 row
indices, a slice of the batch, or None for all rows); dz: [P, C, H, W]; dr, dt: [P]. Each module below takes an optional
``tangent`` and then returns (primal, tangent). Hooks fire on every module the primal calls, except the
``nn.Sequential`` containers of the MLP and the timestep embedder, whose layers are called one by one.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alphaflow.conventions import NULL_LABEL
from alphaflow.models.logvar import LogVarianceHead, timestep_phases
from alphaflow.models.tangent import (Linear, Rows, attention_jvp, conv_patch_jvp, gated_residual_jvp, linear_jvp,
                                      mlp_jvp, modulate_jvp, silu_jvp, sinusoid_jvp, split_heads, take)

__all__ = ["DiT", "count_parameters"]  # the size registry: alphaflow.models.registry


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


def modulate_fp32(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """LayerNorm (no affine, eps 1e-6) then x·(1 + scale) + shift, in fp32 (docs/conventions.md#the-backbone;
    fp32 LayerNorm: docs/conventions.md#optimiser-ema-and-precision).

    x: [B, N, D]; shift, scale: [B, D]. Returns [B, N, D] in x's dtype (the activation dtype).
    "fp32" means at least fp32: a float64 model stays float64 (the JVP checks need it).
    """
    dtype = x.dtype
    compute = torch.promote_types(dtype, torch.float32)
    xf = layer_norm(x.to(compute), eps=1e-6)
    xf = xf * (1 + scale.to(compute).unsqueeze(1)) + shift.to(compute).unsqueeze(1)
    return xf.to(dtype)


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
        lin1, _, lin2 = self.mlp
        if tangent is None:
            return self.mlp(emb.to(lin1.weight.dtype))
        rows, dt = tangent
        hidden = lin1(emb.to(lin1.weight.dtype))
        out = lin2(self.mlp[1](hidden))
        demb = sinusoid_jvp(take(args, rows), self.phases(dt))  # phases is linear: d phases(t) = phases(dt)
        return out, linear_jvp(silu_jvp(take(hidden, rows), linear_jvp(demb, lin1.weight)), lin2.weight)


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear (bias, no qk-norm) → SDPA → out projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)

    def forward(self, x: Tensor, tangent: tuple[Rows, Tensor] | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """x: [B, N, D] → [B, N, D]; with tangent = (rows, dx [P, N, D]) also the tangent [P, N, D]."""
        B, N, D = x.shape
        lin = self.qkv(x)  # [B, N, 3D]
        qkv = lin.reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, N, head_dim]
        out = self.proj(o.transpose(1, 2).reshape(B, N, D))
        if tangent is None:
            return out
        rows, dx = tangent
        P = dx.shape[0]
        q, k, v = split_heads(lin, self.num_heads, rows)  # [P·heads, N, head_dim] each
        dq, dk, dv = split_heads(linear_jvp(dx, self.qkv.weight), self.num_heads)
        do = attention_jvp(q, k, v, dq, dk, dv)  # fused SDPA has no forward rule: math form on the rows
        return out, linear_jvp(do.view(P, self.num_heads, N, -1).transpose(1, 2).reshape(P, N, D), self.proj.weight)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: x += gate·f(modulate(LN(x))) for f = attention, MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden_mlp = int(hidden_size * mlp_ratio)
        self.attn = Attention(hidden_size, num_heads)
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
            x = x + gate_a.unsqueeze(1) * self.attn(modulate_fp32(x, shift_a, scale_a))
            x = x + gate_m.unsqueeze(1) * self.mlp(modulate_fp32(x, shift_m, scale_m))
            return x
        # The same primal as above, with the tangent of each step beside it (rules in models/tangent.py).
        rows, dx, dc = tangent
        _, s_scale_a, s_gate_a, _, s_scale_m, s_gate_m = take(mod, rows).chunk(6, dim=1)
        d = linear_jvp(silu_jvp(take(c, rows), dc), self.adaLN_modulation[1].weight).chunk(6, dim=1)
        dh = modulate_jvp(take(x, rows), s_scale_a, dx, d[0], d[1])
        a, da = self.attn(modulate_fp32(x, shift_a, scale_a), (rows, dh))
        dx = gated_residual_jvp(dx, s_gate_a, take(a, rows), d[2], da)
        x = x + gate_a.unsqueeze(1) * a
        dh = modulate_jvp(take(x, rows), s_scale_m, dx, d[3], d[4])
        fc1, act, fc2 = self.mlp
        pre = fc1(modulate_fp32(x, shift_m, scale_m))  # [B, N, 4D]
        m = fc2(act(pre))
        dx = gated_residual_jvp(dx, s_gate_m, take(m, rows), d[5], mlp_jvp(fc1, fc2, take(pre, rows), dh))
        return x + gate_m.unsqueeze(1) * m, dx


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
        out = self.linear(modulate_fp32(x, shift, scale))
        if tangent is None:
            return out
        rows, dx, dc = tangent
        dshift, dscale = linear_jvp(silu_jvp(take(c, rows), dc), self.adaLN_modulation[1].weight).chunk(2, dim=1)
        dh = modulate_jvp(take(x, rows), take(scale, rows), dx, dshift, dscale)
        return out, linear_jvp(dh, self.linear.weight)


class DiT(nn.Module):
    """Diffusion Transformer for the average velocity u(z_t, r, t | y)  (docs/conventions.md#the-backbone).

    input_size: H = W or (H, W) of z; in_channels: C (= C_out); num_classes: K (0 = unconditional),
    the label table always has K + 1 rows, the last one the null label; time_scale multiplies t
    before the sinusoid (1.0: raw t ∈ [0, 1], docs/official_code.md#timestep-scaling).

    decouple_at = K (Decoupled MeanFlow, arXiv 2510.24474): blocks < K see (t, label), the rest and the final layer
    (r, label), through the same t embedder, the Δ embedder at 0: at r = t the plain DiT, whose weights load as they
    are. None: every block sees t, Δ = t − r and the label. logvar adds ``log_variance(r, t)``.
    """

    supports_tangent: ClassVar[bool] = True  # forward(..., tangent=...) exists (module docstring)

    def __init__(
        self,
        *,
        input_size: int | tuple[int, int] = 32,
        in_channels: int = 4,
        patch_size: int = 2,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        time_scale: float = 1.0,
        decouple_at: int | None = None,
        logvar: bool = False,
    ):
        super().__init__()
        if decouple_at is not None and not 0 <= decouple_at <= depth:
            raise ValueError(f"decouple_at must lie in [0, depth={depth}] (blocks conditioned on t), got {decouple_at}")
        H, W = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if H % patch_size or W % patch_size:
            raise ValueError(f"input_size {(H, W)} must be divisible by patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.input_size, self.in_channels, self.out_channels = (H, W), in_channels, in_channels
        self.decouple_at = decouple_at
        self.patch_size, self.num_classes, self.num_heads = patch_size, num_classes, num_heads
        self.grid = (H // patch_size, W // patch_size)

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)  # receives t
        self.d_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)  # receives t − r
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)  # row num_classes = null label
        # Fixed, not trained; non-persistent so checkpoints do not pin the token grid.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, *self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()
        self.logvar_head = LogVarianceHead(time_scale=time_scale) if logvar else None

    def initialize_weights(self) -> None:
        """DiT's init (DiT arXiv 2212.09748; docs/conventions.md#the-backbone); the zero-inits make u_θ ≡ 0
        at initialisation."""
        # Every Linear: xavier-uniform weight, zero bias (the specific layers below override this).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # Patch embedding as a Linear on the flattened kernel [D, C·p·p].
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        # Label table and both timestep MLPs: N(0, 0.02) weights (biases stay 0).
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for emb in (self.t_embedder, self.d_embedder):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        # adaLN-Zero: zero every modulation output, so every gate is 0 and each block is the identity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # Final layer: zero modulation and zero output projection, so u = 0 exactly.
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def log_variance(self, r: Tensor, t: Tensor) -> Tensor:
        """lv(r, t): [B], [B] → [B] from the head that ``logvar=True`` adds (``alphaflow.models.logvar``)."""
        if self.logvar_head is None:
            raise ValueError("this DiT has no log-variance head: build it with logvar=True (model.logvar=true)")
        return self.logvar_head(r, t)

    def unpatchify(self, x: Tensor) -> Tensor:
        """[B, h·w, p·p·C] → [B, C, h·p, w·p]."""
        (h, w), p, C = self.grid, self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, C)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], C, h * p, w * p)

    def embed_labels(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """labels [B] in [0, K) or NULL_LABEL, or None (all null) → embeddings [B, D]."""
        if labels is None:
            idx = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
            return self.y_embedder(idx)
        if labels.shape != (batch,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor of shape [{batch}], got {labels.dtype} {tuple(labels.shape)}")
        # Checked on the device, no host sync (``if bad.any():`` would stall every forward). On the CPU
        # _assert_async raises at once (re-raised as ValueError, with an example: a failing call may sync);
        # on CUDA it is a device-side assert with this message, reported at the next sync, fatal to the
        # CUDA context (bad labels are a caller's bug). Skipped inside torch.compile to keep the graph whole.
        if not torch.compiler.is_compiling():
            valid = (labels == NULL_LABEL) | ((labels >= 0) & (labels < self.num_classes))
            message = f"labels must lie in [0, {self.num_classes}) or be NULL_LABEL ({NULL_LABEL})"
            try:
                torch._assert_async(valid.all(), message)
            except RuntimeError as err:
                raise ValueError(f"{message}, got e.g. {int(labels[~valid][0])}") from err
        idx = torch.where(labels == NULL_LABEL, torch.full_like(labels, self.num_classes), labels)
        return self.y_embedder(idx.long())

    def forward(self, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None = None,
                tangent: tuple[Rows, Tensor, Tensor, Tensor] | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """u(z, r, t | labels).  z: [B, C, H, W]; r, t: [B]; labels: [B] int64 or None → [B, C, H, W].

        With tangent = (rows, dz, dr, dt) returns (u, du): du [P, C, H, W] is the no-grad JVP of u along
        (dz [P, C, H, W], dr [P], dt [P]) on ``rows`` ([P] int64 indices, a slice, or None: all rows).
        """
        expected = (self.in_channels, *self.input_size)
        if z.ndim != 4 or tuple(z.shape[1:]) != expected:
            raise ValueError(f"z must have shape [B, {', '.join(map(str, expected))}], got {tuple(z.shape)}")
        B = z.shape[0]
        for name, val in (("r", r), ("t", t)):
            if val.shape != (B,):
                raise ValueError(f"{name} must have shape [{B}] (one time per sample), got {tuple(val.shape)}")
        if tangent is not None:
            return self._forward_with_tangent(z, r, t, labels, *self._check_tangent(tangent, B))

        # Token-major memory from here on: every LayerNorm and Linear would otherwise copy x first.
        x = self.x_embedder(z).flatten(2).transpose(1, 2).contiguous()  # [B, N, D], N = h·w
        x = x + self.pos_embed.to(x.dtype)  # [B, N, D]
        y = self.embed_labels(labels, B, z.device)
        if self.decouple_at is None:
            c = c_late = self.t_embedder(t) + self.d_embedder(t - r) + y  # [B, D]
        else:
            zero = self.d_embedder(torch.zeros_like(t))
            c, c_late = self.t_embedder(t) + zero + y, self.t_embedder(r) + zero + y
        for k, block in enumerate(self.blocks):
            x = block(x, c if self.decouple_at is None or k < self.decouple_at else c_late)  # [B, N, D]
        x = self.final_layer(x, c_late)  # [B, N, p·p·C]
        return self.unpatchify(x)  # [B, C, H, W]

    def _check_tangent(self, tangent: tuple, batch: int) -> tuple[Rows, Tensor, Tensor, Tensor]:
        """Refuse a malformed (rows, dz, dr, dt); errors name the offending part."""
        if not isinstance(tangent, (tuple, list)) or len(tangent) != 4:
            raise ValueError(f"tangent must be a tuple (rows, dz, dr, dt), got {type(tangent).__name__}")
        rows, dz, dr, dt = tangent
        if isinstance(rows, slice):
            P = len(range(*rows.indices(batch)))
        elif rows is None or (isinstance(rows, Tensor) and rows.ndim == 1 and rows.dtype == torch.long):
            P = batch if rows is None else rows.shape[0]
        else:
            got = f"{rows.dtype} {tuple(rows.shape)}" if isinstance(rows, Tensor) else type(rows).__name__
            raise ValueError(f"tangent rows must be None, a slice or a [P] int64 index tensor, got {got}")
        expected = (P, self.in_channels, *self.input_size)
        if tuple(dz.shape) != expected:
            raise ValueError(f"tangent dz must have shape {list(expected)} (one per tangent row), got {tuple(dz.shape)}")
        for name, val in (("dr", dr), ("dt", dt)):
            if val.shape != (P,):
                raise ValueError(f"tangent {name} must have shape [{P}] (one per row), got {tuple(val.shape)}")
        return rows, dz, dr, dt

    def _forward_with_tangent(self, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None, rows: Rows,
                              dz: Tensor, dr: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """The ordinary forward's primal, op for op, with its tangent on ``rows`` beside it (see ``forward``)."""
        dtype = torch.promote_types(self.x_embedder.weight.dtype, torch.float32)  # tangents in at least fp32
        if dz.shape[0] == 0:  # no tangent rows: the ordinary forward and an empty tangent
            return self.forward(z, r, t, labels), dz.new_zeros(dz.shape, dtype=dtype)
        dz, dr, dt = dz.to(dtype), dr.to(dtype), dt.to(dtype)
        x = self.x_embedder(z).flatten(2).transpose(1, 2).contiguous()  # [B, N, D]
        dx = conv_patch_jvp(self.x_embedder, dz)  # [P, N, D]; the fixed positional embedding has no tangent
        x = x + self.pos_embed.to(x.dtype)
        y = self.embed_labels(labels, z.shape[0], z.device)  # [B, D]; labels carry no tangent
        c_t, dc_t = self.t_embedder(t, (rows, dt))
        if self.decouple_at is None:
            c_d, dc_d = self.d_embedder(t - r, (rows, dt - dr))  # Δ = t − r, dΔ = dt − dr
            c = c_late = c_t + c_d + y
            dc = dc_late = dc_t + dc_d  # [P, D]
        else:  # the Δ embedder at 0 has no tangent; the late blocks move with r
            zero = self.d_embedder(torch.zeros_like(t))
            c_r, dc_late = self.t_embedder(r, (rows, dr))
            c, c_late, dc = c_t + zero + y, c_r + zero + y, dc_t
        for k, block in enumerate(self.blocks):
            early = self.decouple_at is None or k < self.decouple_at
            x, dx = block(x, c if early else c_late, (rows, dx, dc if early else dc_late))
        x, dx = self.final_layer(x, c_late, (rows, dx, dc_late))
        return self.unpatchify(x), self.unpatchify(dx)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the fixed positional embedding is a buffer, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
