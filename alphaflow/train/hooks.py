"""The callback interface of the training loop (``alphaflow.train.callbacks`` says when each hook runs): the base
class and what a callback sees at a metrics row. Kept apart from the callbacks themselves, so that a callback
module (the trackers, say) needs nothing else of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from alphaflow.objectives import Objective
from alphaflow.train import distributed as D


@dataclass
class LogContext:
    """What a callback sees at a metrics row: the step just taken, its batch (x [B, ...], y [B] or None),
    the unwrapped network, its EMA copy, the objective, the process group and the training data."""

    step: int
    x: torch.Tensor
    y: torch.Tensor | None
    net: nn.Module
    ema: nn.Module
    objective: Objective
    info: D.DistInfo
    data: Any = None  # the run's TrainData


class Callback:
    """Base class; override what you need."""

    serves: tuple[str, ...] = ()  # config keys this callback implements, e.g. ("eval.every",)

    def on_log(self, ctx: LogContext) -> dict[str, Any]:
        """Keys to add to this step's metrics row (every rank; a callback may average over ranks)."""
        return {}

    def on_row(self, row: dict[str, Any]) -> None:
        """The finished metrics row, just after it was appended to metrics.jsonl (main rank only)."""

    def on_end(self, run_dir: Path, device: torch.device, info: D.DistInfo, log: Callable[[str], None]) -> None:
        """End-of-run work, after the last checkpoint and before DONE (every rank)."""

    def close(self) -> None:
        """Release what the callback holds open (a file, a tracker's run); ``train`` calls it on every exit,
        finished, stopped or failed, and a second call does nothing."""


def close_all(callbacks: list[Callback]) -> None:
    """``close`` every callback (``train``'s last step, whatever ended the run)."""
    for callback in callbacks:
        callback.close()
