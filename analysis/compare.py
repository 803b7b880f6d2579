"""Paired comparisons: does a variant beat the baseline, and by how much, with an interval.

The runs of a sweep share their seeds: run s of every variant starts from the same initial weights and sees
the same data order. So the difference d_s = (variant's value − baseline's value) on seed s removes what the
seeds share, and its spread is far smaller than that of two independent groups. Per (variant, metric), on the
seeds both have:

    mean d̄ = Σ_s d_s / n, sd = √(Σ (d_s − d̄)² / (n − 1)),
    95 % t-interval d̄ ± t_{0.975, n−1}·sd/√n, and beside it a percentile bootstrap of d̄ (resampling seeds),
    share of seeds where the variant is better (lower, for a distance or loss),
    seeds to resolve: the least n with t_{0.975, n−1}·sd/√n < |d̄|, the seeds an interval at this spread needs
    to exclude 0 (NaN when d̄ = 0 or n < 2).

    table = paired_table(per_run, ["fd_digits 1-NFE"], baseline="meanflow")   # per_run: variant, seed, values

A difference of two quantities in [a, b] lies in [a − b, b − a] (cosines: [−2, 2]; a distance: unbounded), and
its t-interval is clipped there (``difference_range``), as every interval of the report is clipped to its
quantity's range. ``baseline_of`` picks the reference: the one asked for, else the sweep's
(run.json's ``baseline``: the file's ``baseline:`` key or its first variant), else the first by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .summary import value_range

COLUMNS = ["metric", "variant", "baseline", "pairs", "baseline_mean", "variant_mean", "diff", "diff_sd",
           "diff_lo", "diff_hi", "boot_lo", "boot_hi", "better", "seeds_to_resolve"]
BOOTSTRAP = 4000  # resamples of the seeds
MAX_SEEDS = 10_000  # seeds_to_resolve beyond this is reported as inf


def lower_is_better(metric: str) -> bool | None:
    """True for a distance or a loss (lower wins), None where "better" has no direction (a cosine)."""
    name = metric.lower()
    if "cos" in name:
        return None
    return True if name.startswith(("fd", "fid", "auc_fd", "auc_fid", "final_loss", "best_loss")) else None


def seeds_to_resolve(diff: float, sd: float, level: float = 0.95) -> float:
    """The least n ≥ 2 with t_{(1+level)/2, n−1}·sd/√n < |diff|: how many paired seeds a difference of this size
    at this spread needs for its interval to exclude 0. NaN if diff or sd is NaN or diff = 0; 2 if sd = 0."""
    if not (math.isfinite(diff) and math.isfinite(sd)) or diff == 0:
        return math.nan
    if sd == 0:
        return 2.0
    q = 0.5 + level / 2
    # (t·sd/|d|)² > n − ... : start from the normal approximation and walk up
    n = max(2, math.floor((stats.norm.ppf(q) * sd / abs(diff)) ** 2))
    while n <= MAX_SEEDS:
        if stats.t.ppf(q, n - 1) * sd / math.sqrt(n) < abs(diff):
            return float(n)
        n += 1
    return math.inf


def bootstrap_interval(d: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` [n] (seeds resampled with replacement, a fixed
    generator: the same table every time); NaN for n < 2."""
    if len(d) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def difference_range(metric: str) -> tuple[float, float]:
    """[a − b, b − a] for a quantity in [a, b] (``summary.value_range``): (−2, 2) for a cosine, unbounded for a
    distance (a − b = −inf), (−1, 1) for a share."""
    a, b = value_range(metric)
    return a - b, b - a


def paired(baseline: pd.Series, variant: pd.Series, metric: str, level: float = 0.95) -> dict[str, float]:
    """The paired statistics (module docstring) of two per-seed series (index: seed; NaN values dropped)."""
    both = pd.concat([baseline.rename("b"), variant.rename("v")], axis=1).dropna()
    d = (both["v"] - both["b"]).to_numpy(float)
    n = len(d)
    out = {"pairs": n, "baseline_mean": float(both["b"].mean()) if n else math.nan,
           "variant_mean": float(both["v"].mean()) if n else math.nan,
           "diff": float(d.mean()) if n else math.nan, "diff_sd": float(d.std(ddof=1)) if n > 1 else math.nan}
    half = stats.t.ppf(0.5 + level / 2, n - 1) * out["diff_sd"] / math.sqrt(n) if n > 1 else math.nan
    lo, hi = difference_range(metric)
    out["diff_lo"], out["diff_hi"] = max(out["diff"] - half, lo), min(out["diff"] + half, hi)
    out["boot_lo"], out["boot_hi"] = bootstrap_interval(d, level)
    lower = lower_is_better(metric)
    out["better"] = float(np.mean(d < 0 if lower else d > 0)) if n and lower is not None else math.nan
    out["seeds_to_resolve"] = seeds_to_resolve(out["diff"], out["diff_sd"], level)
    return out


def baseline_of(variants: Sequence[str], recorded: Sequence[str] = (), asked: str | None = None) -> str:
    """The reference variant: ``asked`` (refused with the choices if it is not one of ``variants``), else the
    most common recorded one that is a variant, else the first variant by name."""
    names = sorted(set(variants))
    if asked is not None:
        if asked not in names:
            raise ValueError(f"--baseline {asked!r} is not a variant of this root; variants: {names}")
        return asked
    known = pd.Series([r for r in recorded if r in names], dtype=object)
    return str(known.mode().iloc[0]) if len(known) else names[0]


