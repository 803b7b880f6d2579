"""Helpers for the notebooks in ``notebooks/``: where the sweep root is, what it holds, which probes to plot.

    root = resolve_root(os.environ.get("ALPHAFLOW_SWEEP_ROOT", "runs/demo"))   # relative to the repository
    runs = load_runs(root)
    inventory(root, runs)            # one row per run; prints what is missing and the command that makes it
    probes = pick_probes(root)       # offline probes.jsonl (raw weights) where present, else the online ones

Nothing here raises on a root with missing pieces: the notebooks print what is missing and go on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .probe_frames import checkpoints_per_run, load_online_probes, load_probes, offline_makes_curves
from .loading import Runs
from .samples import sample_index

MAX_PROBLEMS = 10


def repo_root() -> Path:
    """The repository root: the first folder holding ``pyproject.toml`` and ``analysis/``, looking at this
    package's parent (an editable install) and then upwards from the working directory; else the working directory.
    """
    here = Path.cwd().resolve()
    for folder in (Path(__file__).resolve().parents[1], here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "analysis").is_dir():
            return folder
    return here


def resolve_root(root: str | os.PathLike[str]) -> Path:
    """``root`` as an absolute path; a relative one is taken from the repository root (``repo_root``),
    not the working directory, so a notebook run from ``notebooks/`` finds ``runs/demo``."""
    path = Path(root).expanduser()
    return path if path.is_absolute() else repo_root() / path


def _count_rows(frame: pd.DataFrame, runs: pd.Series) -> pd.Series:
    if frame.empty or "run" not in frame.columns:
        return pd.Series(0, index=runs.index)
    counts = frame["run"].astype(str).value_counts()
    return runs.map(counts).fillna(0).astype(int)


def shown(path: Path) -> str:
    """``path`` as a notebook prints it: relative to the repository root when inside it (``runs/demo``), so an
    executed notebook shows no folder of the machine that ran it."""
    try:
        return str(path.resolve().relative_to(repo_root().resolve()))
    except ValueError:
        return str(path)


def inventory(root: str | Path, runs: Runs) -> pd.DataFrame:
    """One row per run under ``root``: status, last_step, and how many metrics rows, online probe rows
    (``probe_*`` in metrics.jsonl), offline probe rows (probes.jsonl), eval rows and PNG sample grids it
    holds. Prints a one-line summary, then each missing piece with the command that makes it, then
    up to MAX_PROBLEMS of ``runs.problems``.
    """
    root = Path(root)
    table = runs.runs[["run", "variant", "status", "last_step"]].copy()
    names = table["run"].astype(str)
    table["metrics"] = _count_rows(runs.metrics, names)
    online = [c for c in runs.metrics.columns if c.startswith("probe_")]
    table["online_probes"] = (_count_rows(runs.metrics.dropna(subset=online, how="all"), names) if online
                              else 0)
    table["probes"] = _count_rows(runs.probes, names)
    table["evals"] = _count_rows(runs.evals, names)
    table["grids"] = _count_rows(sample_index(root), names)
    if table.empty:
        print(f"No run folders under {root}. Make them with `alphaflow sweep SWEEP.yaml --root {root}` "
              "(see the first cell), or set ALPHAFLOW_SWEEP_ROOT.")
    else:
        status = table["status"].value_counts()
        print(f"{shown(root)}: {len(table)} runs in {table['variant'].nunique()} variants ("
              + ", ".join(f"{n} {s}" for s, n in status.items()) + ")")
        missing = [
            ("metrics", "metrics.jsonl rows", "the run has not logged yet"),
            ("online_probes", "online probes", "train with probe.every > 0"),
            ("probes", "probes.jsonl", "`alphaflow probe RUN_DIR`"),
            ("evals", "eval.jsonl", "`alphaflow eval RUN_DIR`"),
            ("grids", "sample grids", "training writes samples/ at train.sample_every and at the end"),
        ]
        for col, what, fix in missing:
            lacking = int((table[col] == 0).sum())
            if lacking:
                print(f"  missing: {what} in {lacking} of {len(table)} runs ({fix})")
    for p in runs.problems[:MAX_PROBLEMS]:
        print(f"  problem: {p}")
    if len(runs.problems) > MAX_PROBLEMS:
        print(f"  ... and {len(runs.problems) - MAX_PROBLEMS} more problems (runs.problems)")
    return table.reset_index(drop=True)


def pick_probes(root: str | Path, *, weights: str = "raw", source: str = "auto") -> pd.DataFrame:
    """The probe frame the gradient figures draw, and a printed line saying which one it is.

    source "offline": ``load_probes`` (probes.jsonl, the paper's protocol with 5–95 % bands), on
    ``weights`` where such rows exist, else on whatever weights were probed; "online": the ``probe_*``
    values the trainer logged (``load_online_probes``, one batch per point, no bands); "auto": offline
    where some run has it at two or more checkpoints (a curve), else online where logged (a run probed
    only at its end, ``probe.final``, is one point per run), else whatever there is. Empty (with a
    printed hint) if there is neither.
    """
    if source not in ("auto", "offline", "online"):
        raise ValueError(f"source must be auto, offline or online, got {source!r}")
    offline = load_probes(root) if source != "online" else pd.DataFrame()
    if not offline.empty and "weights" in offline.columns and (offline["weights"] == weights).any():
        offline = offline[offline["weights"] == weights].reset_index(drop=True)
    online = load_online_probes(root) if source != "offline" else pd.DataFrame()
    points = checkpoints_per_run(offline)
    if source == "offline" or (source == "auto" and offline_makes_curves(offline, online)):
        if offline.empty:
            print(f"no probes.jsonl under {root}: run `alphaflow probe RUN_DIR` on each run")
        else:
            kinds = ", ".join(sorted(offline["weights"].astype(str).unique())) if "weights" in offline else "?"
            print(f"offline probes (probes.jsonl, {kinds} weights): {len(offline)} rows from "
                  f"{offline['run'].nunique()} runs, up to {points} checkpoints per run")
        return offline
    if source == "auto" and not online.empty:
        why = ("no probes.jsonl" if offline.empty else
               "probes.jsonl holds one checkpoint per run (`alphaflow probe RUN_DIR` on kept checkpoints makes curves)")
        print(f"{why}; using the online probes")
    if online.empty:
        print(f"no gradient probes under {root}: train with probe.every > 0 (online) "
              "or run `alphaflow probe RUN_DIR` (offline)")
    else:
        print(f"online probes (metrics.jsonl probe_*): {len(online)} rows from {online['run'].nunique()} runs")
    return online
