"""Files on disk, written so a crash or a full disk never leaves half of one: atomic writes, tolerant JSON and
JSONL readers, checksums of a checkpoint's tensors, and reading a checkpoint without running code. The run
folder (``alphaflow.run.folder``) is built on these.

A write that fails (no space, no permission, quota) removes its temporary file, leaves the previous version of
the file as it was, and raises ``alphaflow.run.errors.WriteFailed`` naming what was written, the folder and, when
the disk is full, its free space."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import zlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import torch

from alphaflow.run.errors import UsageError, WriteFailed

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


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

    error: OSError | None

    def __init__(self, f: io.BufferedWriter) -> None:
        super().__init__()
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, b: ReadableBuffer) -> int:
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
            torch.save(obj, cast(IO[bytes], recorder))  # torch.save writes to any file object
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


def read_json_object(path: Path, what: str, fix: str = "") -> dict[str, Any] | None:
    """The JSON object in ``path``; None if the file is absent. Anything else (not UTF-8, not JSON, a JSON list
    or number) raises ``UsageError`` naming the file, what it should be (``what``) and ``fix``."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        value, problem = None, "it is not UTF-8 text"
    except json.JSONDecodeError as exc:
        value, problem = None, f"it is not JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
    else:
        problem = "" if isinstance(value, dict) else f"it holds a JSON {type(value).__name__}, not an object"
    if problem:
        raise UsageError(f"{path} is not {what}: {problem}" + (f". {fix}" if fix else ""))
    return cast(dict[str, Any], value)  # a JSON object: no problem found


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


def scan_jsonl(path: Path, require: str | None = "step",
               damaged: list[tuple[int, bytes]] | None = None) -> tuple[list[dict[str, Any]], int]:
    """The dict rows of a JSONL file that hold the key ``require`` (any dict if None), and how many non-blank
    lines were skipped (torn, garbled, or not such a row). A missing file is ([], 0); other I/O errors raise.
    ``damaged``, if given, receives (line number from 1, the line's bytes as stored) of each skipped line.

    Fast path: all lines parse as one JSON array; a torn line makes that fail, and then each line is parsed
    alone. Python's json reads the NaN and Infinity that ``json.dumps`` writes.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    numbered = [(n, raw) for n, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    lines = [raw.decode("utf-8", errors="replace") for _, raw in numbered]
    try:
        parsed = json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        parsed = None
    if parsed is None or len(parsed) != len(lines):  # a line holding "1, 2" also fails the count
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                parsed.append(_GARBLED)
    ok = [isinstance(r, dict) and (require is None or require in r) for r in parsed]
    if damaged is not None:
        damaged.extend(entry for entry, good in zip(numbered, ok) if not good)
    kept = [r for r, good in zip(parsed, ok) if good]
    return kept, len(lines) - len(kept)


_GARBLED = object()  # a line that is not JSON


def keep_damaged_lines(path: Path, keep: Path) -> list[int]:
    """The numbers (from 1) of the lines of JSONL file ``path`` that ``scan_jsonl`` skips, before its last
    non-blank line; their bytes are appended to ``keep`` (atomically), so a caller that rewrites ``path`` without
    them loses nothing. A skipped last line is a torn append: not kept, not listed."""
    damaged: list[tuple[int, bytes]] = []
    scan_jsonl(path, damaged=damaged)
    if not damaged:
        return []
    last = max(n for n, raw in enumerate(path.read_bytes().split(b"\n"), 1) if raw.strip())
    inner = [(n, raw) for n, raw in damaged if n != last]
    if inner:
        before = keep.read_bytes() if keep.exists() else b""
        atomic_write_bytes(keep, before + b"".join(raw + b"\n" for _, raw in inner), what=keep.name)
    return [n for n, _ in inner]


_TMP = re.compile(r"^\.(.+)\.tmp(\d+)$")  # ``_tmp_name``: .NAME.tmpPID


def stale_temporaries(folder: Path, names: Collection[str] | None = None, *,
                      every: bool = False) -> list[tuple[Path, int]]:
    """(path, writer's pid) of the temporaries (``_tmp_name``) in ``folder``, sorted: of the files ``names``, of
    checkpoints (``latest-*.pt``, ``step-*.pt``) if None, or of any file if ``every`` (a folder that only the run
    writes, such as its samples/). Whether their writer still runs is the caller's."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _TMP.match(p.name)
        if not m:
            continue
        target = m.group(1)
        if every or (target in names if names is not None else re.fullmatch(r"(latest|step)-\d{8}\.pt", target)):
            found.append((p, int(m.group(2))))
    return sorted(found)


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
CHECKSUM = "checksum"  # {"crc32": {section: crc}}: written by ``with_checksum``, checked and removed on read


class CheckpointUnreadable(UsageError):
    """A checkpoint file that cannot be used as it is: torn, damaged, or its tensors fail their checksum.
    ``reason`` says why without the path; ``str()`` names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is not a readable checkpoint: {reason}")


def tensor_checksums(state: Mapping[str, Any]) -> dict[str, int]:
    """{top-level key: CRC-32 of the tensors under it} of a checkpoint's state (its ``CHECKSUM`` key aside).

    Each section's tensors are met in the order the tree holds them (dicts keep their order through
    ``torch.save``); each adds its dtype, shape and element bytes. Other leaves (numbers, strings) are not
    covered: damage there fails the unpickling instead. Tensors off the CPU are copied to it first."""
    return {str(key): _crc(value) for key, value in state.items() if key != CHECKSUM}


def with_checksum(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (a shallow copy) with its ``CHECKSUM`` entry: what ``RunFolder.save_checkpoint`` writes."""
    return {**state, CHECKSUM: {"crc32": tensor_checksums(state)}}


