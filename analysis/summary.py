"""Aggregate a ``Runs``: one row per run (final and best values), then per variant across seeds.

    summary = summarize_runs(load_runs(root))   # final_/best_ of loss_mse, loss_tfm, loss_tcc
    variants = summarize_variants(summary, ["final_loss_mse", "best_loss_mse"])
    print(markdown_table(variants))

The interval over seeds is Student's t: mean ± t_{0.975, n−1} · sd / √n with the sample standard
deviation (ddof = 1). It needs n ≥ 2; with a single run the sd and the interval are NaN (blank in
tables) rather than a misleading zero width. It is clipped to the quantity's range (``value_range``: a cosine
in [−1, 1], a share in [0, 1], a squared error, distance or norm ≥ 0): the true value lies in its range, so
the clipped interval covers it whenever the t-interval does (same coverage), and no table shows a cosine of
−1.8. A share (k of n events) gets Wilson's score interval instead (``wilson_interval``), inside [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from scipy import stats  # installed with scikit-learn, a core dependency

from .loading import Runs

SUMMARY_LEAD = ["run", "variant", "status", "last_step", "steps"]


UNBOUNDED = (-math.inf, math.inf)
# The range of each summarised quantity, by the column's name without a final_/best_/mean_ prefix and a
# " k-NFE" suffix. Exact names first, then prefixes; anything else is unbounded (no clipping). loss_tcc is
# 2⟨ṽ − u_tgt, u_θ⟩ per element: it can be negative.
RANGES: dict[str, tuple[float, float]] = {
    "loss_mse": (0.0, math.inf), "loss_tfm": (0.0, math.inf), "loss": (0.0, math.inf),
    "conflict_ratio": (0.0, 1.0), "ratio_tfm_tcc": (0.0, 1.0), "conflict_changed": (0.0, 1.0),
    "conflict_change": (0.0, math.inf), "norm_x_over_tfm": (0.0, math.inf)}
PREFIX_RANGES: tuple[tuple[str, tuple[float, float]], ...] = (
    ("cos_", (-1.0, 1.0)), ("conflict_cos", (-1.0, 1.0)), ("frac_", (0.0, 1.0)), ("share_", (0.0, 1.0)),
    ("fd_", (0.0, math.inf)), ("fid", (0.0, math.inf)), ("conflict_norm", (0.0, math.inf)),
    ("gradnorm", (0.0, math.inf)), ("norm_", (0.0, math.inf)))


def value_range(column: str) -> tuple[float, float]:
    """(lo, hi) that the quantity in ``column`` cannot leave (``RANGES``, ``PREFIX_RANGES``); (−inf, inf) if
    unknown. "final_loss_mse" → (0, inf); "mean_cos_tfm_tcc" → (−1, 1); "fd_digits 1-NFE" → (0, inf)."""
    name = column.split(" ")[0]
    for prefix in ("final_", "best_", "mean_"):
        name = name[len(prefix):] if name.startswith(prefix) else name
    if name in RANGES:
        return RANGES[name]
    return next((bounds for prefix, bounds in PREFIX_RANGES if name.startswith(prefix)), UNBOUNDED)


def t_interval(values: Sequence[float] | pd.Series, level: float = 0.95,
               bounds: tuple[float, float] = UNBOUNDED) -> tuple[int, float, float, float, float]:
    """(n, mean, sd, lo, hi) of the non-NaN ``values``: mean ± t_{(1+level)/2, n−1}·sd/√n, clipped to
    ``bounds`` (the quantity's range: the clipped interval has the t-interval's coverage); NaN where n < 2."""
    x = pd.Series(values, dtype=float).dropna()
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return n, mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return n, mean, sd, max(mean - half, bounds[0]), min(mean + half, bounds[1])


def wilson_interval(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a share k/n (E. B. Wilson, JASA 1927): with z = Φ⁻¹((1+level)/2),
    p̂ = k/n, centre (p̂ + z²/2n)/(1 + z²/n) and half-width z/(1 + z²/n)·√(p̂(1 − p̂)/n + z²/4n²). It stays in
    [0, 1] and keeps a width at p̂ = 0 or 1, where the normal (and the t) interval collapses or leaves [0, 1].
    NaN where n = 0."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got {successes} of {n}")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exactly 0 and 1 at the ends, not round-off
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The ``columns`` whose values (NaN included) are not all equal across the rows of ``frame``."""
    return [c for c in columns if frame[c].astype(str).nunique(dropna=False) > 1]


