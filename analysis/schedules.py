"""What the runs actually trained with, from ``Runs.metrics``: the α and ratio_fm schedules
(docs/objectives.md#the-alpha-curriculum) and the losses.

    runs = load_runs("runs/alpha_schedules")
    fig_schedules(runs.metrics)     # α(step) and ratio_fm(step) as logged, one line per run, color per variant
    fig_losses(runs.metrics)        # loss, loss_mse and the objective's components, one panel each

The trainer logs ``alpha`` and ``ratio_fm`` (the schedules' values at that step) in every metrics row,
so these curves show the schedule a run used, not the one its config meant to set; a mismatch is a bug.
Panels share the colors of ``runplots.fig_metric`` (``plots.palette`` over the variants).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .plots import STEP_FORMAT, loss_title, palette

SCHEDULES = ("alpha", "ratio_fm")
LOSSES = ("loss", "loss_mse", "loss_tfm", "loss_tcc", "loss_fmb", "loss_mf")  # drawn where some run logs them
TITLES = {"alpha": "consistency step ratio α", "ratio_fm": "share of r = t rows (ratio_fm)",
          "loss": "training loss (optimised)", "loss_mse": "unweighted MSE",
          **{f"loss_{p}": loss_title(p) for p in ("tfm", "tcc", "fmb", "mf")}}
MAX_LEGEND = 12


def _draw(ax: Axes, metrics: pd.DataFrame, column: str, colors: dict[str, tuple[float, float, float]]) -> None:
    """``column`` against step, one line per run that logged it, colored by variant."""
    rows = metrics[["run", "variant", "step", column]].dropna(subset=[column])
    rows = rows.assign(run=rows["run"].astype(str), variant=rows["variant"].astype(str))
    for (_, variant), g in rows.groupby(["run", "variant"], sort=True):
        g = g.sort_values("step", kind="stable")
        ax.plot(g["step"].to_numpy(float), g[column].to_numpy(float), color=colors[variant], lw=1.2, alpha=0.8)
    ax.set_title(TITLES.get(column, column), fontsize=10)
    ax.set_xlabel("training step")
    ax.xaxis.set_major_formatter(STEP_FORMAT)
    ax.grid(alpha=0.3)


def fig_panels(metrics: pd.DataFrame, columns: Sequence[str], *, path: str | Path | None = None,
               ncols: int = 3, title: str | None = None, empty_note: str | None = None) -> Figure:
    """One panel per column of ``columns`` that some run logged (in that order), one line per run,
    one color per variant, one shared legend. With none logged, a single panel says so (``empty_note``).

    ``fig.axes`` holds one Axes per panel; each panel's ``lines`` one line per run that logged it.
    """
    present = [c for c in columns if c in metrics.columns and metrics[c].notna().any()]
    n = max(len(present), 1)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    if not present:
        axes[0].text(0.5, 0.5, empty_note or f"no run logged any of {list(columns)}", ha="center", va="center",
                     transform=axes[0].transAxes, wrap=True)
        axes[0].set_axis_off()
    else:
        colors = palette(sorted(metrics["variant"].dropna().astype(str).unique()))
        for ax, column in zip(axes, present):
            _draw(ax, metrics, column, colors)
        if len(colors) <= MAX_LEGEND:
            fig.legend(handles=[Line2D([], [], color=c, label=v) for v, c in colors.items()],
                       loc="outside lower center", ncols=min(len(colors), 6), fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig


def fig_schedules(metrics: pd.DataFrame, columns: Sequence[str] = SCHEDULES, *,
                  path: str | Path | None = None) -> Figure:
    """α and ratio_fm against step as logged by each run (arXiv 2510.20771 Algorithm 2; Table 2a's schedules),
    side by side."""
    return fig_panels(metrics, columns, path=path, ncols=len(columns),
                      title="Schedules used (as logged in metrics.jsonl), one line per run")


def fig_losses(metrics: pd.DataFrame, columns: Sequence[str] = LOSSES, *, path: str | Path | None = None,
               ncols: int = 3) -> Figure:
    """The training losses against step, one panel per loss some run logged (objectives log different parts)."""
    return fig_panels(metrics, columns, path=path, ncols=ncols, title="Training losses, one line per run")
