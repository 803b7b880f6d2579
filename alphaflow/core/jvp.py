"""The MeanFlow JVP done right (docs/jvp.md; the official pattern: docs/official_code.md#jvp-implementation).

du/dt is the total derivative of u_θ(z_t, r, t) along the trajectory: the Jacobian-vector
product with tangent (ṽ, 0, 1) in (z, r, t),

    du/dt = ∂_z u · ṽ + ∂_t u.

It is computed in forward mode with ``torch.func.jvp``, under no-grad (it only feeds the
stop-gradient target), on the unwrapped module (``torch.func`` cannot see through DDP), with
attention forced to the math backend: the fused ``scaled_dot_product_attention`` kernels
have no forward-mode rule. Outside this function attention stays fused. The r tangent is
zero, so r is closed over instead of differentiated.

``prediction_and_dudt`` is what the objectives call: the prediction u_θ(z, r, t) with grad on
every row and du/dt without grad on the r < t rows. A model that advertises a tangent mode
(class attribute ``supports_tangent``, e.g. the DiT) computes both in ONE forward through the
wrapper (docs/jvp.md#cost-model: ≈(4 + f)/3 of a flow-matching step instead of ≈2, and no extra saved
activations); any other network gets the no-grad ``torch.func.jvp`` above, then an ordinary
forward (there the backbones' ``Linear`` layers skip the all-zero weight tangent by themselves).
"""

from __future__ import annotations

from typing import Callable, cast, overload

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from alphaflow.core.amp import target_pass

Net = Callable[..., Tensor]


@overload
def unwrap(net: nn.Module) -> nn.Module: ...
@overload
def unwrap(net: Net) -> Net: ...
def unwrap(net: Net) -> Net:
    """The plain module under DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            net = net.module
        elif isinstance(net, nn.Module) and hasattr(net, "_orig_mod"):
            net = cast(nn.Module, net._orig_mod)  # torch.compile's wrapper keeps the module it compiled
        else:
            return net


_TARGET_MODULE = "_alphaflow_target_module"


def route_target_passes(model: nn.Module, module: nn.Module) -> None:
    """Make ``target_module(model)`` return ``module``: the trainer's compiled plain network under
    ``train.compile=true``, so the no-grad target passes compile too. Kept in ``model.__dict__``, outside
    ``_modules``: it is not a submodule, and no state dict or ``parameters()`` sees it twice."""
    model.__dict__[_TARGET_MODULE] = module


def target_module(net: Net) -> Net:
    """The module that no-grad target passes call (α-Flow's jump, Shortcut's and SplitMeanFlow's half jumps,
    the guidance passes): what ``route_target_passes`` set on ``net``, else ``unwrap(net)``. Never DDP: a
    target pass needs no gradient synchronisation, and its own compiled graphs (no-grad, other row counts)
    instead of the prediction's."""
    routed = getattr(net, "__dict__", {}).get(_TARGET_MODULE)
    return routed if routed is not None else unwrap(net)


def average_velocity_jvp(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None,
                         tangent: Tensor) -> tuple[Tensor, Tensor]:
    """(u, du/dt) at (z, r, t) along (tangent, 0, 1).

    z, tangent: [B, ...]; r, t: [B]; labels: [B] or None. Returns two detached [B, ...]
    tensors. ``net`` is unwrapped here, so callers may pass the DDP-wrapped module. Runs under
    ``target_pass`` (no grad, and autocast without its weight cache: ``alphaflow.core.amp``).
    """
    module = unwrap(net)

    def u_of(z_: Tensor, t_: Tensor) -> Tensor:
        return module(z_, r, t_, labels)

    with target_pass(), sdpa_kernel([SDPBackend.MATH]):
        out = torch.func.jvp(u_of, (z, t), (tangent.to(z.dtype), torch.ones_like(t)))
    u, dudt = cast(tuple[Tensor, Tensor], out)  # without has_aux, jvp returns (output, tangent output)
    return u, dudt


