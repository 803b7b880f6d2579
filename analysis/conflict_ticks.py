"""What the conflict interventions logged during training (docs/conflict.md#metrics), per run and per variant.

A run trained with ``conflict.mode`` other than ``none`` writes, in every metrics row, the tick's mean over
its exact steps of ``conflict_cos`` (cos(g_TFM, g_TCC) of the training batch), ``conflict_ratio``
(‖g_TFM + g_TCC‖ / (‖g_TFM‖ + ‖g_TCC‖)), ``conflict_changed`` (share of steps the rule changed),
``conflict_change`` (‖update − sum‖ / ‖sum‖) and the two norms. Runs with ``none`` log none of them; the
online probes (``probe_cos_tfm_tcc``, ``probe_ratio_tfm_tcc``) measure every run the same way, so
``fig_conflict`` draws both side by side.

    runs = load_runs("runs/conflict")
    ticks_by_variant(runs.metrics)             # per variant: mean of each tick quantity, 95 % t-interval over seeds
    fig_conflict(runs, path="conflict.png")    # probe and tick cosines and norm ratios against step
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .loading import Runs
from .plots import curves, draw_quantity, palette, save_figure
from .probe_frames import online_probes, pool_seeds
from .summary import summarize_variants

TICKS = ("conflict_cos", "conflict_ratio", "conflict_changed", "conflict_change", "conflict_norm_tfm",
         "conflict_norm_tcc")


def conflict_ticks(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics rows that hold any ``conflict_*`` value: run, variant, step and the TICKS columns present.
    Empty (with those lead columns) when no run trained with a conflict mode."""
    cols = [c for c in TICKS if c in metrics.columns]
    lead = ["run", "variant", "step"]
    if not cols or metrics.empty:
        return pd.DataFrame(columns=lead)
    rows = metrics[lead + cols].dropna(subset=cols, how="all")
    return rows.assign(run=rows["run"].astype(str), variant=rows["variant"].astype(str)).reset_index(drop=True)


def tick_means(metrics: pd.DataFrame, *, skip: float = 0.0) -> pd.DataFrame:
    """Per run: ``mean_<q>`` over its ticks for each TICKS column ``q``, and ``ticks`` (rows averaged).

    ``skip`` drops the ticks before that share of the run's last logged step (0.1: the first tenth), as the
    paper's "most of training" does. One row per run that logged any conflict value.
    """
    rows = conflict_ticks(metrics)
    if rows.empty:
        return pd.DataFrame(columns=["run", "variant", "ticks"])
    rows = rows[rows["step"] >= skip * rows.groupby("run")["step"].transform("max")]
    cols = [c for c in TICKS if c in rows.columns]
    out = rows.groupby(["run", "variant"], sort=True)[cols].mean().add_prefix("mean_")
    out.insert(0, "ticks", rows.groupby(["run", "variant"], sort=True).size())
    return out.reset_index()


def ticks_by_variant(metrics: pd.DataFrame, *, skip: float = 0.0, level: float = 0.95) -> pd.DataFrame:
    """``tick_means`` pooled per variant: ``n`` runs, then ``mean_<q>_n/_mean/_sd/_lo/_hi`` (the ``level``
    Student-t interval over seeds, ``summary.t_interval``). Empty when no run logged conflict values."""
    per_run = tick_means(metrics, skip=skip)
    if per_run.empty:
        return pd.DataFrame(columns=["variant", "n"])
    return summarize_variants(per_run, [c for c in per_run.columns if c.startswith("mean_")], level=level)


# (frame, column, y label, title): the panels of fig_conflict, row by row; the probes measure every run alike
PANELS = (("probes", "cos_tfm_tcc", "cosine", r"probe: $\cos(\nabla L_{TFM}, \nabla L_{TCC})$"),
          ("probes", "ratio_tfm_tcc", "norm ratio", r"probe: $\|g_{TFM}+g_{TCC}\| / (\|g_{TFM}\|+\|g_{TCC}\|)$"),
          ("ticks", "conflict_changed", "share of steps", "training: share of steps the rule changed"),
          ("ticks", "conflict_cos", "cosine", "training batch: cos(g_TFM, g_TCC)"),
          ("ticks", "conflict_ratio", "norm ratio", "training batch: norm ratio"),
          ("ticks", "conflict_change", "relative change", "training: ‖update − sum‖ / ‖sum‖"))


def fig_conflict(runs: Runs, *, online: pd.DataFrame | None = None, path: str | Path | None = None) -> Figure:
    """A 2×3 figure against training step, one color per variant (seeds pooled: mean line, seed-range band).
    Top: the online probes' cos(∇L_TFM, ∇L_TCC) and norm ratio (every run, the same measurement whatever its
    mode), and the share of steps the rule changed. Bottom: the interventions' own per-tick cosine, norm ratio
    and relative change on the training batch (runs with a mode only). A panel without data says so.
    ``online``: ``online_probes(runs)`` where the caller has it already."""
    online = online_probes(runs) if online is None else online
    frames = {"probes": pool_seeds(online), "ticks": pool_seeds(_as_curves(conflict_ticks(runs.metrics)))}
    names = sorted({n for f in frames.values() if not f.empty for n, _ in curves(f)})
    colors = palette(names)
    fig = Figure(figsize=(14, 7.5), layout="constrained")
    for ax, (frame, column, ylabel, title) in zip(fig.subplots(2, 3, sharex=True).ravel(), PANELS):
        df = frames[frame]
        if df.empty or column not in df.columns:
            ax.text(0.5, 0.5, f"no run logged {column}", ha="center", va="center", transform=ax.transAxes)
        else:
            draw_quantity(ax, df, column, colors=colors, label=False)
        if column.startswith(("cos", "conflict_cos")):
            ax.set_ylim(-1, 1)
            ax.axhline(-0.4, color="0.5", lw=0.8, ls=":")
        ax.axhline(0.0, color="0.3", lw=0.8, zorder=0)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
    if names:
        handles = [Line2D([], [], color=colors[n], lw=1.6, label=n) for n in names]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8)
    return save_figure(fig, path)


def _as_curves(ticks: pd.DataFrame) -> pd.DataFrame:
    """``conflict_ticks`` rows in the shape ``pool_seeds`` and ``plots.curves`` read (a ``label`` per run)."""
    return ticks.assign(label=ticks["run"]) if not ticks.empty else ticks.assign(label=[])
