"""Training curves from ``Runs.metrics``: one line per run, one color per variant (seeds share it).

Built on ``matplotlib.figure.Figure`` like ``plots.py`` (no pyplot state, Agg-safe); each function
returns the Figure and saves a PNG when given ``path``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .plots import STEP_FORMAT, palette

MAX_LEGEND = 12  # more variants than this: no legend (it would cover the curves)


def fig_metric(metrics: pd.DataFrame, column: str, *, path: str | Path | None = None, logy: bool = False,
               title: str | None = None) -> Figure:
    """``column`` against step, one line per run (rows where it is logged), colored by ``variant``.

    ``ax.lines`` holds one line per run that logged ``column``; the legend names the variants.
    """
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    rows = metrics[["run", "variant", "step", column]].dropna(subset=[column]) if column in metrics else None
    if rows is None or rows.empty:
        ax.text(0.5, 0.5, f"no run logged {column!r}", ha="center", va="center", transform=ax.transAxes)
    else:
        rows = rows.assign(run=rows["run"].astype(str), variant=rows["variant"].astype(str))
        colors = palette(sorted(rows["variant"].unique()))
        for (run, variant), g in rows.groupby(["run", "variant"], sort=True):
            g = g.sort_values("step", kind="stable")
            ax.plot(g["step"].to_numpy(float), g[column].to_numpy(float), color=colors[variant], lw=1.2, alpha=0.8)
        if len(colors) <= MAX_LEGEND:
            ax.legend(handles=[Line2D([], [], color=c, label=v) for v, c in colors.items()], fontsize=7)
    ax.set_xlabel("training step")
    ax.set_ylabel(column)
    ax.xaxis.set_major_formatter(STEP_FORMAT)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{column} (one line per run, color per variant)")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig
