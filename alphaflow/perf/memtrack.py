"""Live-storage tracking on fake tensors: the measuring half of ``alphaflow.perf.memplan``.

``FakeRun`` enters ``FakeTensorMode`` (shapes, dtypes, autograd and autocast run; no arithmetic and no
allocation) with a dispatch mode above it that counts every new storage an op returns (its bytes rounded up
to the CUDA caching allocator's 512-byte blocks) and subtracts it when the storage is freed (a
``weakref.finalize``: CPython's reference counting frees a tensor at the point where the caching allocator
gets its block back), keeping the peak.

Fake tensors have no values, so an op whose output shape depends on values cannot run. The few the planned
code paths contain (the guidance window's ``nonzero``, a boolean-mask gather, a ``bool(mask.any())``) are
answered as if every row were selected: the plan is then an upper bound on those branches. Row selections
of drawn samples are slices (no values needed), so the training and probe paths are planned exactly.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch._ops import OpOverload
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

BLOCK = 512  # the CUDA caching allocator rounds every request up to a multiple of 512 bytes
_aten = torch.ops.aten
_BOOL_INDEX = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}


def rounded(nbytes: int) -> int:
    """Bytes the caching allocator hands out for a request of ``nbytes``."""
    return -(-nbytes // BLOCK) * BLOCK


class FakeRun(TorchDispatchMode):
    """``with FakeRun() as run: ...`` then ``run.peak`` and ``run.live`` in bytes; ``run.reset_peak()`` starts a
    new peak from what is live. ``run.fake(shape, dtype)`` is a fake input; ``run.real(t)`` a fake copy of t."""

    def __init__(self) -> None:
        super().__init__()
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.live = self.peak = 0
        self._seen: dict[int, weakref.finalize[[int, int], torch.UntypedStorage]] = {}

    def __enter__(self) -> "FakeRun":
        self.fake_mode.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:  # (type, value, traceback), passed on
        super().__exit__(*exc)
        self.fake_mode.__exit__(*exc)

    def reset_peak(self) -> None:
        self.peak = self.live

    def fake(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.empty(tuple(shape), dtype=dtype)

    def real(self, value: Tensor) -> Tensor:
        """A fake tensor with ``value``'s shape and dtype (its values are not kept)."""
        return self.fake(value.shape, value.dtype)

    # ------------------------------------------------------------------ bookkeeping
    def _track(self, out: object) -> None:
        for t in tree_leaves(out):
            if not isinstance(t, Tensor):
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in self._seen:
                continue
            n = rounded(st.nbytes())
            self.live += n
            self.peak = max(self.peak, self.live)
            self._seen[key] = weakref.finalize(st, self._free, key, n)

    def _free(self, key: int, n: int) -> None:
        if self._seen.pop(key, None) is not None:
            self.live -= n

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func: OpOverload, types: Sequence[type], args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is _aten._local_scalar_dense.default:
            return 1  # bool(mask.any()), a count: "selected" (the upper-bound branch)
        if func is _aten.nonzero.default:
            mask = args[0]
            if mask.ndim != 1:
                raise RuntimeError(f"the memory plan cannot answer nonzero of a {mask.ndim}-d mask")
            out = torch.arange(mask.shape[0], device=mask.device).unsqueeze(1)  # every row selected
            self._track(out)
            return out
        if func in _BOOL_INDEX and any(isinstance(i, Tensor) and i.dtype == torch.bool for i in args[1]):
            if len(args[1]) != 1 or args[1][0].ndim != 1:
                raise RuntimeError("the memory plan handles boolean masks over the first dimension only")
            rows = torch.arange(args[1][0].shape[0], device=args[0].device)
            return self.__torch_dispatch__(func, types, (args[0], [rows], *args[2:]), kwargs)
        out = func(*args, **kwargs)
        self._track(out)
        return out
