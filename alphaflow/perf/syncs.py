"""Count the operations that make the host wait for the device (host syncs), on any machine.

On CUDA the host queues kernels and runs ahead; an operation whose *result shape or value must be
known on the host* stops it until the device has caught up. A training step with such an operation
leaves the GPU idle while the host prepares the next kernels. ``torch.cuda.set_sync_debug_mode``
reports them, but only on a GPU; this module counts the same operations on the CPU (where they
are free), so a unit test can pin "a training step makes no host sync" without a GPU::

    with count_host_syncs() as syncs:
        objective(net, x, y).loss.mean().backward()
    assert syncs.count == 0, syncs.events

What is counted (the aten op as the dispatcher sees it, once per call):

    aten._local_scalar_dense    item(), bool(), float(), int() of a tensor (``if mask.any():``)
    aten.is_nonzero, aten.equal, aten.allclose     a Python bool from tensor data
    aten.nonzero, aten.masked_select, aten.unique* (incl. _unique2, unique_consecutive)
                                output shape depends on the data
    aten.index.Tensor, aten.index_put(_)   only when an index is a bool/uint8 mask (``x[mask]``):
                                the mask becomes indices by a nonzero
    aten.repeat_interleave      with tensor repeats and no ``output_size``
    aten._to_copy / aten.copy_  a blocking copy from a non-CPU device to the CPU (``.cpu()``,
                                ``.to("cpu")``); non_blocking copies are not counted
    Tensor.tolist(), Tensor.numpy()    these do not pass through the dispatcher (``x.tolist()``
                                shows no op at all under a dispatch mode), so they are patched on
                                ``torch.Tensor`` for the duration of the context

Blind spots (say so when a count of 0 is quoted):

- a blocking host→device copy (``torch.tensor(...)`` of a Python list on a CUDA device, ``.to(cuda)``
  of pageable memory) waits for the copy, not for queued kernels; not counted;
- ``.cpu()`` of a tensor that already lives on the CPU is a no-op that the dispatcher never sees, so a
  device→host read that would sync on CUDA is invisible when the same code runs on the CPU (``tolist``
  and ``item`` are counted whatever the device);
- syncs inside a kernel's C++ implementation (below the dispatcher) and in the caching allocator;
- ops inside a counted op are not seen again (a bool-mask index counts once, not also as a nonzero);
- the ``tolist``/``numpy`` patch is process-wide, so other threads' calls are counted too.

The dispatch mode is thread-local: on the CPU ``loss.backward()`` runs on the calling thread, so its
ops are counted as well.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncs", "count_host_syncs", "SYNC_OPS"]

aten = torch.ops.aten

# Ops that always sync on CUDA (their packet names; every overload counts).
SYNC_OPS: frozenset[str] = frozenset({
    "_local_scalar_dense", "is_nonzero", "equal", "allclose", "nonzero", "masked_select",
    "unique_consecutive", "unique_dim", "unique_dim_consecutive", "_unique", "_unique2",
})
_MASK_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl", "_index_put_impl_"})
_MASK_DTYPES = (torch.bool, torch.uint8)


@dataclass
class HostSyncs:
    """What ``count_host_syncs`` saw: ``events`` lists the op names in call order."""

    events: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.events)


def _has_mask_index(args: tuple[Any, ...]) -> bool:
    """index(self, indices) / index_put(self, indices, values): does any index tensor hold a mask?"""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in _MASK_DTYPES for i in indices or ())


def _is_blocking_device_to_host(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``_to_copy(src, device=cpu)`` or ``copy_(dst_cpu, src)`` from a non-CPU source, not non_blocking."""
    if name == "_to_copy":
        src, device = args[0], kwargs.get("device")
        return (device is not None and torch.device(device).type == "cpu" and src.device.type != "cpu"
                and not kwargs.get("non_blocking", False))
    if name == "copy_":
        dst, src = args[0], args[1]
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return (isinstance(src, torch.Tensor) and dst.device.type == "cpu" and src.device.type != "cpu"
                and not non_blocking)
    return False


class _SyncCounter(TorchDispatchMode):
    def __init__(self, record: HostSyncs) -> None:
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if (name in SYNC_OPS
                or (name in _MASK_INDEX_OPS and _has_mask_index(args))
                # tensor repeats: the other overloads decompose into this one before reaching the mode
                or (func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None)
                or _is_blocking_device_to_host(name, args, kwargs)):
            self.record.events.append(str(func))
        return func(*args, **kwargs)


def _counting(method: Callable[..., Any], name: str, record: HostSyncs) -> Callable[..., Any]:
    """``method`` that first appends ``name`` to ``record.events``."""
    def spy(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        record.events.append(name)
        return method(self, *args, **kwargs)
    return spy


@contextmanager
def count_host_syncs() -> Iterator[HostSyncs]:
    """Count host syncs (module docstring) made inside the block; yields a ``HostSyncs``.

    Nests: an inner context counts its own block, the outer one sees the inner's ops too.
    """
    record = HostSyncs()
    patched = {}
    for method in ("tolist", "numpy"):
        patched[method] = torch.Tensor.__dict__.get(method)  # None: inherited from the C base class
        setattr(torch.Tensor, method, _counting(getattr(torch.Tensor, method), f"Tensor.{method}", record))
    try:
        with _SyncCounter(record):
            yield record
    finally:
        for method, previous in patched.items():
            if previous is None:
                delattr(torch.Tensor, method)
            else:
                setattr(torch.Tensor, method, previous)