def paired_table(per_run: pd.DataFrame, values: Sequence[str], *, baseline: str, by: str = "variant",
                 seed: str = "seed", level: float = 0.95) -> pd.DataFrame:
    """One row per (metric, variant ≠ baseline): COLUMNS. ``per_run``: one row per run with ``by``, ``seed`` and the
    ``values`` columns; a seed that appears twice within one variant is refused (pairing needs one run per seed)."""
    if per_run.empty or baseline not in set(per_run[by]):
        return pd.DataFrame(columns=COLUMNS)
    dup = per_run.duplicated([by, seed], keep=False)
    if dup.any():
        raise ValueError(f"paired comparison: seed repeated within a variant: "
                         f"{sorted(set(map(tuple, per_run.loc[dup, [by, seed]].astype(str).to_numpy())))}")
    frame = per_run.set_index(seed)
    rows = []
    for metric in values:
        base = frame.loc[frame[by] == baseline, metric].astype(float)
        for variant in sorted(set(per_run[by]) - {baseline}):
            other = frame.loc[frame[by] == variant, metric].astype(float)
            rows.append({"metric": metric, "variant": variant, "baseline": baseline,
                         **paired(base, other, metric, level)})
    return pd.DataFrame(rows, columns=COLUMNS)


def comparison_cells(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``paired_table`` for reading: metric, variant, seeds, "d̄ [lo, hi]" (t) and the bootstrap's, better
    ("k of n"), seeds to resolve."""
    def fmt(v: float) -> str:
        return "" if pd.isna(v) else f"{v:.{digits}g}"

    out = table[["metric", "variant"]].copy()
    out["seeds"] = table["pairs"]
    out["baseline"] = [fmt(v) for v in table["baseline_mean"]]
    out["variant − baseline [95 % t]"] = [f"{fmt(d)} [{fmt(lo)}, {fmt(hi)}]" if pd.notna(lo) else fmt(d)
                                         for d, lo, hi in zip(table["diff"], table["diff_lo"], table["diff_hi"])]
    out["[bootstrap]"] = [f"[{fmt(lo)}, {fmt(hi)}]" if pd.notna(lo) else ""
                          for lo, hi in zip(table["boot_lo"], table["boot_hi"])]
    out["better on"] = [f"{round(b * n)} of {n}" if pd.notna(b) else "" for b, n in zip(table["better"], table["pairs"])]
    out["seeds to resolve"] = [("" if pd.isna(k) else "∞" if math.isinf(k) else str(int(k)))
                               for k in table["seeds_to_resolve"]]
    return out


def headline_per_run(quality: pd.DataFrame, auc: pd.DataFrame, conflict: pd.DataFrame,
                     seeds: pd.Series) -> tuple[pd.DataFrame, list[str]]:
    """The per-run frame the comparisons pair (run, variant, seed, values) and its value columns: the final
    quality (``tables.run_quality``), the quality curves' AUC (``curves.area_under_curve``) and the mean cosine
    of the conflict probes (``probe_frames.summarize_conflict``), joined on ``run``; ``seeds``: run → seed."""
    frames = [f for f in (quality, auc, conflict) if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["run", "variant", "seed"]), []
    lead = ["run", "variant"]
    values: list[str] = []
    merged = None
    for f in frames:
        cols = [c for c in f.columns if c not in ("run", "variant", "seed", "step", "sampler") and
                pd.api.types.is_numeric_dtype(f[c])]
        values += [c for c in cols if c not in values]
        part = f[lead + cols].assign(run=f["run"].astype(str), variant=f["variant"].astype(str))
        merged = part if merged is None else merged.merge(part, on=lead, how="outer")
    assert merged is not None  # frames is not empty
    merged.insert(2, "seed", merged["run"].map(seeds))
    return merged, values


def steps_table(by_step: pd.DataFrame, metric: str, *, max_rows: int = 10, digits: int = 3) -> pd.DataFrame:
    """The paired difference of ``metric`` at up to ``max_rows`` evaluated steps (evenly spaced, the last always
    kept): one row per step, one column per variant, cells "d̄ [lo, hi]" (95 % t) and the seeds better, from
    ``comparisons``' per-step frame (``step`` + ``paired_table`` columns)."""
    rows = by_step[by_step["metric"] == metric] if not by_step.empty else by_step
    if rows.empty:
        return pd.DataFrame(columns=["step"])
    steps = sorted(rows["step"].unique())
    keep = sorted({steps[round(i * (len(steps) - 1) / max(max_rows - 1, 1))] for i in range(min(max_rows, len(steps)))})

    def fmt(v: float) -> str:
        return "" if pd.isna(v) else f"{v:.{digits}g}"

    out = []
    for step in keep:
        row: dict[str, Any] = {"step": int(step)}
        for r in rows[rows["step"] == step].itertuples():
            cell = f"{fmt(r.diff)} [{fmt(r.diff_lo)}, {fmt(r.diff_hi)}]" if pd.notna(r.diff_lo) else fmt(r.diff)
            better = f", {round(r.better * r.pairs)}/{r.pairs}" if pd.notna(r.better) else ""
            row[r.variant] = cell + better
        out.append(row)
    return pd.DataFrame(out)