COUNTS = ("spike_skipped", "nonfinite")  # per-row counts a run summary totals
SUMMARY_METRICS = ("loss_mse", "loss_tfm", "loss_tcc")  # unweighted: the adaptive-weighted ``loss`` ends near 1 in
#                                                         every run (that is what the weight does), so it tells runs apart by nothing


def summarize_runs(runs: Runs, metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """One row per run: run, variant, status, last_step, steps (``cfg.train.steps``), then for each metric
    ``final_<m>`` (its value at the largest step where it was logged) and ``best_<m>`` (its minimum),
    then ``spike_skipped`` and ``nonfinite`` (updates the trainer held back, summed over the rows, where the
    metrics have them), then the cfg.* columns that differ between runs. A metric a run never logged is NaN there (flow matching
    logs no ``loss_tfm`` / ``loss_tcc``: it has no r < t rows).
    """
    table = runs.runs
    out = table[["run", "variant", "status", "last_step"]].copy()
    out["steps"] = table["cfg.train.steps"] if "cfg.train.steps" in table.columns else math.nan
    for name in metrics:
        final = best = pd.Series(dtype=float)
        if name in runs.metrics.columns:
            rows = runs.metrics[["run", "step", name]].dropna(subset=[name])
            rows = rows.assign(run=rows["run"].astype(str)).sort_values(["run", "step"], kind="stable")
            final = rows.groupby("run", sort=False)[name].last()
            best = rows.groupby("run", sort=False)[name].min()
        out[f"final_{name}"] = out["run"].map(final).astype(float)
        out[f"best_{name}"] = out["run"].map(best).astype(float)
    for name in COUNTS:  # steps the trainer did not apply, summed over the rows (train.spike_guard, non-finite)
        if name in runs.metrics.columns:
            totals = runs.metrics.assign(run=runs.metrics["run"].astype(str)).groupby("run")[name].sum()
            out[name] = out["run"].map(totals).fillna(0).astype(int)
    cfg = varying(table, [c for c in table.columns if c.startswith("cfg.")])
    return pd.concat([out, table[cfg]], axis=1).reset_index(drop=True)


def summarize_variants(run_summary: pd.DataFrame, value_cols: Sequence[str], *, by: str = "variant",
                       level: float = 0.95) -> pd.DataFrame:
    """Per variant (sorted): ``n`` runs, ``done`` (of them with status done, if the frame has a status),
    then for each value column ``c``: ``c_n`` (runs with a value), ``c_mean``, ``c_sd``, and the
    ``level`` t-interval ``c_lo``, ``c_hi`` clipped to ``value_range(c)`` (NaN when ``c_n`` < 2); then the cfg.* columns that are
    constant within every variant and differ between variants (what tells the variants apart).
    """
    columns = [by, "n"] + (["done"] if "status" in run_summary.columns else [])
    columns += [f"{c}_{s}" for c in value_cols for s in ("n", "mean", "sd", "lo", "hi")]
    rows = []
    for key, g in run_summary.groupby(by, sort=True, dropna=False):
        row: dict[str, Any] = {by: key, "n": len(g)}
        if "status" in g.columns:
            row["done"] = int((g["status"] == "done").sum())
        for c in value_cols:
            n, mean, sd, lo, hi = t_interval(g[c], level, value_range(c))
            row.update({f"{c}_n": n, f"{c}_mean": mean, f"{c}_sd": sd, f"{c}_lo": lo, f"{c}_hi": hi})
        rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    cfg = [c for c in run_summary.columns if c.startswith("cfg.")]
    groups = run_summary.groupby(by, sort=True, dropna=False)
    within = [c for c in cfg if (groups[c].agg(lambda s: s.astype(str).nunique(dropna=False)) <= 1).all()]
    if within and len(out):
        first = groups[within].first().reset_index(drop=True)
        out = pd.concat([out, first[varying(first, within)]], axis=1)
    return out
