"""Experiment trackers (docs/trackers.md): TensorBoard event files and wandb runs fed from the run's own records.

metrics.jsonl stays the source of truth. A tracker is a callback that receives each metrics row after the
trainer has appended it (main rank only, ``Callback.on_row``), the sample grids once they are on disk, and at
the end the rows of eval.jsonl. The tracker packages are an optional extra (``pip install
'alphaflow[trackers]'``); a config that asks for one that is not installed is refused before the run starts
(``alphaflow.config.extras.check_trackers``, part of ``alphaflow.train.build.preflight``).

    log.tensorboard=true     RUN_DIR/tensorboard/events.out.tfevents.*     tensorboard --logdir runs/
    log.wandb=offline        RUN_DIR/wandb/offline-run-*/ (no network)    wandb sync RUN_DIR/wandb/offline-run-*

A scalar's tag is its metrics key (``loss_mse``, ``alpha``, ``probe_cos_tfm_tcc``, ``eval_fd_digits_nfe1``), at
the row's step; a sample grid is ``samples/nfe<k>``; a final evaluation row of eval.jsonl is
``final_<metric>_nfe<k>``. On resume the trainer replays the steps after its checkpoint, so the writer starts
with ``purge_step`` at the first step it logs and TensorBoard drops the earlier attempt's events from there on.
"""

from __future__ import annotations

import math
import re
import secrets
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, cast

import numpy as np
import torch

from alphaflow.config import Config
from alphaflow.config.extras import check_trackers
from alphaflow.run.files import atomic_write_bytes, read_jsonl
from alphaflow.run.folder import WANDB_ID, RunFolder
from alphaflow.train import distributed as D
from alphaflow.train.callbacks import Callback

if TYPE_CHECKING:  # the trackers' packages are imported on use
    from torch.utils.tensorboard import SummaryWriter
    from wandb import Run

_GRID = re.compile(r"^step-(\d+)-nfe(\d+)\.png$")
_WandbMode = Literal["disabled", "offline", "online"]  # log.wandb's values (config.schema.WANDB_MODES)


def tracker_callbacks(cfg: Config, run_dir: str | Path) -> list[Callback]:
    """The tracker callbacks of ``cfg`` for the run in ``run_dir`` (none by default); a tracker that is not
    installed is refused here too, for callers of ``train`` that skip the command's preflight."""
    check_trackers(cfg)
    trackers: list[Callback] = [TensorBoardTracker(run_dir)] if cfg.log.tensorboard else []
    if cfg.log.wandb != "disabled":
        trackers.append(WandbTracker(cfg, run_dir))
    return trackers


def append_row(run: RunFolder, row: dict[str, Any], callbacks: list[Callback]) -> None:
    """Append ``row`` to metrics.jsonl, then hand it to every callback's ``on_row`` (the trackers)."""
    run.append_metrics(row)
    for callback in callbacks:
        callback.on_row(row)


def final_scalars(run_dir: Path) -> list[tuple[str, float, int]]:
    """(``final_<metric>_nfe<k>``, value, step) for each row of RUN_DIR/eval.jsonl with a finite value ([] without
    the file): the final evaluation as both trackers name it."""
    path = run_dir / "eval.jsonl"
    rows = read_jsonl(path) if path.exists() else []
    return [(f"final_{r.get('metric', 'metric')}_nfe{r.get('nfe')}", float(r["value"]), int(r["step"]))
            for r in rows if isinstance(r.get("value"), (int, float)) and math.isfinite(r["value"])]


def new_grids(run_dir: Path, logged: set[str]) -> list[tuple[int, int, np.ndarray]]:
    """(step, nfe, RGB array [H, W, 3] uint8) of each sample grid in RUN_DIR/samples not in ``logged`` (by file
    name), oldest first; their names are added to ``logged``."""
    from PIL import Image

    out = []
    folder = run_dir / "samples"
    for path in sorted(folder.glob("step-*-nfe*.png")) if folder.is_dir() else []:
        match = _GRID.match(path.name)
        if match is None or path.name in logged:
            continue
        with Image.open(path) as image:
            out.append((int(match.group(1)), int(match.group(2)), np.asarray(image.convert("RGB"))))
        logged.add(path.name)
    return out


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
        self.writer: SummaryWriter | None = None
        self.logged: set[str] = set()  # sample grids already written as images

    def _open(self, purge_step: int | None) -> SummaryWriter:
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

    def _add_grids(self, writer: SummaryWriter) -> None:
        for step, nfe, array in new_grids(self.run_dir, self.logged):
            writer.add_image(f"samples/nfe{nfe}", array, step, dataformats="HWC")

    def on_end(self, run_dir: Path, device: torch.device, info: D.DistInfo, log: Callable[[str], None]) -> None:
        if not info.is_main:
            return
        writer = self._open(None)  # a resume that only redoes the end work replays no rows: nothing to purge
        for tag, value, step in final_scalars(self.run_dir):
            writer.add_scalar(tag, value, step)
        self._add_grids(writer)
        self.close()

    def close(self) -> None:
        """Flush and close the event file (again is a no-op)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbTracker(Callback):
    """``log.wandb``: every metrics row's scalars (``run.log(..., step=row["step"])``), the sample grids and, at the
    end, eval.jsonl's final rows in the run summary, with the resolved config as the wandb config. The wandb run
    id is kept in RUN_DIR/wandb_id.txt, so a resumed or requeued run continues the same wandb run; ``offline``
    writes RUN_DIR/wandb/offline-run-*/ and never touches the network (``wandb sync`` uploads it later)."""

    serves = ("log.wandb",)

    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run: Run | None = None
        self.logged: set[str] = set()

    def run_id(self) -> str:
        """The run folder's wandb id, made (and written atomically) on first use."""
        path = self.run_dir / WANDB_ID
        if path.exists():
            return path.read_text().strip()
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # wandb's form
        atomic_write_bytes(path, (run_id + "\n").encode(), what="the wandb run id")
        return run_id

    def _open(self) -> Run:
        if self.run is None:
            import wandb

            from alphaflow.config import to_dict

            log = self.cfg.log
            self.run = wandb.init(project=log.wandb_project, entity=log.wandb_entity, id=self.run_id(),
                                  resume="allow", mode=cast(_WandbMode, log.wandb), dir=str(self.run_dir),
                                  name=self.run_dir.name, config=to_dict(self.cfg))
        return self.run

    def on_row(self, row: dict[str, Any]) -> None:
        run = self._open()
        values: dict[str, Any] = scalars(row)
        values.update(self._new_grids())
        run.log(values, step=int(row["step"]))  # wandb keeps the first value of a step it has seen (a replay)

    def _new_grids(self) -> dict[str, Any]:
        import wandb

        return {f"samples/nfe{nfe}": wandb.Image(array, caption=f"step {step}")
                for step, nfe, array in new_grids(self.run_dir, self.logged)}

    def on_end(self, run_dir: Path, device: torch.device, info: D.DistInfo, log: Callable[[str], None]) -> None:
        if not info.is_main:
            return
        run = self._open()
        for tag, value, _step in final_scalars(self.run_dir):
            run.summary[tag] = value
        grids = self._new_grids()
        if grids:
            run.log(grids)
        self.close()

    def close(self) -> None:
        """Finish the wandb run (again is a no-op); a resumed attempt reopens it by its id."""
        if self.run is not None:
            self.run.finish()
            self.run = None
