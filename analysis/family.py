"""The third part of a loss's gradient, per variant: how the objectives of the MeanFlow family that have one
(Modular MeanFlow's ``d``, Decoupled MeanFlow's ``lv``, improved MeanFlow's ``aux``; docs/objectives.md#the-meanflow-family)
pull against L_TFM and L_TCC.

    table = third_parts_by_variant(online_probes(load_runs(root)))   # per variant, 95 % t-intervals over seeds
    print(markdown_table(interval_table(table)))
    fig_conflict_panels(pool_seeds(online_probes(runs)))            # Fig. 2a with one panel per objective

Per run, over its probe points after the first ``skip`` share of training: the mean cos(∇L_TFM, ∇X),
cos(∇L_TCC, ∇X) and ‖∇X‖ / ‖∇L_TFM‖ for the third part X the run's probes report; then pooled per variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .labels import variant_column
from .plots import _cos_axes, curves, draw_quantity, save_figure
from .summary import summarize_variants

THIRD_PARTS = ("d", "lv", "aux")  # the probes' names for them (alphaflow.train.probes.EXTRA_TERMS)
VALUES = ("cos_tfm_x", "cos_tcc_x", "norm_x_over_tfm")
CONFLICT_LINE = -0.4  # "typically below −0.4" (arXiv 2510.20771 §3.2, Fig. 2a)


def third_parts(probes: pd.DataFrame, parts: Sequence[str] = THIRD_PARTS, *, skip: float = 0.1) -> pd.DataFrame:
    """One row per (run, part) the probes report: ``run``, ``variant``, ``part``, ``points`` and ``VALUES``
    (means over the run's probe points with step > skip·its last step). ``probes``: ``online_probes`` or
    ``load_probes`` columns (``cos_tfm_d``, ``gradnorm_d``, ...); empty in, empty out."""
    rows = []
    if probes.empty or "run" not in probes.columns:
        return pd.DataFrame(columns=["run", "variant", "part", "points", *VALUES])
    variants = dict(zip(probes["run"], variant_column(probes)))
    for run, g in probes.groupby("run", sort=True):
        g = g[g["step"] > skip * g["step"].max()]
        for x in parts:
            need = [f"cos_tfm_{x}", f"cos_tcc_{x}", f"gradnorm_{x}", "gradnorm_tfm"]
            if not all(c in g.columns for c in need):
                continue
            h = g.dropna(subset=need)
            if h.empty:
                continue
            rows.append({"run": run, "variant": variants[run], "part": x, "points": len(h),
                         "cos_tfm_x": h[f"cos_tfm_{x}"].mean(), "cos_tcc_x": h[f"cos_tcc_{x}"].mean(),
                         "norm_x_over_tfm": (h[f"gradnorm_{x}"] / h["gradnorm_tfm"]).mean()})
    return pd.DataFrame(rows, columns=["run", "variant", "part", "points", *VALUES])


def third_parts_by_variant(probes: pd.DataFrame, *, skip: float = 0.1, level: float = 0.95) -> pd.DataFrame:
    """``third_parts`` pooled per "variant (part)": ``n`` runs and ``<value>_n/_mean/_sd/_lo/_hi``."""
    per_run = third_parts(probes, skip=skip)
    if per_run.empty:
        return pd.DataFrame(columns=["variant", "n"])
    per_run = per_run.assign(variant=per_run["variant"] + " (" + per_run["part"] + ")")
    return summarize_variants(per_run, list(VALUES), level=level)


def fig_conflict_panels(df: pd.DataFrame, *, ncols: int = 4, path: str | Path | None = None) -> Figure:
    """Fig. 2a as small multiples: one panel per curve of ``df`` (a variant, seeds pooled), cos(∇L_TFM, ∇L_TCC)
    solid and cos(∇L_FM′, ∇L_TCC) dashed with their bands and the paper's −0.4 line, so eight objectives stay
    readable side by side. Where a panel's ``alpha`` column varies (the α-Flow curriculum), α is drawn in gray on
    a right-hand axis over the same steps. ``df``: ``pool_seeds(online_probes(runs))`` or ``load_probes`` rows."""
    groups = curves(df)
    rows = max(1, math.ceil(len(groups) / ncols))
    fig = Figure(figsize=(3.2 * min(ncols, max(len(groups), 1)), 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, min(ncols, max(len(groups), 1)), sharex=True, sharey=True, squeeze=False).ravel()
    for ax, (name, g) in zip(axes, groups):
        for column, style, color in (("cos_tfm_tcc", "-", "C0"), ("cos_fmb_tcc", "--", "C1")):
            draw_quantity(ax, g, column, linestyle=style, colors={name: color}, label=False)
        _cos_axes(ax)
        ax.axhline(CONFLICT_LINE, color="0.5", lw=0.8, ls=":", zorder=0)
        ax.set_title(name.split(" (")[0], fontsize=9)
        ax.label_outer()
        if "alpha" in g.columns and g["alpha"].nunique() > 1:
            _draw_alpha(ax, g)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    if groups:
        axes[0].plot([], [], "-", color="C0", label="cos(∇L_TFM, ∇L_TCC)")
        axes[0].plot([], [], "--", color="C1", label="cos(∇L_FM′, ∇L_TCC)")
        axes[0].legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)


def _draw_alpha(ax: Axes, g: pd.DataFrame) -> None:
    """α against step on a twin axis of ``ax`` (0 to 1, gray), labelled on its right."""
    twin = ax.twinx()
    twin.plot(g["step"].to_numpy(float), g["alpha"].to_numpy(float), color="0.45", lw=1.2, ls="-.", label="α")
    twin.set_ylim(-0.05, 1.05)
    twin.set_ylabel("α", color="0.45")
    twin.tick_params(axis="y", colors="0.45", labelsize=7)
    twin.legend(fontsize=7, loc="upper right")
