"""Files on disk, written so a crash or a full disk never leaves half of one: atomic writes, tolerant JSON and
JSONL readers, and reading a checkpoint without running code. The run folder (``alphaflow.runfolder``) is
built on these."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, problems: list[str] | None = None) -> Any:
    """The JSON value in ``path``; None if the file is absent, or unreadable (then one line goes to ``problems``)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if problems is not None:
            problems.append(f"{path.parent.name}: unreadable {path.name} ({type(exc).__name__})")
        return None


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON row (it must carry a 'step') and flush."""
    if "step" not in row:
        raise ValueError(f"a row of {path.name} needs a 'step'")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def scan_jsonl(path: Path, require: str | None = "step") -> tuple[list[dict[str, Any]], int]:
    """The dict rows of a JSONL file that hold the key ``require`` (any dict if None), and how many non-blank
    lines were skipped (torn, garbled, or not such a row). A missing file is ([], 0); other I/O errors raise.

    Fast path: all lines parse as one JSON array; a torn line makes that fail, and then each line is parsed
    alone. Python's json reads the NaN and Infinity that ``json.dumps`` writes.
    """
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        rows = json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        rows = None
    if rows is None or len(rows) != len(lines):  # a line holding "1, 2" also fails the count
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    kept = [r for r in rows if isinstance(r, dict) and (require is None or require in r)]
    return kept, len(lines) - len(kept)


def read_jsonl(path: Path, require: str | None = "step") -> list[dict[str, Any]]:
    """The rows of ``scan_jsonl``, without the count of skipped lines."""
    return scan_jsonl(path, require)[0]


CHECKPOINT_KEYS = ("format", "step", "config", "net", "ema", "opt", "data_stats", "state", "rng")


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint this project wrote, read with ``torch.load(weights_only=True)``: only tensors, numbers,
    strings, lists and dicts are unpickled, so a file from elsewhere cannot run code while it loads.

    Raises ``ValueError`` naming the file for one that holds other Python objects or is not a dict with the
    project's keys (``CHECKPOINT_KEYS``); I/O and archive errors propagate as they are.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(exc))
        named = f" (it names {found.group(1)})" if found else ""
        raise ValueError(f"{path} is not an alphaflow checkpoint: it holds Python objects other than tensors, "
                         f"numbers, strings, lists and dicts{named}, and loading those could run code, so it is "
                         "refused") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        what = f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else f"a dict without {', '.join(missing)}"
        raise ValueError(f"{path} is not an alphaflow checkpoint: it holds {what} "
                         f"(a training checkpoint has {', '.join(CHECKPOINT_KEYS)})")
    return ckpt
