"""No-grad network passes inside a training autocast region, made safe from autocast's weight cache.

The objectives run stop-gradient passes of the network (α-Flow's discrete target, the CFG passes,
Shortcut's two half jumps, the no-grad ``torch.func.jvp`` of MeanFlow) *inside* the trainer's
``torch.autocast``, before or after the prediction that is differentiated. Autocast caches the
low-precision cast of each fp32 leaf parameter for the whole autocast region. On torch builds before
the fix of pytorch issues 112583 / 65766 / 158232, a cast made under ``torch.no_grad()`` was cached
too: the later grad-mode forward then reused that cast, which has no autograd history, and the
weights silently got no gradient (or only some layers did). Whether a given build has the fix is not
something the training loop should depend on.

``target_pass()`` makes a no-grad pass immune whatever the torch version: it enters
``torch.no_grad()`` and, for each device type whose autocast is on, re-enters the same autocast
(same device type and dtype) with ``cache_enabled=False``, so the casts made inside neither read
nor write the cache. Outside autocast it is just ``torch.no_grad()``. The cost is one extra cast of
each weight per pass, small next to the pass itself.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch

__all__ = ["target_pass", "AUTOCAST_DEVICES"]

AUTOCAST_DEVICES: tuple[str, ...] = ("cpu", "cuda")


@contextmanager
def target_pass() -> Iterator[None]:
    """``torch.no_grad()`` plus, where autocast is enabled, the same autocast with its cache off.

    Use it for every network pass whose output only feeds a stop-gradient target::

        with target_pass():
            u_tgt = net(z_s, r, s, labels)
    """
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        for device in AUTOCAST_DEVICES:
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False))
        yield
