"""Learning curves of sample quality: the ``eval.every`` rows of metrics.jsonl, per variant with seed bands.

The trainer writes ``eval_<metric>_nfe<k>`` (a small-sample Fréchet distance of the EMA network, fixed
sampling seeds) into the metrics row of every ``eval.every``-th step. ``quality_curves`` gathers them in long
form; ``area_under_curve`` gives each run one number for its whole curve,

    AUC = ∫ FD(step) d step / (last step − first step)   (trapezoid rule over the evaluated steps),

the curve's mean height, so a variant that gets good sooner has a lower AUC even if the curves meet at the
end. The report compares AUC and every evaluated step with the baseline, paired by seed (``compare``).

    curves = quality_curves(load_runs(root))
    fig_quality_curves(curves, path="quality.png")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .loading import Runs
from .plots import STEP_FORMAT, palette, save_figure

COLUMN = re.compile(r"^eval_(?P<metric>.+)_nfe(?P<nfe>\d+)$")
LONG = ["run", "variant", "seed", "step", "metric", "nfe", "value"]


def quality_curves(runs: Runs) -> pd.DataFrame:
    """Long rows (LONG) of every ``eval_<metric>_nfe<k>`` value in ``runs.metrics``; seed from the run's config.
    Empty (with LONG columns) when no run evaluated during training."""
    cols = [c for c in runs.metrics.columns if COLUMN.match(c)]
    if not cols:
        return pd.DataFrame(columns=LONG)
    wide = runs.metrics[["run", "variant", "step", *cols]]
    long = wide.melt(id_vars=["run", "variant", "step"], value_vars=cols, var_name="column").dropna(subset=["value"])
    parts = long["column"].str.extract(COLUMN)
    seeds = runs.runs.set_index(runs.runs["run"].astype(str))["cfg.seed"] if "cfg.seed" in runs.runs else {}
    out = pd.DataFrame({"run": long["run"].astype(str), "variant": long["variant"].astype(str),
                        "step": long["step"].astype(float), "metric": parts["metric"],
                        "nfe": parts["nfe"].astype(int), "value": long["value"].astype(float)})
    out.insert(2, "seed", out["run"].map(seeds))
    return out.sort_values(["variant", "run", "metric", "nfe", "step"], kind="stable").reset_index(drop=True)


def curve_column(metric: str, nfe: int, prefix: str = "") -> str:
    """The per-run column of one curve: ("fd_digits", 1, "auc_") → "auc_fd_digits 1-NFE"."""
    return f"{prefix}{metric} {nfe}-NFE"


def area_under_curve(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per run: run, variant, seed, then ``auc_<metric> <k>-NFE`` (module docstring; NaN for a run with
    fewer than two evaluated steps)."""
    rows: dict[str, dict[str, Any]] = {}
    for (run, variant, seed, metric, nfe), g in curves.groupby(["run", "variant", "seed", "metric", "nfe"],
                                                               sort=True, dropna=False):
        g = g.sort_values("step")
        x, y = g["step"].to_numpy(float), g["value"].to_numpy(float)
        area = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))  # the trapezoid rule (numpy ≥ 1.26 has no trapezoid)
        auc = area / (x[-1] - x[0]) if len(x) > 1 and x[-1] > x[0] else np.nan
        rows.setdefault(run, {"run": run, "variant": variant, "seed": seed})[curve_column(metric, nfe, "auc_")] = auc
    return pd.DataFrame(list(rows.values()))


def at_each_step(curves: pd.DataFrame) -> dict[float, pd.DataFrame]:
    """step → one row per run (run, variant, seed, then ``<metric> <k>-NFE``) of the values at that step."""
    out = {}
    for step, g in curves.groupby("step", sort=True):
        g = g.assign(column=[curve_column(m, k) for m, k in zip(g["metric"], g["nfe"])])
        wide = g.groupby(["run", "variant", "seed", "column"], sort=True, dropna=False)["value"].last().unstack()
        out[float(step)] = wide.reset_index().rename_axis(columns=None)
    return out


def fig_quality_curves(curves: pd.DataFrame, *, path: str | Path | None = None, logy: bool = True) -> Figure:
    """One panel per (metric, NFE): per variant the mean over its seeds against step, shaded between the seeds'
    min and max (the band is the seeds' range, not an interval). A root without curves gets a panel saying so."""
    keys = sorted(set(zip(curves["metric"], curves["nfe"]))) if not curves.empty else []
    fig = Figure(figsize=(5.5 * max(len(keys), 1), 4.0), layout="constrained")
    axes = fig.subplots(1, max(len(keys), 1), squeeze=False)[0]
    if not keys:
        axes[0].text(0.5, 0.5, "no run evaluated during training (eval.every)", ha="center", va="center",
                     transform=axes[0].transAxes)
        return save_figure(fig, path)
    colors = palette(sorted(curves["variant"].unique()))
    for ax, (metric, nfe) in zip(axes, keys):
        g = curves[(curves["metric"] == metric) & (curves["nfe"] == nfe)]
        for variant, v in g.groupby("variant", sort=True):
            band = v.groupby("step")["value"].agg(["mean", "min", "max", "count"])
            x = band.index.to_numpy(float)
            seeds = v["run"].nunique()
            ax.plot(x, band["mean"], color=colors[variant], lw=1.5, label=f"{variant} ({seeds} seed{'s' * (seeds > 1)})")
            if seeds > 1:
                ax.fill_between(x, band["min"], band["max"], color=colors[variant], alpha=0.15, lw=0)
        ax.set_title(f"{metric}, {nfe}-NFE (mean over seeds, band: seed range)", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_formatter(STEP_FORMAT)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
