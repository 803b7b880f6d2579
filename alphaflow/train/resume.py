"""A resume continues the run its checkpoint was trained with, whatever became of config.json.

Every checkpoint holds the resolved config it was trained with (``"config"``, ``to_dict(cfg)``). Before a run
resumes, the trainer compares it with the config of the command, with the rule config.json is held to
(``RunFolder.write_config``): every key must match (no key may change on resume), after the saved dict is read
in today's form (``to_dict(from_dict(saved))``: fields added since take their defaults, an earlier version's
layout is upgraded). So a deleted config.json no longer lets a changed learning rate through, and config.json
is written again only once the checkpoint agreed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alphaflow.config import from_dict, to_dict
from alphaflow.errors import UsageError

__all__ = ["check_resumed_config", "config_changes"]


def check_resumed_config(saved: Any, current: dict, checkpoint: Path) -> None:
    """Raise ``UsageError`` (one line) when ``current`` (``to_dict`` of the run's config) differs from ``saved``,
    the config stored in ``checkpoint``; it lists each differing key as ``dotted.key: old → new``.

    A checkpoint without a stored config (None, not a mapping) is not compared. A saved config today's schema
    cannot read is compared as stored, so its differences are reported instead of hidden."""
    if not isinstance(saved, Mapping):
        return
    try:
        saved = to_dict(from_dict(saved))
    except ValueError:
        saved = dict(saved)
    changes = config_changes(saved, current)
    if changes:
        shown = "; ".join(changes[:10]) + (f"; and {len(changes) - 10} more" if len(changes) > 10 else "")
        raise UsageError(f"{checkpoint} was trained with a different config; resuming would mix two runs. "
                         f"Changed keys (checkpoint → now): {shown}. Run the command the run was started with, "
                         "or use another --out.")


def config_changes(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """``key: old → new`` for every leaf where two nested config dicts differ, by dotted key, sorted; a key
    missing on one side shows as ``(absent)``."""
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {_show(a)} → {_show(b)}")
    return out


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)
