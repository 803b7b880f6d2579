"""The gradient-conflict figures of the paper (arXiv 2510.20771 Figure 2a/2b/2c and Figure 6), from ``load_probes``
(docs/probes.md#what-the-paper-measures).

Each curve is one run (its ``label``): the mean over the probe batches per checkpoint, with a
shaded 5–95 % band from ``q_p05``/``q_p95`` where the frame has them (the online probes of
``load_online_probes`` have none, so they plot as bare lines). x is the training step.
If the frame mixes raw and EMA probes, each run gets one curve per weights ("label [ema]").

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, nothing to close, Agg-safe);
every function returns the Figure and saves a PNG when given ``path``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from .probe_frames import latest_per_step

if TYPE_CHECKING:
    from matplotlib.typing import ColorType

NAMES = {"tfm": "TFM", "tcc": "TCc", "fmb": "FM'", "mf": "MF"}
FIG6_PAIRS = ["fmb_tcc", "tfm_fmb", "tfm_mf", "fmb_mf", "tcc_mf", "tcc_tfm"]  # arXiv 2510.20771 Figure 6 (a)–(f)
BAND_ALPHA = 0.18
STEP_FORMAT = FuncFormatter(lambda x, _: f"{x / 1000:g}K" if abs(x) >= 1000 else f"{x:g}")  # 400000 → 400K


def cos_column(pair: str) -> str:
    """The probe column of a pair in either order: "tcc_tfm" → "cos_tfm_tcc" (cosine is symmetric)."""
    a, b = pair.split("_")
    order = ["tfm", "fmb", "tcc", "mf"]
    return f"cos_{a}_{b}" if order.index(a) < order.index(b) else f"cos_{b}_{a}"


def cos_title(pair: str) -> str:
    """"tfm_tcc" → "cos(∇L_TFM, ∇L_TCc)" in mathtext."""
    a, b = (_sub(p) for p in pair.split("_"))
    return rf"$\cos(\nabla\mathcal{{L}}_{{{a}}}, \nabla\mathcal{{L}}_{{{b}}})$"


def loss_title(part: str) -> str:
    """"tfm" → "L_TFM" in mathtext."""
    return rf"$\mathcal{{L}}_{{{_sub(part)}}}$"


def _sub(part: str) -> str:
    """The mathtext subscript of a loss part: "TFM" upright, FM′ with a real prime."""
    return r"\mathrm{FM}^{\prime}" if part == "fmb" else rf"\mathrm{{{NAMES[part]}}}"


def curves(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(curve name, its rows sorted by step) per run and weights, in label order; one row per step."""
    df = latest_per_step(df)
    keys = ["label"] + (["weights"] if "weights" in df.columns and df["weights"].nunique() > 1 else [])
    out = []
    for key, g in df.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        name = key[0] if len(key) == 1 else f"{key[0]} [{key[1]}]"
        out.append((name, g.sort_values("step", kind="stable")))
    return out


def palette(names: list[str]) -> dict[str, tuple[float, float, float]]:
    """A fixed color per curve name (sorted), so a run has the same color in every figure."""
    tab10 = cast(ListedColormap, matplotlib.colormaps["tab10"])  # a listed colormap, its colors ten RGB tuples
    colors = cast("tuple[tuple[float, float, float], ...]", tab10.colors)
    return {n: colors[i % len(colors)] for i, n in enumerate(sorted(names))}


def draw_quantity(ax: Axes, df: pd.DataFrame, column: str, *, linestyle: str = "-",
                  colors: Mapping[str, ColorType] | None = None, label: bool = True) -> None:
    """One mean line per curve of ``column`` against step, with its p05–p95 band where present."""
    groups = curves(df)
    colors = colors or palette([n for n, _ in groups])
    for name, g in groups:
        if column not in g.columns or g[column].isna().all():
            continue
        x, y = g["step"].to_numpy(float), g[column].to_numpy(float)
        ax.plot(x, y, linestyle=linestyle, color=colors[name], label=name if label else None, lw=1.6)
        lo, hi = f"{column}_p05", f"{column}_p95"
        if lo in g.columns and hi in g.columns and g[[lo, hi]].notna().any().any():
            ax.fill_between(x, g[lo].to_numpy(float), g[hi].to_numpy(float), color=colors[name],
                            alpha=BAND_ALPHA, lw=0)
    ax.set_xlabel("training step")
    ax.xaxis.set_major_formatter(STEP_FORMAT)
    ax.grid(alpha=0.3)


