"""Reading a training snapshot of another codebase without running any of its code.

``torch.load`` unpickles, and a pickle may name any importable callable; a snapshot of the official α-Flow code
(snap-research/alphaflow) holds, besides tensors, plain dicts of its config and statistics, and possibly objects
of its own classes. ``read_snapshot`` unpickles with a restricted unpickler: the globals that PyTorch's
``weights_only`` loader allows (tensors, storages, dtypes, ``OrderedDict``, ...) resolve as usual, and every other
global resolves to an inert stand-in, a ``dict`` subclass that records its name and whatever the pickle hands it
(constructor arguments, state, items) and never imports or calls anything. Nothing of the snapshot's code runs.
"""

from __future__ import annotations

import collections
import pickle
import types
from pathlib import Path
from typing import Any

import torch


def _allowed_globals() -> dict[str, Any]:
    """"module.name" → object for the globals a weights-only ``torch.load`` accepts (PyTorch's own list where it
    can be read, else the few a state dict needs)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except (ImportError, AttributeError):  # a PyTorch without the private list: the essentials
        import torch._utils as tu

        names = {"collections.OrderedDict": collections.OrderedDict, "torch.Size": torch.Size,
                 "torch.device": torch.device, "torch._utils._rebuild_tensor_v2": tu._rebuild_tensor_v2,
                 "torch._utils._rebuild_parameter": tu._rebuild_parameter, "builtins.set": set,
                 "builtins.frozenset": frozenset, "builtins.complex": complex, "builtins.slice": slice}
        names.update({f"torch.{n}": getattr(torch, n) for n in ("float64", "float32", "float16", "bfloat16", "int64",
                                                                  "int32", "int16", "int8", "uint8", "bool")})
        return names


class StandIn(dict[str, Any]):
    """An inert object in place of a class the unpickler does not trust: keeps ``stand_in_for`` ("module.name"),
    the call's ``args``/``kwargs``, the pickled ``state`` and ``items``; a mapping of the dict items it was given."""

    stand_in_for = "?"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items_: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.args, self.kwargs, self.state, self.items_ = args, kwargs, None, []

    def __setstate__(self, state: Any) -> None:
        self.state = state
        if isinstance(state, dict):
            self.update(state)

    def append(self, item: Any) -> None:
        self.items_.append(item)

    def extend(self, items: Any) -> None:
        self.items_.extend(items)

    def __repr__(self) -> str:
        return f"<stand-in for {self.stand_in_for}>"


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` gives PyTorch's weights-only globals, and a ``StandIn`` subclass for anything else."""

    allowed = _allowed_globals()
    seen: set[str]

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in self.allowed:
            return self.allowed[key]
        if not hasattr(self, "seen"):
            self.seen = set()
        self.seen.add(key)
        return type(name, (StandIn,), {"stand_in_for": key, "__module__": __name__})


RESTRICTED = types.ModuleType("alphaflow_restricted_pickle")
setattr(RESTRICTED, "Unpickler", RestrictedUnpickler)  # what torch.load takes from its pickle_module
setattr(RESTRICTED, "load", pickle.load)
RESTRICTED.__name__ = "alphaflow_restricted_pickle"


def read_snapshot(path: str | Path) -> dict[str, Any]:
    """The snapshot at ``path`` unpickled by ``RestrictedUnpickler`` onto the CPU (module docstring); refuses a
    file that is not a dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"snapshot {str(path)!r} does not exist (expected a .pt file of the official code)")
    try:
        obj = torch.load(path, map_location="cpu", pickle_module=RESTRICTED, weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"snapshot {str(path)!r} could not be read as a torch.save file: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"snapshot {str(path)!r} holds a {type(obj).__name__}, expected a dict with 'net' and 'ema'")
    return obj
