"""Analysis of run folders with pandas, matplotlib and seaborn.

The only package of the project that imports them (the import layers: README.md#layout,
tests/test_layers.py). It reads run folders through the run-folder format module of ``alphaflow``
and never parses logs. Load → aggregate → plot, on DataFrames:

    records.py       read one run folder (status, torn lines, run.json, job.json, error.txt) → RunRecord
    cache.py         the per-run Parquet cache under ROOT/.analysis-cache/
    loading.py       load_runs → Runs: metrics, runs, probes, evals (tidy, with cfg.* columns), problems;
                     the one loader behind every table, figure and notebook
    labels.py        run identity and labels, each row's variant
    summary.py       summarize_runs (final/best per run), summarize_variants (mean, 95 % t-interval over seeds)
    report.py        write_report: runs/summary/variants/quality/conflict*.csv, summary.md, headline.md, figures
    runplots.py      fig_metric (a metric against step, one line per run)
    probe_frames.py  load_probes / load_online_probes (views of load_runs; problems in
                     ``df.attrs["problems"]``), summarize_conflict, markdown_table
    conflict_ticks.py  the conflict interventions' tick metrics per run and variant, fig_conflict
    plots.py         fig2a, fig2b, fig2c, fig6 (arXiv 2510.20771 Figures 2 and 6), fig_quantity, save_figures
    command.py       ``alphaflow report`` (registered through the ``alphaflow.commands`` entry point)

    runs = load_runs("runs/grad-analysis")
    print(markdown_table(summarize_variants(summarize_runs(runs), ["final_loss_mse"])))
    write_report("runs/grad-analysis")

    df = load_probes("runs/grad-analysis", weights="raw")
    save_figures(df, "figures/")
    print(markdown_table(summarize_conflict(df)))
"""

import importlib
from typing import Any

# Each public name and the module it lives in. They load on first use (PEP 562), so importing
# ``analysis.command`` for ``alphaflow --help`` costs no pandas, scipy or matplotlib.
_HOME = {
    "fig2a": "plots", "fig2b": "plots", "fig2c": "plots", "fig6": "plots", "fig_quantity": "plots",
    "save_figures": "plots",
    "load_online_probes": "probe_frames", "load_probes": "probe_frames", "markdown_table": "probe_frames",
    "summarize_conflict": "probe_frames",
    "write_report": "report", "fig_metric": "runplots", "Runs": "loading", "load_runs": "loading",
    "summarize_runs": "summary", "summarize_variants": "summary",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