def _crc(tree: Any, crc: int = 0) -> int:
    if isinstance(tree, torch.Tensor):
        t = tree.detach()
        t = (t if t.device.type == "cpu" else t.cpu()).contiguous().reshape(-1)
        crc = zlib.crc32(f"{t.dtype}{tuple(tree.shape)}".encode(), crc)
        data = t.view(torch.uint8).numpy() if t.numel() else b""  # numpy types ndarray as a buffer from Python 3.12
        return zlib.crc32(cast("ReadableBuffer", data), crc)
    items = tree.values() if isinstance(tree, Mapping) else tree if isinstance(tree, (list, tuple)) else ()
    for item in items:
        crc = _crc(item, crc)
    return crc


def _check_sums(ckpt: dict[str, Any], path: Path, sections: Collection[str] | None) -> None:
    """Pop ``ckpt``'s checksum record and compare it with its tensors (only ``sections`` if given); raises
    ``CheckpointUnreadable`` on a mismatch. A checkpoint without a record (written before checksums) passes."""
    record = ckpt.pop(CHECKSUM, None)
    if record is None:
        return
    expected = record.get("crc32") if isinstance(record, dict) else None
    if not isinstance(expected, dict):
        raise CheckpointUnreadable(path, "its checksum record is damaged (the file changed after it was written)")
    bad = [key for key, crc in expected.items()
           if (sections is None or key in sections) and (key not in ckpt or _crc(ckpt[key]) != crc)]
    if bad:
        raise CheckpointUnreadable(path, f"checksum mismatch in its {', '.join(bad)} tensors, so its bytes changed "
                                         "after it was written (a disk, copy or transfer error)")


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    sections: Collection[str] | None = None) -> dict[str, Any]:
    """A checkpoint this project wrote, read with ``torch.load(weights_only=True)``: only tensors, numbers,
    strings, lists and dicts are unpickled, so a file from elsewhere cannot run code while it loads.

    The file is mapped (``mmap=True``, private: writes to a tensor never reach the file): tensors read their
    bytes from the page cache when they are copied into a network, so the ranks of one node share one host
    copy instead of each holding its own. A file in torch's pre-1.6 format, which cannot be mapped, is read
    whole. A mapped tensor kept alive keeps the file's space taken after it is deleted: copy what you keep.

    The tensors of ``sections`` (top-level keys; every one if None) are checked against the checksums the file
    carries (``with_checksum``; a file written before them has none and is not checked), and the record is
    removed from the dict returned: it holds the state as it was saved.

    Raises ``CheckpointUnreadable`` (a ``ValueError``) naming the file for one that is torn or damaged or fails
    its checksum; ``ValueError`` naming it for one that holds other Python objects or is not a dict with the
    project's keys (``CHECKPOINT_KEYS``). I/O errors propagate as they are.
    """
    try:
        ckpt = _load_mapped(path, map_location)
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 (torch reports a damaged file in many types)
        text = str(exc)
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", text)
        objects = re.search(r"GLOBAL|Can only (?:create new object|build)|must be imported", text)
        if not isinstance(exc, pickle.UnpicklingError) or not objects:  # not a pickle that names objects: damage
            raise CheckpointUnreadable(path, f"the file is truncated or damaged ({_short(exc)})") from None
        named = f" (it names {found.group(1)})" if found else ""
        raise ValueError(f"{path} is not an alphaflow checkpoint: it holds Python objects other than tensors, "
                         f"numbers, strings, lists and dicts{named}, and loading those could run code, so it is "
                         "refused") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        what = f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else f"a dict without {', '.join(missing)}"
        raise ValueError(f"{path} is not an alphaflow checkpoint: it holds {what} "
                         f"(a training checkpoint has {', '.join(CHECKPOINT_KEYS)})")
    _check_sums(ckpt, path, sections)
    return cast(dict[str, Any], ckpt)  # a dict: no key is missing


def _short(exc: BaseException) -> str:
    """``Type: the message's telling part`` of a load error, on one short line."""
    text = str(exc)
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    line = unpickler.group(1) if unpickler else (text.strip().splitlines() or [""])[0]
    line = re.split(r"(?<=\.)\s", line.strip())[0].rstrip(".")  # its first sentence
    return f"{type(exc).__name__}: {line[:120]}" if line else type(exc).__name__
