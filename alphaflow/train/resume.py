"""A resume continues the run its checkpoint was trained with, whatever became of config.json.

Every checkpoint holds the resolved config it was trained with (``"config"``, ``to_dict(cfg)``). Before a run
resumes, the trainer compares it with the config of the command, with the rule config.json is held to
(``RunFolder.write_config``): every key must match, after the saved dict is read in today's form
(``to_dict(from_dict(saved))``: fields added since take their defaults, an earlier version's layout is
upgraded). So a deleted config.json no longer lets a changed learning rate through, and config.json is written
again only once the checkpoint agreed.

The exception: ``FREE_ON_RESUME``, the keys that say how the run is executed, not what it computes. Changing
them on resume is accepted with one line (``alphaflow.train.startup``), and config.json records the new value
(it describes the run as it trains now; the checkpoints written from then on hold it too):

    train.threads           torch's CPU threads
    data.workers            the processes that load batches; the batch stream is a function of (seed, batch
                            number) alone (``alphaflow.train.batches``)
    train.async_ckpt        whether the checkpoint is written by a background thread; the file is the same
    train.dist_timeout_min  how long a rank waits for the others before giving up

Not free, though no weight depends on it: ``train.log_every``. It decides which steps have a metrics row and
what each row averages (its tick), and probe.every / eval.every are its multiples, so changing it mid-run
changes the recorded curves that runs are compared by. ``train.device`` and ``train.precision`` change the
numbers (another device, bf16 autocast); ``train.steps`` changes the α schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from alphaflow.run.errors import UsageError

__all__ = ["FREE_ON_RESUME", "check_resumed_config", "config_changes"]

FREE_ON_RESUME = frozenset({"train.threads", "data.workers", "train.async_ckpt", "train.dist_timeout_min"})


def check_resumed_config(saved: Any, current: dict[str, Any], checkpoint: Path,
                         normalize: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None) -> list[str]:
    """Raise ``UsageError`` (one line) when ``current`` (``to_dict`` of the run's config) differs from ``saved``,
    the config stored in ``checkpoint``, in a key outside ``FREE_ON_RESUME``; it lists each differing key as
    ``dotted.key: old → new``. Returns the changes of free keys in that form (the caller says them).

    ``normalize`` reads ``saved`` in today's form first (the trainer passes ``to_dict(from_dict(saved))``). A
    checkpoint without a stored config (None, not a mapping) is not compared. A saved config ``normalize``
    cannot read is compared as stored, so its differences are reported instead of hidden."""
    if not isinstance(saved, Mapping):
        return []
    try:
        saved = normalize(saved) if normalize is not None else dict(saved)
    except ValueError:
        saved = dict(saved)
    changes = list(_leaves(saved, current))
    fixed = [_line(c) for c in changes if c[0] not in FREE_ON_RESUME]
    if fixed:
        shown = "; ".join(fixed[:10]) + (f"; and {len(fixed) - 10} more" if len(fixed) > 10 else "")
        raise UsageError(f"{checkpoint} was trained with a different config; resuming would mix two runs. "
                         f"Changed keys (checkpoint → now): {shown}. Run the command the run was started with, "
                         "or use another --out.")
    return [_line(c) for c in changes]


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old → new`` for every leaf where two nested config dicts differ, by dotted key, sorted; a key
    missing on one side shows as ``(absent)``."""
    return [_line(c) for c in _leaves(old, new, prefix)]


def _leaves(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, old, new) of each differing leaf, sorted by key."""
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            yield from _leaves(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


_ABSENT = object()


def _line(change: tuple[str, Any, Any]) -> str:
    key, a, b = change
    return f"{key}: {_show(a)} → {_show(b)}"


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)