def row_selection(rows: Tensor, batch: int) -> Tensor | slice | None:
    """Strictly increasing indices [P] → None when they cover the batch, a slice when they are one block,
    else the indices: the model then takes views, not copies.

    One host read of two numbers, so the objectives no longer call it: a drawn sample gives its r < t rows
    as a slice directly (``Sample.num_fm``), and caller-given indices go to the model as they are."""
    P = rows.shape[0]
    if P == batch:
        return None
    if P == 0:
        return rows
    first, last = rows[[0, -1]].tolist()
    return slice(first, first + P) if last - first == P - 1 else rows


def prediction_and_dudt(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None, tangent_z: Tensor,
                        rows: Tensor | slice) -> tuple[Tensor, Tensor]:
    """(u_θ(z, r, t) with grad, du/dt on ``rows`` without grad), du/dt along (tangent_z, 0, 1).

    z: [B, ...]; r, t: [B]; labels: [B] or None; rows: [P] int64 strictly increasing row indices (as
    ``mask.nonzero()`` gives) or a slice of the batch (a drawn sample's r < t rows, no host sync);
    tangent_z: [P, ...] the z tangent of those rows. Returns pred [B, ...] (through ``net``, so DDP sees
    one forward) and dudt [P, ...] in at least fp32. Nothing here reads device values on the host.
    """
    B = z.shape[0]
    if isinstance(rows, slice):
        start, stop, step = rows.indices(B)
        if step != 1:
            raise ValueError(f"rows must be a contiguous slice of the batch, got step {step}")
        P = max(stop - start, 0)
    else:
        P = rows.shape[0]
    if tuple(tangent_z.shape) != (P, *z.shape[1:]):
        raise ValueError(f"tangent_z must have shape {[P, *z.shape[1:]]} (one row per index in rows), "
                         f"got {tuple(tangent_z.shape)}")
    if getattr(unwrap(net), "supports_tangent", False):
        dr, dt = torch.zeros(P, dtype=t.dtype, device=t.device), torch.ones(P, dtype=t.dtype, device=t.device)
        selection = None if P == B else rows  # every row (strictly increasing indices: P = B means all)
        out = net(z, r, t, labels, tangent=(selection, tangent_z, dr, dt))
        return cast(tuple[Tensor, Tensor], out)  # a tangent-mode forward returns (prediction, du/dt)
    dtype = torch.promote_types(tangent_z.dtype, torch.float32)
    if P == 0:
        dudt = tangent_z.new_zeros(tangent_z.shape, dtype=dtype)
    else:
        pick: Callable[[Tensor], Tensor] = (  # noqa: E731
            (lambda a: a[rows]) if isinstance(rows, slice) else (lambda a: a.index_select(0, rows)))
        lab = None if labels is None else pick(labels)
        dudt = average_velocity_jvp(net, pick(z), pick(r), pick(t), lab, tangent_z)[1].to(dtype)
    return net(z, r, t, labels), dudt


def dudt_rms(dudt: Tensor, rows: Tensor | slice, batch: int) -> Tensor:
    """The size of the tangent per row, for ``Terms.logs["dudt_rms"]`` (docs/spikes.md): [B] float32 with

        dudt_rms_b = sqrt(mean over the elements of row b of (du/dt)²)   on ``rows``,   NaN on the other rows

    dudt: [P, ...] as ``prediction_and_dudt`` gives it for ``rows`` ([P] int64 or a slice of the batch of size
    ``batch``). The trainer logs the mean over the rows that have a value and its largest per-step value; the
    NaN rows mark "no tangent here", so micro-batches concatenate. On the device, no host sync.
    """
    rms = dudt.detach().float().flatten(1).square().mean(dim=1).sqrt()  # [P]
    out = torch.full((batch,), float("nan"), dtype=torch.float32, device=dudt.device)
    if isinstance(rows, slice):
        out[rows] = rms
    else:
        out.index_copy_(0, rows, rms)
    return out
