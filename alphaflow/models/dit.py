"""DiT with adaLN-Zero for average-velocity networks u(z_t, r, t | y)  (docs/conventions.md#the-backbone;
DiT arXiv 2212.09748, SiT arXiv 2401.08740).

The ``DiT`` module with its one commented ``initialize_weights`` and its options (the layers: ``dit_layers.py``;
the size registry: ``registry.py``). The call contract (``alphaflow.core.conventions``):

    u = net(z, r, t, labels)      z: [B, C, H, W], r, t: [B], labels: [B] int64 or None → u: [B, C, H, W]

Two-time conditioning (docs/conventions.md#the-backbone): c = emb_t(t) + emb_Δ(t − r) + emb_y(labels), two *separate*
timestep embedders, times fed raw in [0, 1] (no ×1000, docs/official_code.md#timestep-scaling); the output is u.
``time_cond="h"`` drops emb_t: c = emb_Δ(t − r) + emb_y(labels) (the official improved-MeanFlow network's form).

Attention is ``F.scaled_dot_product_attention``. Its fused CPU/GPU kernels have no forward-mode
AD rule (docs/jvp.md#fused-attention-has-no-forward-mode-rule): wrap ``torch.func.jvp`` in
``sdpa_kernel([SDPBackend.MATH])``.

Tangent mode (``alphaflow.models.tangent``) computes the prediction and a JVP in one pass:

    u, du = net(z, r, t, labels, tangent=(rows, dz, dr, dt))

u: [B, C, H, W] exactly the ordinary forward's (same ops, same autograd graph); du: [P, C, H, W], the
no-grad directional derivative of u along (dz, dr, dt) on the P rows ``rows`` ([P] int64 row
indices, a slice of the batch, or None for all rows); dz: [P, C, H, W]; dr, dt: [P]. Each layer (dit_layers.py)
takes an optional ``tangent`` and then returns (primal, tangent). Hooks fire on every module the primal calls, except the
``nn.Sequential`` containers of the MLP and the timestep embedder, whose layers are called one by one.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from alphaflow.core.conventions import NULL_LABEL
from alphaflow.models.dit_layers import (Attention, DiTBlock, FinalLayer, TimestepEmbedder, layer_norm, modulate,
                                         sincos_pos_embed_2d)
from alphaflow.models.jvp_attention import ATTENTION_IMPLS, triton_available
from alphaflow.models.logvar import LogVarianceHead
from alphaflow.models.tangent import Rows, conv_patch_jvp, tangent_dtype

# the layers are re-exported: alphaflow.models.dit.TimestepEmbedder etc. (the size registry: alphaflow.models.registry)
# The times the DiT is conditioned on (``model.time_cond``): t and h = t − r (MeanFlow's, α-Flow's) or h alone (iMF's).
TIME_CONDS = ("t_and_h", "h")
__all__ = ["DiT", "count_parameters", "Attention", "DiTBlock", "FinalLayer", "TimestepEmbedder", "layer_norm",
           "modulate", "sincos_pos_embed_2d"]


class DiT(nn.Module):
    """Diffusion Transformer for the average velocity u(z_t, r, t | y)  (docs/conventions.md#the-backbone).

    input_size: H = W or (H, W) of z; in_channels: C (= C_out); num_classes: K (0 = unconditional),
    the label table always has K + 1 rows, the last one the null label; time_scale multiplies t
    before the sinusoid (1.0: raw t ∈ [0, 1], docs/official_code.md#timestep-scaling).

    decouple_at = K (Decoupled MeanFlow, arXiv 2510.24474): blocks < K see (t, label), the rest and the final layer
    (r, label), through the same t embedder, the Δ embedder at 0: at r = t the plain DiT, whose weights load as they
    are. None: every block sees t, Δ = t − r and the label. logvar adds ``log_variance(r, t)``.

    aux_head_depth (improved MeanFlow, arXiv 2512.02012; docs/objectives.md#improved-meanflow) adds an
    instantaneous-velocity head v̂, returned beside u by ``forward(..., velocity=True)`` and never used to sample:
    0 is a second final layer on the shared trunk; k ≥ 1 (the official code's form) forks the last k blocks, the
    u branch keeping them and the v branch getting k blocks of its own. None (the default): no head, no cost.
    guidance_embed adds iMF's guidance conditioning: embedders of 1 − 1/ω, t_min and t_max summed into c
    (``forward(..., guide=[B, 3])``; absent: ω = 1 on [0, 1], no guidance). pos_embed="stored" keeps the
    positional embedding in the state dict (an imported network's values) instead of computing it.

    time_cond "t_and_h" (the default) conditions on t and h = t − r; "h" on h alone, as the official improved
    MeanFlow network does (arXiv 2512.02012): the DiT has no t embedder, c = emb_Δ(h) + emb_y(label) (+ guidance),
    and the tangent mode moves c by dh = dt − dr only (1 along MeanFlow's (ṽ, 0, 1)).
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
        aux_head_depth: int | None = None,
        guidance_embed: bool = False,
        pos_embed: str = "sincos",
        attention: str = "auto",
        time_cond: str = "t_and_h",
    ):
        super().__init__()
        if time_cond not in TIME_CONDS:
            raise ValueError(f"time_cond (model.time_cond: the times the DiT is conditioned on) must be one of "
                             f"{list(TIME_CONDS)}, got {time_cond!r}")
        if time_cond == "h" and decouple_at is not None:
            raise ValueError("time_cond='h' (model.time_cond) and decouple_at (model.decouple_at) do not combine: "
                             "decoupled blocks are conditioned on t and r; set one of them")
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {list(ATTENTION_IMPLS)} (how the tangent mode computes the "
                             f"attention tangent), got {attention!r}")
        if attention == "triton" and not triton_available():
            raise ValueError("attention='triton' (model.attention) needs Triton: pip install 'alphaflow[gpu]'")
        if pos_embed not in ("sincos", "stored"):
            raise ValueError(f"pos_embed must be 'sincos' (computed) or 'stored' (held in the checkpoint), got {pos_embed!r}")
        if decouple_at is not None and not 0 <= decouple_at <= depth:
            raise ValueError(f"decouple_at must lie in [0, depth={depth}] (blocks conditioned on t), got {decouple_at}")
        if aux_head_depth is not None and not 0 <= aux_head_depth <= depth:
            raise ValueError(f"aux_head_depth must lie in [0, depth={depth}] (blocks of the velocity head's own "
                             f"branch), got {aux_head_depth}")
        if aux_head_depth is not None and decouple_at is not None:
            raise ValueError("aux_head_depth (improved MeanFlow) and decouple_at (Decoupled MeanFlow) do not combine; "
                             "set one of them")
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
        self.time_cond = time_cond
        # receives t; none when conditioned on h alone (so DDP sees no parameter without a gradient)
        self.t_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale) if time_cond == "t_and_h" else None
        self.d_embedder = TimestepEmbedder(hidden_size, time_scale=time_scale)  # receives t − r
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)  # row num_classes = null label
        # Fixed, not trained; non-persistent so checkpoints do not pin the token grid, unless "stored": an imported
        # network's own values (alphaflow.official), which live in its checkpoints.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, *self.grid)[None],
                             persistent=pos_embed == "stored")
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, attention) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.aux_head_depth = aux_head_depth
        if aux_head_depth is not None:  # the velocity head: its own last blocks and final layer
            self.v_blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, attention)
                                           for _ in range(aux_head_depth)])
            self.v_final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.guide_embedders = nn.ModuleList(
            [TimestepEmbedder(hidden_size) for _ in range(3)]) if guidance_embed else None  # 1 − 1/ω, t_min, t_max
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
        nn.init.zeros_(cast(Tensor, self.x_embedder.bias))  # a Conv2d built with its bias
        # Label table and both timestep MLPs: N(0, 0.02) weights (biases stay 0).
        nn.init.normal_(self.y_embedder.weight, std=0.02)
        for emb in (*([self.t_embedder] if self.t_embedder is not None else ()), self.d_embedder,
                    *(self.guide_embedders or ())):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        # adaLN-Zero: zero every modulation output, so every gate is 0 and each block is the identity.
        heads = [self.final_layer] if self.aux_head_depth is None else [self.final_layer, self.v_final_layer]
        for block in [*self.blocks, *getattr(self, "v_blocks", ())]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # Final layers: zero modulation and zero output projection, so u = 0 (and v̂ = 0) exactly.
        for final in heads:
            for layer in (cast(nn.Linear, final.adaLN_modulation[-1]), final.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

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
                tangent: tuple[Rows, Tensor, Tensor, Tensor] | None = None, *, guide: Tensor | None = None,
                velocity: bool = False) -> Tensor | tuple[Tensor, ...]:
        """u(z, r, t | labels).  z: [B, C, H, W]; r, t: [B]; labels: [B] int64 or None → [B, C, H, W].

        With tangent = (rows, dz, dr, dt) returns (u, du): du [P, C, H, W] is the no-grad JVP of u along
        (dz [P, C, H, W], dr [P], dt [P]) on ``rows`` ([P] int64 indices, a slice, or None: all rows).
        guide: [B, 3] rows (ω, t_min, t_max) for a DiT with guidance_embed (None: (1, 0, 1)). velocity=True
        appends v̂ [B, C, H, W] from the velocity head (aux_head_depth; no tangent): (u, v̂) or (u, du, v̂).
        """
        expected = (self.in_channels, *self.input_size)
        if z.ndim != 4 or tuple(z.shape[1:]) != expected:
            raise ValueError(f"z must have shape [B, {', '.join(map(str, expected))}], got {tuple(z.shape)}")
        B = z.shape[0]
        for name, val in (("r", r), ("t", t)):
            if val.shape != (B,):
                raise ValueError(f"{name} must have shape [{B}] (one time per sample), got {tuple(val.shape)}")
        if velocity and self.aux_head_depth is None:
            raise ValueError("velocity=True needs a DiT with a velocity head: build it with aux_head_depth "
                             "(model.aux_head_depth)")
        if tangent is not None:
            return self._forward_with_tangent(z, r, t, labels, guide, velocity, *self._check_tangent(tangent, B))

        # Token-major memory from here on: every LayerNorm and Linear would otherwise copy x first.
        x = self.x_embedder(z).flatten(2).transpose(1, 2).contiguous()  # [B, N, D], N = h·w
        x = x + self.pos_embed.to(x.dtype)  # [B, N, D]
        y = self.condition(labels, guide, B, z)
        if self.t_embedder is None:  # time_cond "h": c = emb_Δ(t − r) + y
            c = c_late = self.d_embedder(t - r) + y  # [B, D]
        elif self.decouple_at is None:
            c = c_late = self.t_embedder(t) + self.d_embedder(t - r) + y  # [B, D]
        else:
            zero = self.d_embedder(torch.zeros_like(t))
            c, c_late = self.t_embedder(t) + zero + y, self.t_embedder(r) + zero + y
        trunk = x
        for k, block in enumerate(self.blocks):
            if k == self.fork:
                trunk = x
            x = block(x, c if self.decouple_at is None or k < self.decouple_at else c_late)  # [B, N, D]
        u = self.unpatchify(self.final_layer(x, c_late))  # [B, C, H, W]
        return (u, self.velocity_head(x if self.fork == len(self.blocks) else trunk, c)) if velocity else u

    @property
    def fork(self) -> int:
        """The block index where the velocity head's branch leaves the trunk (the depth: no branch)."""
        return len(self.blocks) - (self.aux_head_depth or 0)

    def velocity_head(self, trunk: Tensor, c: Tensor) -> Tensor:
        """v̂ from the trunk's tokens [B, N, D] after ``fork`` blocks and the conditioning c [B, D]: [B, C, H, W]."""
        for block in self.v_blocks:
            trunk = block(trunk, c)
        return self.unpatchify(self.v_final_layer(trunk, c))

    def condition(self, labels: Tensor | None, guide: Tensor | None, batch: int, z: Tensor) -> Tensor:
        """The label embedding [B, D], plus iMF's guidance embedding (1 − 1/ω, t_min, t_max) with guidance_embed."""
        y = self.embed_labels(labels, batch, z.device)
        if self.guide_embedders is None:
            if guide is not None:
                raise ValueError("guide= needs a DiT with guidance conditioning: build it with guidance_embed=True "
                                 "(model.guidance_embed=true)")
            return y
        if guide is None:
            guide = torch.tensor([1.0, 0.0, 1.0], dtype=z.dtype, device=z.device).expand(batch, 3)
        if guide.shape != (batch, 3):
            raise ValueError(f"guide must have shape [{batch}, 3] (ω, t_min, t_max per row), got {tuple(guide.shape)}")
        omega, t_min, t_max = guide.unbind(1)
        w_emb, min_emb, max_emb = self.guide_embedders
        return y + w_emb(1.0 - 1.0 / omega) + min_emb(t_min) + max_emb(t_max)

    def _check_tangent(self, tangent: tuple[Any, ...], batch: int) -> tuple[Rows, Tensor, Tensor, Tensor]:
        """Refuse a malformed (rows, dz, dr, dt); errors name the offending part."""
        if not isinstance(tangent, (tuple, list)) or len(tangent) != 4:
            raise ValueError(f"tangent must be a tuple (rows, dz, dr, dt), got {type(tangent).__name__}")
        rows, dz, dr, dt = tangent
        if isinstance(rows, slice):
            P = len(range(batch)[rows])  # not slice.indices: TorchDynamo before torch 2.13 breaks the graph on it
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

    def _forward_with_tangent(self, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None, guide: Tensor | None,
                              velocity: bool, rows: Rows, dz: Tensor, dr: Tensor, dt: Tensor) -> tuple[Tensor, ...]:
        """The ordinary forward's primal, op for op, with its tangent on ``rows`` beside it (see ``forward``)."""
        out_dtype = torch.promote_types(self.x_embedder.weight.dtype, torch.float32)  # du/dt: at least fp32
        dtype = tangent_dtype(self.x_embedder.weight)  # the tangents between layers: the compute dtype
        if dz.shape[0] == 0:  # no tangent rows: the ordinary forward and an empty tangent
            out = self.forward(z, r, t, labels, guide=guide, velocity=velocity)
            empty = dz.new_zeros(dz.shape, dtype=out_dtype)
            return (out[0], empty, out[1]) if velocity else (cast(Tensor, out), empty)  # velocity: (u, v̂)
        # the time tangents stay in at least fp32 (the sinusoid's phases, [P, 256]: small); z's takes the compute dtype
        dz, dr, dt = dz.to(dtype), dr.to(out_dtype), dt.to(out_dtype)
        x = self.x_embedder(z).flatten(2).transpose(1, 2).contiguous()  # [B, N, D]
        dx = conv_patch_jvp(self.x_embedder, dz)  # [P, N, D]; the fixed positional embedding has no tangent
        x = x + self.pos_embed.to(x.dtype)
        y = self.condition(labels, guide, z.shape[0], z)  # [B, D]; labels and guidance carry no tangent
        if self.t_embedder is None:  # time_cond "h": c moves with h = t − r alone, dh = dt − dr
            c_d, dc_d = self.d_embedder(t - r, (rows, dt - dr))
            c = c_late = c_d + y
            dc = dc_late = dc_d  # [P, D]
        elif self.decouple_at is None:
            c_t, dc_t = self.t_embedder(t, (rows, dt))
            c_d, dc_d = self.d_embedder(t - r, (rows, dt - dr))  # Δ = t − r, dΔ = dt − dr
            c = c_late = c_t + c_d + y
            dc = dc_late = dc_t + dc_d  # [P, D]
        else:  # the Δ embedder at 0 has no tangent; the late blocks move with r
            c_t, dc_t = self.t_embedder(t, (rows, dt))
            zero = self.d_embedder(torch.zeros_like(t))
            c_r, dc_late = self.t_embedder(r, (rows, dr))
            c, c_late, dc = c_t + zero + y, c_r + zero + y, dc_t
        dc, dc_late = dc.to(dtype), dc_late.to(dtype)  # [P, D]: the blocks' tangents stay in the compute dtype
        trunk = x
        for k, block in enumerate(self.blocks):
            if k == self.fork:
                trunk = x
            early = self.decouple_at is None or k < self.decouple_at
            x, dx = block(x, c if early else c_late, (rows, dx, dc if early else dc_late))
        out, dout = self.final_layer(x, c_late, (rows, dx, dc_late))
        # u_tgt = ṽ − (t − r)·du/dt cancels: the target is formed from du/dt in at least fp32 ([P, C, H, W]: small)
        u, du = self.unpatchify(out), self.unpatchify(dout.to(out_dtype))
        if not velocity:
            return u, du
        return u, du, self.velocity_head(x if self.fork == len(self.blocks) else trunk, c)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the fixed positional embedding is a buffer, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
