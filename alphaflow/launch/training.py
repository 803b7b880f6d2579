"""One training run as the command line and every executor start it: the trainer of ``alphaflow.train.loop``
with the in-run evaluation and probing the config asks for (``alphaflow.evaluate.in_run``). The training
package cannot import evaluation (docs/architecture.md), so the two meet here, one layer above both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alphaflow.config import Config
from alphaflow.evaluate.in_run import in_run_callbacks
from alphaflow.train.loop import TrainResult, train


def train_run(cfg: Config, out: str | Path, **kwargs: Any) -> TrainResult:
    """``alphaflow.train.loop.train(cfg, out, **kwargs)`` with the callbacks of ``eval.every``, ``eval.final``
    and ``probe.final`` added in front of any the caller passes (what ``alphaflow train`` and the sweep
    executors run)."""
    return train(cfg, out, callbacks=[*in_run_callbacks(cfg), *kwargs.pop("callbacks", [])], **kwargs)
