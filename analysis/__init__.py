"""Analysis of run folders with pandas, matplotlib and seaborn.

The only package of the project that imports them (see STYLE.md's layers). It reads run folders
through the run-folder format module of ``alphaflow`` and never parses logs. Load → aggregate →
plot, on DataFrames:

    probes.py   load_probes / load_online_probes (tidy frames from a sweep root; problems in
                ``df.attrs["problems"]``), summarize_conflict, markdown_table
    plots.py    fig2a, fig2b, fig2c, fig6 (SPEC §5.1), fig_quantity, save_figures

    df = load_probes("runs/grad-analysis", weights="raw")
    save_figures(df, "figures/")
    print(markdown_table(summarize_conflict(df)))
"""

from .plots import fig2a, fig2b, fig2c, fig6, fig_quantity, save_figures
from .probes import load_online_probes, load_probes, markdown_table, summarize_conflict

__all__ = ["fig2a", "fig2b", "fig2c", "fig6", "fig_quantity", "load_online_probes", "load_probes",
           "markdown_table", "save_figures", "summarize_conflict"]
