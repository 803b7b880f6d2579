"""Preparing run folders before their runs start, and putting them back as they were when a submission fails.

Before a run starts (inline, in a rehearsal, or as a task of a job array), ``prepare_run`` writes its config.json
and run.json and drops a stale error.txt, so that a job finds its folder ready. When the submission
itself then fails (sbatch refuses the array, no controller answers), those folders would claim a run that no job
will ever train, and a failed run would have lost the error.txt that said why. ``Snapshot`` records what
preparing may change and ``restore`` puts it back: a folder the preparation created is removed, a file it created
is deleted, a file it replaced or deleted gets its old bytes back. Nothing else in the folder is touched.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from alphaflow.config import config_hash, to_dict
from alphaflow.run.files import atomic_write_bytes
from alphaflow.launch.sweeps import SweepRun
from alphaflow.run.folder import CONFIG, ERROR, RUN_INFO, RunFolder
from alphaflow.run.lock import lock_holder

PREPARED = (CONFIG, RUN_INFO, ERROR)  # the files ``prepare_run`` writes or drops


def prepare_run(root: Path, r: SweepRun) -> RunFolder:
    """Write config.json and run.json and drop a stale error.txt: from here on the run is at least incomplete."""
    run = RunFolder(root / r.name)
    run.write_config(to_dict(r.config))
    run.write_info(sweep=r.sweep, variant=r.variant, seed=r.config.seed, config_hash=config_hash(r.config),
                   baseline=r.baseline)
    run.clear_error()
    return run


@dataclass(frozen=True)
class Snapshot:
    """A run folder's prepared files before preparation: ``existed`` (the folder), each file's bytes or None."""

    root: Path
    existed: bool
    files: dict[str, bytes | None]


def snapshot(root: str | Path) -> Snapshot:
    """Record the folder ``root`` and its files ``PREPARED`` as they are now."""
    root = Path(root)
    files: dict[str, bytes | None] = {}
    for name in PREPARED:
        try:
            files[name] = (root / name).read_bytes()
        except FileNotFoundError:
            files[name] = None
    return Snapshot(root, root.is_dir(), files)


def restore(before: Snapshot) -> None:
    """Put the folder of ``before`` back: removed if it did not exist, else its ``PREPARED`` files as recorded.
    A folder a trainer holds (a job that did start) is left alone. Best effort: a file that cannot be restored is
    left as it is (the caller is already reporting a failure)."""
    if before.root.is_dir() and lock_holder(before.root) is not None:
        return
    if not before.existed:
        shutil.rmtree(before.root, ignore_errors=True)
        return
    for name, data in before.files.items():
        with contextlib.suppress(OSError):
            if data is None:
                (before.root / name).unlink(missing_ok=True)
            elif not (before.root / name).exists() or (before.root / name).read_bytes() != data:
                atomic_write_bytes(before.root / name, data)
