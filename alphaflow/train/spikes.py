"""``train.spike_guard``: hold back the update of a step whose gradient norm jumps far above its recent level
(docs/spikes.md).

With k = ``train.spike_guard`` > 0, step s is skipped (no Adam step, no EMA update; its batch counts as used) when

    not  ‖g_s‖ ≤ k · median(W)        W: the gradient norms (before clipping) of the last ``WINDOW`` steps
                                          whose loss and gradients were finite, skipped steps included

once W is full; before that, and with k = 0, nothing is skipped. A NaN or infinite norm with a finite loss is
skipped too once the guard is on (without it the trainer zeroes NaNs and clips). Skipped steps enter W: a
lasting rise of the norm (a new phase of training, not a spike) fills half the window within ``WINDOW``/2 steps
and from then on passes, so the guard cannot hold a run still; a lone spike moves the median by one place.

Where the decision is made: ``spike_flag`` is a 0-d device tensor that ``training_step`` stacks into its one
flag all-reduce, so the guard adds no host sync and every rank takes the same decision (the norm is the same on
every rank after DDP's all-reduce, every rank keeps the same W, and the reduced flag is read as "any rank").
W lives in ``LoopState.grad_norms`` and in every checkpoint, so a resumed run decides as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["WINDOW", "spike_flag", "remember_norm"]

# The median's window in steps. 100 steps is long enough that the median is steady (a spike, or a run of a few,
# moves it by a place or two) and short enough to follow the slow drift of the norm over training (warm-up,
# α's curriculum); the guard waits for the first 100 finite steps, when the norm changes fastest.
WINDOW = 100


def spike_flag(norm: Tensor, window: Tensor | list[float] | None, k: float) -> Tensor:
    """1.0 where the step is a spike, else 0.0: a 0-d float32 tensor on ``norm``'s device, computed there.

    norm: 0-d, the step's global gradient norm before clipping; window: W, the last norms ([n] tensor, or the
    list a checkpoint restored); k: ``train.spike_guard``. 0.0 whenever k = 0 or W holds fewer than ``WINDOW``
    norms (decided on the host from k and n, so no device value is read). ``torch.median`` of an even count is
    the lower of the two middle values.
    """
    if k <= 0 or window is None or len(window) < WINDOW:
        return norm.new_zeros((), dtype=torch.float32)
    median = _as_tensor(window, norm).median()
    return (~(norm <= k * median)).float()  # NaN and inf norms compare False, so they count as spikes


def remember_norm(window: Tensor | list[float] | None, norm: Tensor) -> Tensor:
    """W with ``norm`` appended and the oldest norm dropped beyond ``WINDOW``: [n] → [min(n + 1, WINDOW)], on the
    device (oldest first, so a checkpoint's list restores the same order)."""
    return torch.cat([_as_tensor(window, norm), norm.detach().reshape(1)])[-WINDOW:]


def _as_tensor(window: Tensor | list[float] | None, like: Tensor) -> Tensor:
    """W as a tensor of ``like``'s dtype and device (a restored list is copied to the device once)."""
    if isinstance(window, Tensor):
        return window
    return torch.tensor(window or [], dtype=like.dtype, device=like.device)
