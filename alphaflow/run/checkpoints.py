"""Which checkpoint of a run, and which of its weights: ``select_checkpoints`` (the steps a command reads),
``init_checkpoint`` (what ``train.init_from`` names) and ``load_weights`` (the EMA or the raw training weights of
one checkpoint, without Adam's moments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alphaflow.run.files import read_checkpoint
from alphaflow.run.folder import CHECKPOINTS, DONE, RunFolder


def select_checkpoints(run: RunFolder, which: str, purpose: str = "use") -> list[tuple[int, Path]]:
    """``all`` (every saved step, oldest first), ``last``, or a comma list of steps. A run without a checkpoint
    is refused with what to do, in the words of ``purpose`` ("evaluate", "sample", "probe", ...)."""
    found: dict[int, Path] = {}
    for step, path in run.checkpoints():  # newest first; a rolling and a permanent file may share a step
        found.setdefault(step, path)
    if not found:
        raise ValueError(f"{run.root} has no checkpoint to {purpose} yet: a run writes one every train.ckpt_every "
                         "steps and at its last step; train it further (the same `alphaflow train` resumes it), "
                         f"then {purpose} it")
    if which == "all":
        return sorted(found.items())
    if which == "last":
        step = max(found)
        return [(step, found[step])]
    try:
        steps = [int(s) for s in which.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"checkpoints must be all, last or a comma list of steps, got {which!r}") from None
    missing = [s for s in steps if s not in found]
    if missing:
        raise ValueError(f"no checkpoint at step(s) {missing} in {run.root}; saved: {sorted(found)}")
    return [(s, found[s]) for s in steps]


def init_checkpoint(source: str | Path, *, seed: int | None = None, root: Path | None = None) -> Path:
    """The checkpoint ``train.init_from`` names: a finished run folder's newest checkpoint, or a checkpoint file.

    ``{seed}`` in the text is this run's seed and ``{root}`` the folder that holds this run's folder (a sweep's
    root), so one sweep file can start each seed from the same seed of another variant; a pattern (``*``) must
    match exactly one folder: ``{root}/fm-s{seed}-*``. A run folder must have finished (DONE), so a run never
    starts from a source still training. Raises ``ValueError`` naming the input otherwise.
    """
    text = str(source)
    if "{seed}" in text or "{root}" in text:
        if (seed is None and "{seed}" in text) or (root is None and "{root}" in text):
            return Path(text)  # resolved when the run starts (preflight has no run folder yet)
        text = text.replace("{seed}", str(seed)).replace("{root}", str(root))
    path = Path(text).expanduser()
    if any(c in text for c in "*?["):
        matches = sorted(p for p in path.parent.glob(path.name) if p.is_dir())
        if len(matches) != 1:
            raise ValueError(f"train.init_from={str(source)!r}: {text!r} matches {len(matches)} folders "
                             f"({[m.name for m in matches[:4]]}); it must match exactly one")
        path = matches[0]
    if path.is_dir():
        found = RunFolder(path).checkpoints()
        if not found:
            raise ValueError(f"train.init_from={str(source)!r} is a folder without checkpoints "
                             f"(expected a run folder with {CHECKPOINTS}/latest-*.pt or step-*.pt, or a .pt file)")
        if not RunFolder(path).is_done():
            raise ValueError(f"train.init_from={str(source)!r}: {path} has not finished training (no {DONE}); "
                             "start this run when it has, or name one of its checkpoint files")
        return found[0][1]
    if path.is_file():
        return path
    raise ValueError(f"train.init_from={str(source)!r} does not exist (expected a run folder or a checkpoint .pt file)")


def load_weights(path: Path, weights: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict of ``weights``, "ema" or "raw", data statistics) of a checkpoint, read on the CPU and checked
    against its checksums; the rest (the other weights, Adam's moments: two thirds of an XL/2 checkpoint's 10.8 GB)
    is dropped first. A checkpoint stores the raw training weights under the key ``net``."""
    key = {"ema": "ema", "raw": "net"}[check_weights(weights)]
    ckpt = read_checkpoint(path, sections=(key, "data_stats"))
    return ckpt[key], ckpt["data_stats"]


def check_weights(weights: str) -> str:
    """``weights`` if it names a set of weights a run keeps, "ema" or "raw" (the training weights); else ValueError."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw' (the raw training weights), got {weights!r}")
    return weights
