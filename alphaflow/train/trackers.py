"""Experiment trackers (docs/trackers.md): TensorBoard event files fed from the run's own records.

metrics.jsonl stays the source of truth. A tracker is a callback that receives each metrics row after the
trainer has appended it (main rank only, ``Callback.on_row``), the sample grids once they are on disk, and at
the end the rows of eval.jsonl. The tracker packages are an optional extra (``pip install
'alphaflow[trackers]'``); a config that asks for one that is not installed is refused before the run starts
(``alphaflow.config.extras.check_trackers``, part of ``alphaflow.build.preflight``).

    log.tensorboard=true     RUN_DIR/tensorboard/events.out.tfevents.*     tensorboard --logdir runs/

A scalar's tag is its metrics key (``loss_mse``, ``alpha``, ``probe_cos_tfm_tcc``, ``eval_fd_digits_nfe1``), at
the row's step; a sample grid is ``samples/nfe<k>``; a final evaluation row of eval.jsonl is
``final_<metric>_nfe<k>``. On resume the trainer replays the steps after its checkpoint, so the writer starts
with ``purge_step`` at the first step it logs and TensorBoard drops the earlier attempt's events from there on.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from alphaflow.config import Config
from alphaflow.config.extras import check_trackers
from alphaflow.runfolder import RunFolder
from alphaflow.train import distributed as D
from alphaflow.train.hooks import Callback

_GRID = re.compile(r"^step-(\d+)-nfe(\d+)\.png$")


def tracker_callbacks(cfg: Config, run_dir: str | Path) -> list[Callback]:
    """The tracker callbacks of ``cfg`` for the run in ``run_dir`` (none by default); a tracker that is not
    installed is refused here too, for callers of ``train`` that skip the command's preflight."""
    check_trackers(cfg)
    return [TensorBoardTracker(run_dir)] if cfg.log.tensorboard else []


def append_row(run: RunFolder, row: dict[str, Any], callbacks: list[Callback]) -> None:
    """Append ``row`` to metrics.jsonl, then hand it to every callback's ``on_row`` (the trackers)."""
    run.append_metrics(row)
    for callback in callbacks:
        callback.on_row(row)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row that become scalars: every int or float but ``step`` (bools are not)."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardTracker(Callback):
    """``log.tensorboard``: every metrics row's scalars, the sample grids and the final evaluation rows, as
    TensorBoard events in ``RUN_DIR/tensorboard`` (``torch.utils.tensorboard.SummaryWriter``)."""

    serves = ("log.tensorboard",)

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.writer = None
        self.logged: set[str] = set()  # sample grids already written as images

    def _open(self, purge_step: int | None):
        """The writer, made on first use; ``purge_step``: drop an earlier attempt's events from this step on."""
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (check_trackers)

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)
        return self.writer

    def on_row(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        writer = self._open(step)  # the first row after a resume: the steps from here on are being replayed
        for tag, value in scalars(row).items():
            writer.add_scalar(tag, value, step)
        self._add_grids(writer)
        writer.flush()

    def _add_grids(self, writer) -> None:
        from PIL import Image

        folder = self.run_dir / "samples"
        for path in sorted(folder.glob("step-*-nfe*.png")) if folder.is_dir() else []:
            match = _GRID.match(path.name)
            if match is None or path.name in self.logged:
                continue
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
            writer.add_image(f"samples/nfe{int(match.group(2))}", array, int(match.group(1)), dataformats="HWC")
            self.logged.add(path.name)

    def on_end(self, run_dir: Path, device: torch.device, info: D.DistInfo, log: Callable[[str], None]) -> None:
        if not info.is_main:
            return
        from alphaflow.files import read_jsonl

        evals = read_jsonl(self.run_dir / "eval.jsonl") if (self.run_dir / "eval.jsonl").exists() else []
        writer = self._open(None)  # a resume that only redoes the end work replays no rows: nothing to purge
        for r in evals:
            value = r.get("value")
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(f"final_{r.get('metric', 'metric')}_nfe{r.get('nfe')}", float(value), int(r["step"]))
        self._add_grids(writer)
        writer.close()
        self.writer = None
