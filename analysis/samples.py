"""The EMA sample grids of a sweep root (``samples/step-<k>-nfe<n>.png``, ``alphaflow.run.folder``), side by side.

    index = sample_index("runs/demo")          # run, variant, seed, step, nfe, path: one row per PNG grid
    fig_sample_grids("runs/demo", evals=load_runs("runs/demo").evals)
                                               # rows: variants; columns: 1 and 2 NFE; titles: the quality numbers

Each variant is shown by one run (the lowest seed unless ``seed`` says otherwise) at its last step with
grids. Grids saved as raw tensors (``.pt``: latents without a decoder) are not images and are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from alphaflow.run.folder import RunFolder

from .labels import variant_column
from .loading import Runs, load_runs
from .tables import run_quality

_GRID = re.compile(r"^step-(\d+)-nfe(\d+)\.png$")  # RunFolder.sample_path(step, nfe)
INDEX_COLUMNS = ["run", "variant", "seed", "step", "nfe", "path"]


def sample_index(root: str | Path, runs: Runs | None = None) -> pd.DataFrame:
    """Every PNG sample grid of the runs ``load_runs(root)`` finds (or ``runs``, a load already made):
    INDEX_COLUMNS, sorted by run, step, nfe. ``variant`` and ``seed`` come from the run table (run.json's
    variant; the config's seed, NaN if unreadable)."""
    runs = runs if runs is not None else load_runs(root)
    table = runs.runs
    seeds = table["cfg.seed"] if "cfg.seed" in table else pd.Series(np.nan, index=table.index)
    rows = []
    for run, variant, seed in zip(table["run"].astype(str), variant_column(table), seeds):
        folder = Path(root) / run if (Path(root) / run).is_dir() else Path(root)
        samples = RunFolder(folder).samples_dir
        found = [(int(m.group(1)), int(m.group(2)), p) for p in (sorted(samples.iterdir()) if samples.is_dir() else [])
                 if (m := _GRID.match(p.name))]
        rows += [{"run": run, "variant": variant, "seed": float(seed) if pd.notna(seed) else np.nan, "step": step,
                  "nfe": nfe, "path": str(path)} for step, nfe, path in found]
    df = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    return df.sort_values(["run", "step", "nfe"], kind="stable").reset_index(drop=True)


def final_grids(index: pd.DataFrame, *, nfe: Sequence[int] = (1, 2), seed: int | None = None) -> pd.DataFrame:
    """One run per variant (``seed``'s, else the lowest seed with grids) and its grids at the last step
    where it has any of ``nfe``: rows of ``sample_index``, sorted by variant and NFE."""
    rows = index[index["nfe"].isin(list(nfe))]
    if seed is not None:
        rows = rows[rows["seed"] == seed]
    if rows.empty:
        return rows
    first = rows.sort_values(["variant", "seed", "run"], kind="stable").groupby("variant")["run"].first()
    rows = rows[rows["run"].isin(first.to_numpy())]
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    return rows.sort_values(["variant", "nfe"], kind="stable").reset_index(drop=True)


def _caption(run: str, nfe: int, quality: pd.DataFrame) -> str:
    """The run's quality numbers at ``nfe`` ("fd_digits 12.3 @ step 1500"), or "" if it was not evaluated."""
    if quality.empty or run not in set(quality["run"]):
        return ""
    row = quality[quality["run"] == run].iloc[0]
    cols = [c for c in quality.columns if c.endswith(f" {nfe}-NFE") and pd.notna(row[c])]
    parts = [f"{c.rsplit(' ', 1)[0]} {row[c]:.4g}" for c in cols]
    return ", ".join(parts) + (f" @ step {int(row['step'])}" if parts else "")


def fig_sample_grids(root: str | Path, *, nfe: Sequence[int] = (1, 2), seed: int | None = None,
                     evals: pd.DataFrame | None = None, path: str | Path | None = None,
                     panel_size: float = 3.2) -> Figure:
    """The final sample grids of each variant at each NFE: one row per variant, one column per NFE.

    Panel titles give the run and step; with ``evals`` (``Runs.evals``) also its quality numbers at that
    NFE (``tables.run_quality``: the last evaluated step, EMA weights). A variant without a grid at some
    NFE shows an empty panel saying so; a root without grids gives one panel that says so.
    ``fig.axes`` holds one Axes per (variant, NFE), row-major; each image panel has one image.
    """
    grids = final_grids(sample_index(root), nfe=nfe, seed=seed)
    quality = run_quality(evals, nfe=nfe) if evals is not None else pd.DataFrame(columns=["run"])
    variants = list(dict.fromkeys(grids["variant"])) if not grids.empty else []
    nrows, ncols = max(len(variants), 1), len(nfe)
    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    if not variants:
        for ax in axes.ravel():
            ax.set_axis_off()
        axes[0, 0].text(0.5, 0.5, f"no sample grids (samples/*.png) under {root}", ha="center", va="center",
                        transform=axes[0, 0].transAxes, fontsize=8)
    for i, variant in enumerate(variants):
        mine = grids[grids["variant"] == variant]
        for j, k in enumerate(nfe):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            hit = mine[mine["nfe"] == k]
            if hit.empty:
                ax.text(0.5, 0.5, f"no {k}-NFE grid", ha="center", va="center", transform=ax.transAxes)
                continue
            row = hit.iloc[0]
            with Image.open(row["path"]) as im:
                ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
            caption = _caption(row["run"], k, quality)
            ax.set_title(f"{variant}, {k} NFE (step {row['step']})" + (f"\n{caption}" if caption else ""),
                         fontsize=8)
            if j == 0:
                ax.set_ylabel(row["run"], fontsize=7)
    fig.suptitle("EMA samples: one run per variant, its last grids")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig
