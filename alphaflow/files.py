"""Files on disk, written so a crash or a full disk never leaves half of one: atomic writes, tolerant JSON and
JSONL readers, and reading a checkpoint without running code. The run folder (``alphaflow.runfolder``) is
built on these.

A write that fails (no space, no permission, quota) removes its temporary file, leaves the previous version of
the file as it was, and raises ``alphaflow.errors.WriteFailed`` naming what was written, the folder and, when
the disk is full, its free space."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from alphaflow.errors import WriteFailed


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _discard(tmp: Path) -> None:
    """Remove a temporary after a failed write; where even that fails (a read-only file system) it is absent."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, what: str | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary name and a rename; ``what`` names it in an error."""
    tmp = _tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise WriteFailed(what or path.name, path.parent, exc) from exc


def atomic_copy(src: Path, dst: Path, what: str | None = None) -> None:
    """Copy ``src`` to ``dst`` (streamed, so a checkpoint of many GB is never held in memory) through a
    temporary name and a rename, as ``atomic_write_bytes``."""
    tmp = _tmp_name(dst)
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as exc:
        _discard(tmp)
        raise WriteFailed(what or dst.name, dst.parent, exc) from exc


class _Recorder(io.RawIOBase):
    """A write-only file that keeps the ``OSError`` of a failed write: torch's archive writer turns it into
    ``RuntimeError('... unexpected pos ...')``, which says nothing about the disk."""

    def __init__(self, f: io.BufferedWriter) -> None:
        super().__init__()
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001 (a bytes-like object)
        try:
            return self.f.write(b)
        except OSError as exc:
            self.error = exc
            raise


def save_torch_atomic(obj: object, path: Path, what: str | None = None) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary name, fsync and a rename, as ``atomic_write_bytes``."""
    tmp = _tmp_name(path)
    recorder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            recorder = _Recorder(f)
            torch.save(obj, recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp)
        cause = exc if isinstance(exc, OSError) else (recorder.error if recorder is not None else None)
        if cause is None:
            raise  # not a file-system error: a bug (or an interrupt) worth its traceback
        raise WriteFailed(what or path.name, path.parent, cause) from exc


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


def append_jsonl(path: Path, row: dict[str, Any], what: str | None = None) -> None:
    """Append one JSON row (it must carry a 'step') and flush. A failed append cuts the file back to where it
    was, so no torn line is left, and raises ``WriteFailed``."""
    if "step" not in row:
        raise ValueError(f"a row of {path.name} needs a 'step'")
    line = (json.dumps(row) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab", buffering=0) as f:  # unbuffered: nothing is left to flush after a failure
            end = f.seek(0, os.SEEK_END)
            try:
                rest = memoryview(line)
                while rest:
                    rest = rest[f.write(rest):]
            except OSError:
                f.truncate(end)
                raise
    except OSError as exc:
        raise WriteFailed(what or f"a row of {path.name}", path.parent, exc) from exc


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


def _load_mapped(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)`` of a mapped file; read whole if its format cannot be mapped."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap can only be used" not in str(exc):
            raise
    return torch.load(path, map_location=map_location, weights_only=True)


CHECKPOINT_KEYS = ("format", "step", "config", "net", "ema", "opt", "data_stats", "state", "rng")


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint this project wrote, read with ``torch.load(weights_only=True)``: only tensors, numbers,
    strings, lists and dicts are unpickled, so a file from elsewhere cannot run code while it loads.

    The file is mapped (``mmap=True``, private: writes to a tensor never reach the file): tensors read their
    bytes from the page cache when they are copied into a network, so the ranks of one node share one host
    copy instead of each holding its own. A file in torch's pre-1.6 format, which cannot be mapped, is read
    whole. A mapped tensor kept alive keeps the file's space taken after it is deleted: copy what you keep.

    Raises ``ValueError`` naming the file for one that holds other Python objects or is not a dict with the
    project's keys (``CHECKPOINT_KEYS``); I/O and archive errors propagate as they are.
    """
    try:
        ckpt = _load_mapped(path, map_location)
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
