"""The run-folder format: the one definition the trainer writes and analysis, probes and sweeps read.

    RUN_DIR/
      config.json            the resolved config, written first
      metrics.jsonl          one JSON object per log tick (``step`` always present)
      checkpoints/
        latest-00001000.pt   rolling: the two most recent are kept, older ones deleted
        step-00010000.pt     permanent keeps (train.keep_every)
      samples/
        step-00001000-nfe1.png   EMA sample grids
      probes.jsonl           offline gradient probes, one row per (checkpoint, probe settings)
      DONE                   written last, holds a short JSON summary

Every file is written atomically (temporary name, then rename), so a crash leaves either the
old file or the new one, never half of one. ``metrics.jsonl`` is append-only; a torn last line
(a crash mid-write) is skipped on read and cut off when a run resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

CONFIG, METRICS, CHECKPOINTS, SAMPLES, DONE = "config.json", "metrics.jsonl", "checkpoints", "samples", "DONE"
PROBES = "probes.jsonl"
_CKPT = re.compile(r"^(latest|step)-(\d{8})\.pt$")
ROLLING_KEPT = 2


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class RunFolder:
    """Paths and atomic I/O for one run. Creating the object creates nothing on disk."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def samples_dir(self) -> Path:
        return self.root / SAMPLES

    @property
    def probes_path(self) -> Path:
        return self.root / PROBES

    @property
    def done_path(self) -> Path:
        return self.root / DONE

    def sample_path(self, step: int, nfe: int, suffix: str = ".png") -> Path:
        return self.samples_dir / f"step-{step:08d}-nfe{nfe}{suffix}"

    # ------------------------------------------------------------------ config
    def read_config(self) -> dict | None:
        if not self.config_path.exists():
            return None
        return json.loads(self.config_path.read_text())

    def write_config(self, config: dict) -> None:
        """Write config.json, or check it matches the one already there (a resume must not change the run)."""
        existing = self.read_config()
        if existing is not None and existing != config:
            diff = sorted(_flat_diff(existing, config))
            raise ValueError(f"{self.config_path} holds a different config; resuming would mix two runs. "
                             f"Differing keys: {', '.join(diff[:10])}. Use another --out, or delete the folder.")
        self.root.mkdir(parents=True, exist_ok=True)
        if existing is None:
            atomic_write_bytes(self.config_path, (json.dumps(config, indent=2) + "\n").encode())

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, row)

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete rows; a torn or garbled line is skipped."""
        return read_jsonl(self.metrics_path)

    def append_probes(self, row: dict[str, Any]) -> None:
        append_jsonl(self.probes_path, row)

    def read_probes(self) -> list[dict[str, Any]]:
        return read_jsonl(self.probes_path)

    def truncate_metrics(self, step: int) -> int:
        """Keep only rows with row['step'] <= step (and no torn line); returns how many were dropped."""
        if not self.metrics_path.exists():
            return 0
        lines = self.metrics_path.read_text().splitlines()
        kept = [json.dumps(r) for r in self.read_metrics() if r["step"] <= step]
        if len(kept) != len(lines):
            atomic_write_bytes(self.metrics_path, "".join(line + "\n" for line in kept).encode())
        return len(lines) - len(kept)

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint, newest first; rolling and permanent alike."""
        if not self.checkpoint_dir.exists():
            return []
        found = []
        for p in self.checkpoint_dir.iterdir():
            m = _CKPT.match(p.name)
            if m:
                found.append((int(m.group(2)), 0 if m.group(1) == "latest" else 1, p))
        return [(step, p) for step, _, p in sorted(found, key=lambda s: (-s[0], s[1]))]

    def save_checkpoint(self, state: dict[str, Any], step: int, *, keep: bool = False) -> Path:
        """Atomically write the rolling checkpoint (and a permanent copy if ``keep``); prune old rolling ones."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"latest-{step:08d}.pt"
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        kept = self.checkpoint_dir / f"step-{step:08d}.pt"
        if keep and not kept.exists():
            try:  # a hard link costs no space; fall back to a copy where links are not supported
                os.link(tmp, kept)
            except OSError:
                shutil.copyfile(tmp, kept.with_name(f".{kept.name}.tmp"))
                os.replace(kept.with_name(f".{kept.name}.tmp"), kept)
        os.replace(tmp, path)
        rolling = sorted(p for p in self.checkpoint_dir.glob("latest-*.pt"))
        for old in rolling[:-ROLLING_KEPT]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, *, map_location: str | torch.device = "cpu",
                        report: Callable[[str], None] = print) -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that loads; unreadable ones are reported and skipped. None if there is none."""
        for step, path in self.checkpoints():
            try:
                state = torch.load(path, map_location=map_location, weights_only=False)
            except Exception as exc:  # truncated zip, bad pickle, I/O error: fall back to an older one
                report(f"warning: checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); trying an older one")
                continue
            if not isinstance(state, dict) or state.get("step") != step:
                report(f"warning: checkpoint {path} does not hold step {step}; trying an older one")
                continue
            return state, path
        return None

    # ------------------------------------------------------------------ done marker
    def is_done(self) -> bool:
        return self.done_path.exists()

    def mark_done(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.done_path, (json.dumps(summary) + "\n").encode())


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON row (it must carry a 'step') and flush."""
    if "step" not in row:
        raise ValueError(f"a row of {path.name} needs a 'step'")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete row with a 'step'; torn or garbled lines are skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def _flat_diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _flat_diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


def select_checkpoints(run: RunFolder, which: str) -> list[tuple[int, Path]]:
    """``all`` (every saved step, oldest first), ``last``, or a comma list of steps."""
    found: dict[int, Path] = {}
    for step, path in run.checkpoints():  # newest first; a rolling and a permanent file may share a step
        found.setdefault(step, path)
    if not found:
        raise ValueError(f"{run.root} has no checkpoints to probe (train with train.keep_every to keep them)")
    if which == "all":
        return sorted(found.items())
    if which == "last":
        step = max(found)
        return [(step, found[step])]
    try:
        steps = [int(s) for s in which.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--checkpoints must be all, last or a comma list of steps, got {which!r}") from None
    missing = [s for s in steps if s not in found]
    if missing:
        raise ValueError(f"--checkpoints: no checkpoint at step(s) {missing} in {run.root}; saved: {sorted(found)}")
    return [(s, found[s]) for s in steps]


def load_weights(path: Path, key: str) -> tuple[dict, dict]:
    """(state dict ``key``, data statistics) of a checkpoint, read on the CPU; the rest (the other weights,
    Adam's moments: two thirds of an XL/2 checkpoint's 10.8 GB) is dropped before anything reaches the GPU."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt[key], ckpt["data_stats"]
