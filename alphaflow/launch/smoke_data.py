"""Made-up latents for ``sweep FILE --smoke`` without ``data.path``, so a laptop can rehearse the paper's sweeps.

A latents recipe (the ImageNet sweeps) needs a folder written by ``extract-latents``, which a laptop rarely has.
The rehearsal checks code paths, not numbers, so where a run reads latents and the command line gives no
``data.path``, it trains on a made-up folder of the shape and class count the recipe plans for
(``alphaflow.perf.memplan.data_shape``: 4 × res/8 × res/8 and 1000 classes for ImageNet 256), written in the
latents format ``alphaflow.data.latents`` describes, under the smoke root::

    ROOT/.smoke-latents/<C>x<H>x<W>-<classes>c/{meta.json, mean.npy, logvar.npy, labels.npy}

(a hidden folder: neither a run nor read by the report). Its ``meta.json`` says ``"made_up": true``. With
``data.path`` given, the rehearsal uses the real data, as the real sweep will.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from alphaflow.config import apply_overrides
from alphaflow.launch.sweeps import Sweep, SweepRun

MADE_UP_ROWS = 64  # enough for every shrunk batch (8) and the statistics' 2048 draws (with replacement)
FOLDER = ".smoke-latents"


@dataclass(frozen=True)
class MadeUp:
    """One made-up latents folder: where it goes, its sample shape, class count and the recipe's resolution."""

    folder: Path
    shape: tuple[int, ...]
    classes: int
    resolution: int


def _needs_made_up(run: SweepRun) -> bool:
    data = run.config.data
    return data.name == "latents" and (data.path is None or not str(data.path).strip())


def _with_path(run: SweepRun, path: Path) -> SweepRun:
    override = f"data.path={json.dumps(str(path))}"
    return replace(run, config=apply_overrides(run.config, [override]), overrides=[*run.overrides, override])


def with_made_up_latents(sweep: Sweep, root: Path) -> tuple[Sweep, list[MadeUp]]:
    """``sweep`` with every latents run that has no ``data.path`` pointed at its made-up folder under ``root``
    (one per shape and class count), and those folders (nothing is written here: ``write_made_up``)."""
    from alphaflow.perf.memplan import data_shape

    made: dict[Path, MadeUp] = {}
    runs = []
    for r in sweep.runs:
        if not _needs_made_up(r):
            runs.append(r)
            continue
        shape, classes = data_shape(r.config)
        folder = root.absolute() / FOLDER / f"{'x'.join(map(str, shape))}-{classes}c"
        made.setdefault(folder, MadeUp(folder, tuple(shape), classes, r.config.data.resolution))
        runs.append(_with_path(r, folder))
    return replace(sweep, runs=runs), list(made.values())


def write_made_up(made: MadeUp, folder: Path | None = None, seed: int = 0) -> Path:
    """Write the made-up latents ``made`` at ``folder`` (default ``made.folder``) unless a complete one is there:
    random posterior means, small log-variances, random labels; through a temporary name and a rename."""
    import numpy as np

    from alphaflow.core.conventions import NULL_LABEL
    from alphaflow.data.latents import FORMAT, LABELS, LOGVAR, MEAN, META, VERSION

    out = Path(made.folder if folder is None else folder)
    if (out / META).is_file():
        return out
    rng = np.random.default_rng(seed)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        size = (MADE_UP_ROWS, *made.shape)
        np.save(tmp / MEAN, rng.standard_normal(size).astype(np.float16))
        np.save(tmp / LOGVAR, np.full(size, -4.0, dtype=np.float16))
        np.save(tmp / LABELS, rng.integers(0, made.classes, MADE_UP_ROWS).astype(np.int64) if made.classes > 0
                else np.full(MADE_UP_ROWS, NULL_LABEL, dtype=np.int64))  # unconditional: every label the null one
        meta = dict(format=FORMAT, version=VERSION, num=MADE_UP_ROWS, shape=list(made.shape),
                    num_classes=made.classes, classes=[], resolution=made.resolution, vae_path=None,
                    dtype="float16", made_up=True)
        (tmp / META).write_text(json.dumps(meta, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def stand_ins(made: list[MadeUp]) -> Iterator[Callable[[SweepRun], SweepRun]]:
    """For checking runs before anything is written under the root: the made-up folders written in a temporary
    folder, and a function giving a run that reads its made-up data from there instead. Removed on exit."""
    if not made:
        yield lambda r: r
        return
    with tempfile.TemporaryDirectory(prefix="alphaflow-smoke-") as tmp:
        where = {m.folder: write_made_up(m, Path(tmp) / m.folder.name) for m in made}

        def swap(r: SweepRun) -> SweepRun:
            path = Path(r.config.data.path) if r.config.data.path else None
            return _with_path(r, where[path]) if path in where else r

        yield swap


def describe_made_up(made: list[MadeUp]) -> str:
    """The one line that says the rehearsal trains on made-up latents, and how to use real ones."""
    what = "; ".join(f"{'x'.join(map(str, m.shape))} with {m.classes} classes in {m.folder}" for m in made)
    return (f"data: no data.path given, so the latents runs train on made-up latents of the recipe's shape ({what}); "
            "give data.path=FOLDER to rehearse on the real ones")
