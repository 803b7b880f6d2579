"""Per-variant tables with 95 % intervals over seeds: sample quality (Table 2 of the paper) and gradient conflict.

    quality = quality_table(load_runs(root).evals)        # per variant, mean/sd/lo/hi of each metric at 1 and 2 NFE
    print(markdown_table(interval_table(quality)))        # "mean [lo, hi]" cells, as the report writes them
    print(markdown_table(interval_table(conflict_by_variant(load_probes(root)))))

The intervals are ``summary.t_interval``'s (Student's t over the seeds of a variant, clipped to the quantity's
range; none with one seed), except for shares of probe points, which pool the points of a variant's runs under
Wilson's interval (``summary.wilson_interval``), and for the mean cosines of a variant with one run, which show
that run's 2.5–97.5 % band of probe points instead. A ``<c>_interval`` column says which: "t", "wilson" or
"band" (blank: none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .probe_frames import SHARE_COUNTS, summarize_conflict
from .labels import variant_column
from .summary import summarize_variants, wilson_interval

STATS = ("n", "mean", "sd", "lo", "hi")  # the suffixes summarize_variants gives each value column
CONFLICT = ("mean_cos_tfm_tcc", "mean_cos_fmb_tcc", "frac_tfm_tcc_below_-0.4", "frac_fmb_above_tfm")


def quality_column(metric: str, nfe: int) -> str:
    """The column of one metric at one NFE: ("fd_digits", 1) → "fd_digits 1-NFE"."""
    return f"{metric} {nfe}-NFE"


def run_quality(evals: pd.DataFrame, *, nfe: Sequence[int] = (1, 2), metric: str | None = None,
                weights: str | None = "ema", sampler: str | None = None) -> pd.DataFrame:
    """One row per run from ``Runs.evals`` (eval.jsonl rows): run, variant, step, sampler, then one column
    per (metric, NFE) (``quality_column``) holding the value at the run's last evaluated step.

    Rows are first narrowed to ``weights`` / ``sampler`` / ``metric`` where given (None keeps all, as
    do rows without that key); at the last step a run was evaluated, a repeated (metric, NFE) keeps the
    row written last. ``sampler`` lists the samplers of the rows kept ("euler" for flow matching, "ode"
    otherwise by default).
    Empty input gives an empty frame with the lead columns.
    """
    lead = ["run", "variant", "step", "sampler"]
    need = {"run", "step", "nfe", "metric", "value"}
    if evals.empty or not need <= set(evals.columns):
        return pd.DataFrame(columns=lead)
    rows = evals[[c for c in evals.columns if not c.startswith("cfg.")]].copy()
    rows["run"] = rows["run"].astype(str)
    rows["_order"] = range(len(rows))  # file order: the last written row wins a tie
    for col, want in (("weights", weights), ("sampler", sampler), ("metric", metric)):
        if want is not None and col in rows.columns:
            rows = rows[rows[col].isna() | (rows[col] == want)]  # a row that does not say is kept
    rows = rows[rows["nfe"].isin(list(nfe))]
    if rows.empty:
        return pd.DataFrame(columns=lead)
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    rows = rows.sort_values("_order").drop_duplicates(["run", "metric", "nfe"], keep="last")
    rows["column"] = [quality_column(m, int(k)) for m, k in zip(rows["metric"], rows["nfe"])]
    wide = rows.pivot(index="run", columns="column", values="value")
    order = [quality_column(m, k) for m in sorted(rows["metric"].unique()) for k in nfe]
    if "sampler" not in rows.columns:
        rows["sampler"] = ""
    info = rows.groupby("run").agg(step=("step", "max"), sampler=("sampler", lambda s: ",".join(sorted(set(map(str, s))))))
    out = info.join(wide[[c for c in order if c in wide.columns]]).reset_index()
    out.insert(1, "variant", out["run"].map(dict(zip(rows["run"], variant_column(rows)))))
    return out.sort_values("run", kind="stable").reset_index(drop=True)


def quality_table(evals: pd.DataFrame, *, nfe: Sequence[int] = (1, 2), metric: str | None = None,
                  weights: str | None = "ema", sampler: str | None = None, level: float = 0.95) -> pd.DataFrame:
    """Table 2's counterpart: per variant, each (metric, NFE) of ``run_quality`` pooled over seeds as
    ``<col>_n``, ``_mean``, ``_sd``, ``_lo``, ``_hi`` (the ``level`` t-interval); plus ``sampler``.

    One row per variant (sorted), ``n`` the runs evaluated. Empty when no run has eval rows.
    """
    per_run = run_quality(evals, nfe=nfe, metric=metric, weights=weights, sampler=sampler)
    values = [c for c in per_run.columns if c not in ("run", "variant", "step", "sampler")]
    if per_run.empty:
        return pd.DataFrame(columns=["variant", "n"])
    table = summarize_variants(per_run, values, level=level)
    samplers = per_run.groupby("variant")["sampler"].agg(lambda s: ",".join(sorted(set(",".join(s).split(",")))))
    table.insert(2, "sampler", table["variant"].map(samplers))
    return table


def conflict_by_variant(probes: pd.DataFrame, values: Sequence[str] = CONFLICT, *, skip: float = 0.0,
                        level: float = 0.95) -> pd.DataFrame:
    """``probes.summarize_conflict`` per run, pooled per variant (the run name without seed and hash):
    ``n`` runs, then ``<value>_n/_mean/_sd/_lo/_hi`` for each of ``values`` (default: the mean cosines
    behind Fig. 2a and the shares of probe points with cos(∇L_TFM, ∇L_TCC) < −0.4 and with FM′ above TFM).

    A mean cosine is averaged per run, then over the seeds with the ``level`` t-interval (``_n`` = runs;
    clipped to [−1, 1]); a variant with one run shows that run's 2.5–97.5 % band of points instead. A
    share pools the probe points of all the variant's runs (``_n`` = points, ``_mean`` = k/n, ``_sd`` NaN) with
    Wilson's interval, inside [0, 1] (the points of one run are not independent, so read it as the spread of
    the pooled count, not of a new training run). ``skip``: leave out each run's points at step ≤
    skip·its last step (0.1: the first tenth). ``probes`` is a ``load_probes`` / ``load_online_probes`` frame
    (or ``Runs.probes``); empty in, empty out.
    """
    if probes.empty or "run" not in probes.columns:
        return pd.DataFrame(columns=["variant", "n"])
    per_run = summarize_conflict(probes, skip=skip)
    per_run.insert(1, "variant", per_run["run"].map(dict(zip(probes["run"], variant_column(probes)))))
    keys = ["variant"] + (["weights"] if "weights" in per_run.columns and per_run["weights"].nunique() > 1 else [])
    if len(keys) > 1:  # raw and EMA probes pool separately
        per_run["variant"] = per_run["variant"] + " [" + per_run["weights"].astype(str) + "]"
    present = [v for v in values if v in per_run.columns]
    table = summarize_variants(per_run, present, level=level)
    for share in (v for v in present if v in SHARE_COUNTS):
        counts = per_run.assign(_k=per_run[share].fillna(0) * per_run[SHARE_COUNTS[share]])
        pooled = counts.groupby("variant")[["_k", SHARE_COUNTS[share]]].sum()
        k = table["variant"].map(pooled["_k"].round())
        n = table["variant"].map(pooled[SHARE_COUNTS[share]])
        table[f"{share}_n"] = n.astype(int)
        table[f"{share}_mean"] = [ki / ni if ni else math.nan for ki, ni in zip(k, n)]
        table[f"{share}_sd"] = math.nan
        bounds = [wilson_interval(ki, ni, level) for ki, ni in zip(k, n)]
        table[f"{share}_lo"], table[f"{share}_hi"] = [b[0] for b in bounds], [b[1] for b in bounds]
        table[f"{share}_interval"] = ["wilson" if ni else "" for ni in n]
    for cos in (v for v in present if v.startswith("mean_cos_")):
        table[f"{cos}_interval"] = ["t" if pd.notna(lo) else "" for lo in table[f"{cos}_lo"]]
        band = per_run.groupby("variant")[[f"p025_{cos[5:]}", f"p975_{cos[5:]}"]].first()  # read where n = 1
        single = (table[f"{cos}_n"] == 1).to_numpy()
        for end, column in (("lo", band.columns[0]), ("hi", band.columns[1])):
            values = table["variant"].map(band[column]).astype(float).to_numpy()
            table[f"{cos}_{end}"] = np.where(single, values, table[f"{cos}_{end}"].astype(float))
        table[f"{cos}_interval"] = np.where(single & table[f"{cos}_lo"].notna().to_numpy(), "band",
                                            table[f"{cos}_interval"])
    return table


def interval_columns(table: pd.DataFrame) -> list[str]:
    """The value columns of a ``summarize_variants`` frame: the ``c`` that have all of ``c_n`` … ``c_hi``."""
    found = [c[:-len("_mean")] for c in table.columns if c.endswith("_mean")]
    return [c for c in found if all(f"{c}_{s}" in table.columns for s in STATS)]


def interval_table(table: pd.DataFrame, value_cols: Sequence[str] | None = None, *, digits: int = 4) -> pd.DataFrame:
    """A ``summarize_variants``-shaped frame for reading: each value column becomes one text cell
    "mean [lo, hi]" ("mean (band lo, hi)" for a one-run percentile band; ``digits`` significant digits; just
    the mean where there is no interval), the
    other ``_n/_sd/...`` columns are dropped, and ``cfg.*`` columns move to the end.
    """
    value_cols = list(value_cols) if value_cols is not None else interval_columns(table)

    def fmt(v: float) -> str:
        return "" if pd.isna(v) else f"{v:.{digits}g}"

    stat_cols = {f"{c}_{s}" for c in value_cols for s in (*STATS, "interval")}
    lead = [c for c in table.columns if c not in stat_cols and not c.startswith("cfg.")]
    out = table[lead].copy()
    for c in value_cols:
        kinds = table[f"{c}_interval"] if f"{c}_interval" in table.columns else [""] * len(table)
        out[c] = [(f"{fmt(m)} (band {fmt(lo)}, {fmt(hi)})" if kind == "band" else f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]")
                  if pd.notna(lo) else fmt(m)
                  for m, lo, hi, kind in zip(table[f"{c}_mean"], table[f"{c}_lo"], table[f"{c}_hi"], kinds)]
    return pd.concat([out, table[[c for c in table.columns if c.startswith("cfg.")]]], axis=1)
