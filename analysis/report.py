"""The standard report of a sweep root: tables, a markdown summary and figures in one folder.

    write_report("runs/grad_conflict")        # → runs/grad_conflict/report/

writes runs.csv (``Runs.runs``), summary.csv (``summarize_runs``), variants.csv
(``summarize_variants`` of every final_*/best_* column), summary.md (both tables, failed runs and
problems), loss.png (training loss_mse against step, one line per run; ``loss`` if no run logs
loss_mse) and, where runs hold gradient probes, fig2a/2b/2c/6.png (``plots.save_figures``): from
probes.jsonl (raw weights where present), else from the online ``probe_*`` keys of metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .plots import save_figures
from .probes import markdown_table
from .runfiles import STATUSES
from .runplots import fig_metric
from .runs import Runs, load_runs
from .summary import summarize_runs, summarize_variants

LOSS = ("loss_mse", "loss")  # the first one any run logs is plotted


def online_probes(runs: Runs, prefix: str = "probe_") -> pd.DataFrame:
    """The probe values the trainer logged in metrics (``probe_x`` → ``x``) with ``run``, ``label``, ``step``:
    the frame ``plots`` draws (no percentile bands). Empty if no run logged any."""
    cols = [c for c in runs.metrics.columns if c.startswith(prefix)]
    if not cols:
        return pd.DataFrame(columns=["run", "label", "step"])
    rows = runs.metrics[["run", "step", *cols]].dropna(subset=cols, how="all")
    rows = rows.assign(run=rows["run"].astype(str)).rename(columns={c: c[len(prefix):] for c in cols})
    labels = runs.runs[["run", "label"]].assign(run=runs.runs["run"].astype(str))
    return rows.merge(labels, on="run", how="left")[["run", "label", "step", *[c[len(prefix):] for c in cols]]]


def _interval_table(variants: pd.DataFrame, value_cols: list[str]) -> pd.DataFrame:
    """variants.csv for reading: per value column one cell "mean [lo, hi]" (4 significant digits)."""
    def fmt(v: float) -> str:
        return "" if pd.isna(v) else f"{v:.4g}"

    keep = [c for c in variants.columns if not any(c.startswith(f"{v}_") for v in value_cols)]
    out = variants[[c for c in keep if not c.startswith("cfg.")]].copy()
    for c in value_cols:
        out[c] = [f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]" if pd.notna(lo) else fmt(m)
                  for m, lo, hi in zip(variants[f"{c}_mean"], variants[f"{c}_lo"], variants[f"{c}_hi"])]
    return pd.concat([out, variants[[c for c in keep if c.startswith("cfg.")]]], axis=1)


def _markdown(root: Path, runs: Runs, summary: pd.DataFrame, variants: pd.DataFrame, value_cols: list[str],
              figures: list[str]) -> str:
    counts = runs.runs["status"].value_counts()
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
    parts = [f"# Sweep report: {root}\n", f"{len(runs.runs)} runs: {status}.\n",
             "## Runs\n", "Final value (at the last step it was logged) and best (minimum) per run; "
             "config keys that differ between runs.\n", markdown_table(summary, floatfmt=".4g"),
             "## Variants\n", "Mean over the seeds of each variant with a 95 % Student-t interval "
             "(mean ± t₀.₉₇₅,ₙ₋₁·sd/√n); a variant with one run has no interval.\n",
             markdown_table(_interval_table(variants, value_cols), floatfmt=".4g")]
    failed = runs.runs[runs.runs["status"] == "failed"]
    if len(failed):
        parts.append("## Failed runs\n")
        parts += [f"- {r.run}: {str(r.error).splitlines()[-1] if isinstance(r.error, str) else 'no error.txt'}"
                  for r in failed.itertuples()]
        parts.append("")
    parts += ["## Problems\n"] + ([f"- {p}" for p in runs.problems] or ["none"]) + [""]
    if figures:
        parts += ["## Figures\n"] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(parts)


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """Load ``root`` (cached), write the tables, summary.md and figures into ``out`` (default
    ``root/report``); returns ``out``."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    runs = load_runs(root)
    summary = summarize_runs(runs)
    value_cols = [c for c in summary.columns if c.startswith(("final_", "best_"))]
    variants = summarize_variants(summary, value_cols)
    out.mkdir(parents=True, exist_ok=True)
    runs.runs.to_csv(out / "runs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    variants.to_csv(out / "variants.csv", index=False)

    loss = next((c for c in LOSS if c in runs.metrics.columns), LOSS[0])
    fig_metric(runs.metrics, loss, path=out / "loss.png", title=f"training {loss}")
    figures = ["loss.png"]
    probes = runs.probes
    if not probes.empty and "weights" in probes.columns and (probes["weights"] == "raw").any():
        probes = probes[probes["weights"] == "raw"]
    if probes.empty:
        probes = online_probes(runs)
    if not probes.empty:
        figures += [p.name for p in save_figures(probes, out).values()]
    (out / "summary.md").write_text(_markdown(root, runs, summary, variants, value_cols, figures))
    return out