def _cos_axes(ax: Axes) -> None:
    ax.set_ylim(-1, 1)
    ax.axhline(0.0, color="0.3", lw=0.8, zorder=0)
    ax.set_ylabel("cosine similarity")


def _new_axes(ax: Axes | None, size: tuple[float, float] = (5.5, 3.8)) -> tuple[Figure, Axes]:
    if ax is not None:
        fig = ax.figure
        while not isinstance(fig, Figure):  # an axes of a SubFigure: the figure that saves is the one at the top
            fig = fig.figure
        return fig, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Write ``fig`` as a 150-dpi PNG at ``path`` (its folder made) when a path is given; returns ``fig``."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig


def fig2a(df: pd.DataFrame, *, ax: Axes | None = None, path: str | Path | None = None) -> Figure:
    """Fig. 2a: cos(∇L_TFM, ∇L_TCc) solid and cos(∇L_FM′, ∇L_TCc) dashed, per run, against step.

    ``ax.lines`` holds 2 lines per run plus the zero line; ``ax.collections`` one band per line.
    """
    fig, ax = _new_axes(ax)
    colors = palette([n for n, _ in curves(df)])
    draw_quantity(ax, df, "cos_tfm_tcc", linestyle="-", colors=colors, label=False)
    draw_quantity(ax, df, "cos_fmb_tcc", linestyle="--", colors=colors, label=False)
    _cos_axes(ax)
    handles = [Line2D([], [], color=c, lw=1.6, label=n) for n, c in colors.items()]
    handles += [Line2D([], [], color="0.2", ls="-", label=cos_title("tfm_tcc")),
                Line2D([], [], color="0.2", ls="--", label=cos_title("fmb_tcc"))]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title("Gradient conflict: TFM vs TCc and FM' vs TCc")
    return save_figure(fig, path)


def fig_quantity(df: pd.DataFrame, column: str, *, ax: Axes | None = None, path: str | Path | None = None,
                 title: str | None = None, ylabel: str | None = None) -> Figure:
    """Any probe column against step, one curve per run with its band (Fig. 2b/2c are losses)."""
    fig, ax = _new_axes(ax)
    draw_quantity(ax, df, column)
    ax.set_ylabel(ylabel or column)
    if title:
        ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def fig2b(df: pd.DataFrame, *, ax: Axes | None = None, path: str | Path | None = None) -> Figure:
    """Fig. 2b: the average L_TFM against step (the paper: lower with 75 % of L_FM′)."""
    return fig_quantity(df, "loss_tfm", ax=ax, path=path, title=f"Average {loss_title('tfm')}",
                        ylabel=loss_title("tfm"))


def fig2c(df: pd.DataFrame, *, ax: Axes | None = None, path: str | Path | None = None) -> Figure:
    """Fig. 2c: the average L_TCc against step (the paper: not hurt by 75 % of L_FM′)."""
    return fig_quantity(df, "loss_tcc", ax=ax, path=path, title=f"Average {loss_title('tcc')}",
                        ylabel=loss_title("tcc"))


def fig6(df: pd.DataFrame, *, path: str | Path | None = None) -> Figure:
    """Fig. 6 (App. J): the six pairwise cosines in a 2×3 grid, in the paper's order (a)–(f)
    (docs/probes.md#what-the-paper-measures), one shared legend."""
    fig = Figure(figsize=(13, 6.5), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True, sharey=True).ravel()
    colors = palette([n for n, _ in curves(df)])
    for letter, ax, pair in zip("abcdef", axes, FIG6_PAIRS):
        draw_quantity(ax, df, cos_column(pair), colors=colors, label=False)
        _cos_axes(ax)
        ax.set_title(f"({letter}) {cos_title(pair)}")
        ax.label_outer()  # axis labels on the left column and bottom row only
    handles = [Line2D([], [], color=c, lw=1.6, label=n) for n, c in colors.items()]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    return save_figure(fig, path)


def save_figures(df: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write fig2a.png, fig2b.png, fig2c.png and fig6.png into ``out_dir``; returns name → path."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.png" for name in ("fig2a", "fig2b", "fig2c", "fig6")}
    for name, make in (("fig2a", fig2a), ("fig2b", fig2b), ("fig2c", fig2c), ("fig6", fig6)):
        make(df, path=paths[name])
    return paths
