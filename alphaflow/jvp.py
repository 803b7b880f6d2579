"""The MeanFlow JVP done right (SPEC §1.2, §6.5; PERF.md).

du/dt is the total derivative of u_θ(z_t, r, t) along the trajectory: the Jacobian-vector
product with tangent (ṽ, 0, 1) in (z, r, t),

    du/dt = ∂_z u · ṽ + ∂_t u.

It is computed in forward mode with ``torch.func.jvp``, under no-grad (it only feeds the
stop-gradient target), on the unwrapped module (``torch.func`` cannot see through DDP), with
attention forced to the math backend: the fused ``scaled_dot_product_attention`` kernels
have no forward-mode rule. Outside this function attention stays fused. The r tangent is
zero, so r is closed over instead of differentiated.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

Net = Callable[..., Tensor]


def unwrap(net: Net) -> Net:
    """The plain module under DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(net, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            net = net.module
        elif isinstance(net, nn.Module) and hasattr(net, "_orig_mod"):
            net = net._orig_mod
        else:
            return net


@torch.no_grad()
def average_velocity_jvp(net: Net, z: Tensor, r: Tensor, t: Tensor, labels: Tensor | None,
                         tangent: Tensor) -> tuple[Tensor, Tensor]:
    """(u, du/dt) at (z, r, t) along (tangent, 0, 1).

    z, tangent: [B, ...]; r, t: [B]; labels: [B] or None. Returns two detached [B, ...]
    tensors. ``net`` is unwrapped here, so callers may pass the DDP-wrapped module.
    """
    module = unwrap(net)

    def u_of(z_: Tensor, t_: Tensor) -> Tensor:
        return module(z_, r, t_, labels)

    with sdpa_kernel([SDPBackend.MATH]):
        u, dudt = torch.func.jvp(u_of, (z, t), (tangent.to(z.dtype), torch.ones_like(t)))
    return u, dudt
