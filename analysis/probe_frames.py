"""Load gradient-probe records from a sweep root into tidy frames, and the conflict table
(docs/probes.md; arXiv 2510.20771 §3.2, Appendix E).

A sweep root holds run folders (``alphaflow.run.folder``); each may hold ``probes.jsonl``, one JSON
object per (checkpoint, probe settings)::

    {"step": 20000, "weights": "raw", "batches": 1000, "batch_size": 128, "seed": 0,
     "cos_tfm_tcc": -0.52, "cos_tfm_tcc_p05": -0.71, "cos_tfm_tcc_p95": -0.30, ...}

for q in loss_{tfm,tcc,fmb,mf}, gradnorm_*, cos_{a}_{b}: the mean ``q`` over the batches and the
percentiles ``q_p05``/``q_p95``. Extra keys (``loss_loss``, ``part.blocks.0.cos_tfm_tcc``, ...) pass
through as columns. ``fmb`` is the border case L_FM′ (r = t), ``tcc`` the trajectory consistency L_TCc.

Problems never raise: a folder without a readable ``config.json`` is skipped, a torn or garbled
line is skipped, and each is described by one string in ``df.attrs["problems"]``. Runs with a
config but no probe rows yet are listed in ``df.attrs["runs_without_probes"]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphaflow.run.folder import CONFIG

from .labels import RUN_COLUMNS, ratio_value, variant_column
from .loading import Runs, load_runs
SETTING_COLUMNS = ["step", "weights", "batches", "batch_size", "probe_seed"]
PAIRS = ["tfm_fmb", "tfm_tcc", "tfm_mf", "fmb_tcc", "fmb_mf", "tcc_mf"]
QUANTITIES = ([f"loss_{c}" for c in ("tfm", "tcc", "fmb", "mf")]
              + [f"gradnorm_{c}" for c in ("tfm", "tcc", "fmb", "mf")] + [f"cos_{p}" for p in PAIRS])


# ----------------------------------------------------------------------------- views of load_runs

def _views(root: str | Path, runs: Runs | None) -> tuple[Runs, list[str], list[str]]:
    """(the load, the runs with a readable config, problems: load_runs' own plus one per run left out)."""
    runs = runs if runs is not None else load_runs(root)
    table = runs.runs
    has_config = table["cfg.objective.name"].notna() if "cfg.objective.name" in table else pd.Series(False, index=table.index)
    problems = list(runs.problems)
    for name in table.loc[~has_config, "run"]:
        if not any(p.startswith(f"{name}:") and CONFIG in p for p in problems):
            problems.append(f"{name}: no readable {CONFIG}; skipped")
    return runs, list(table.loc[has_config, "run"]), problems


def _without_cfg(df: pd.DataFrame) -> pd.DataFrame:
    return df[[c for c in df.columns if not c.startswith("cfg.")]]


def load_probes(root: str | Path, *, weights: str | None = None, runs: Runs | None = None) -> pd.DataFrame:
    """All offline probe rows under a sweep root (``load_runs(root).probes`` without the cfg.* columns):
    RUN_COLUMNS, then the record's keys and ``variant``, one row per line.

    The record's own ``seed`` (the probe's sampling seed) is ``probe_seed``; ``seed`` is the run's training
    seed. ``weights`` ("raw" | "ema") keeps only rows probed on those weights. Rows are sorted by (label,
    weights, step), keeping file order within ties. ``df.attrs["problems"]`` (what ``load_runs`` skipped) and
    ``df.attrs["runs_without_probes"]`` (runs with a config and no such row) are lists of strings. Pass
    ``runs`` (a ``load_runs`` result) to reuse one load for several views.
    """
    runs, named, problems = _views(root, runs)
    df = _without_cfg(runs.probes)
    if weights is not None and "weights" in df.columns:
        df = df[df["weights"] == weights]
    df = df.reset_index(drop=True)
    present = set(df["run"]) if "run" in df.columns else set()
    df.attrs["problems"], df.attrs["runs_without_probes"] = problems, [r for r in named if r not in present]
    return df


def load_online_probes(root: str | Path, *, prefix: str = "probe_", runs: Runs | None = None) -> pd.DataFrame:
    """Probe values the trainer logged in ``metrics.jsonl`` (``probe_x`` → column ``x``; no percentiles), from
    ``load_runs(root).metrics``: one row per metrics row that holds any ``probe_*`` value; RUN_COLUMNS +
    ``step`` + the probe columns, sorted by (label, step). The same ``attrs`` as ``load_probes``. The
    figures accept this frame and draw no bands."""
    runs, named, problems = _views(root, runs)
    metrics = runs.metrics
    cols = [c for c in metrics.columns if c.startswith(prefix)]
    if not cols or metrics.empty:
        df = pd.DataFrame(columns=RUN_COLUMNS + ["step"])
    else:
        rows = metrics[metrics[cols].notna().any(axis=1)]
        ident = _identity_of(runs).set_index("run")
        df = rows[["run", "step", *cols, "variant"]].rename(columns={c: c[len(prefix):] for c in cols})
        df = df.dropna(axis=1, how="all").assign(run=lambda d: d["run"].astype(str))
        for col in reversed(RUN_COLUMNS[1:]):
            df.insert(1, col, df["run"].map(ident[col]))
        df = df[RUN_COLUMNS + [c for c in df.columns if c not in RUN_COLUMNS]]
        df = df.sort_values(["label", "step"], kind="stable").reset_index(drop=True)
    present = set(df["run"]) if len(df) else set()
    df.attrs["problems"], df.attrs["runs_without_probes"] = problems, [r for r in named if r not in present]
    return df


def _identity_of(runs: Runs) -> pd.DataFrame:
    """RUN_COLUMNS per run, read from the run table (its label is ``labels.run_identity``'s)."""
    table = runs.runs
    column = lambda key: table[key] if key in table else pd.Series(math.nan, index=table.index)  # noqa: E731
    ratio = [ratio_value({"kind": k, "start": a, "end": b}) if isinstance(k, str) else math.nan
             for k, a, b in zip(column("cfg.objective.ratio_fm.kind"), column("cfg.objective.ratio_fm.start"),
                                column("cfg.objective.ratio_fm.end"))]
    return pd.DataFrame({"run": table["run"].astype(str), "objective": column("cfg.objective.name"),
                         "ratio_fm": ratio, "seed": column("cfg.seed"), "label": table["label"]})


SCHEDULE_COLUMNS = ("alpha",)  # metrics columns online_probes carries beside the probe values


def online_probes(runs: Runs, prefix: str = "probe_") -> pd.DataFrame:
    """The probe values the trainer logged in metrics (``probe_x`` → ``x``) with ``run``, ``label``, ``step``
    and, where the metrics have it, ``alpha`` (the curriculum's α at that step, which ``family.fig_conflict_panels``
    draws beside the cosines): the frame ``plots`` draws (no percentile bands). Empty if no run logged any."""
    cols = [c for c in runs.metrics.columns if c.startswith(prefix)]
    if not cols:
        return pd.DataFrame(columns=["run", "label", "step"])
    extra = [c for c in SCHEDULE_COLUMNS if c in runs.metrics.columns]
    rows = runs.metrics[["run", "step", *extra, *cols]].dropna(subset=cols, how="all")
    rows = rows.assign(run=rows["run"].astype(str)).rename(columns={c: c[len(prefix):] for c in cols})
    labels = runs.runs[["run", "label"]].assign(run=runs.runs["run"].astype(str))
    keep = ["run", "label", "step", *extra, *[c[len(prefix):] for c in cols]]
    return rows.merge(labels, on="run", how="left")[keep]


def pool_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Online probe curves pooled over the seeds of each variant: per (variant, step) the mean of every
    quantity, with the seeds' min and max as the ``_p05``/``_p95`` band the figures shade.

    One batch per online probe makes single-run curves noisy; with several seeds per variant one line
    with its seed range reads better. ``label`` becomes "<variant> (n seeds, band: seed range)".
    A frame whose variants each have one run, or that already has bands, is returned unchanged.
    """
    if df.empty or any(c.endswith("_p05") for c in df.columns):
        return df
    df = df.assign(variant=variant_column(df))
    seeds = df.groupby("variant")["run"].nunique()
    if seeds.max() < 2:
        return df.drop(columns="variant")
    values = [c for c in df.columns if c not in ("run", "label", "step", "variant", "weights")
              and pd.api.types.is_numeric_dtype(df[c])]
    grouped = df.groupby(["variant", "step"])[values]
    out = grouped.mean()
    out = out.join(grouped.min().add_suffix("_p05")).join(grouped.max().add_suffix("_p95")).reset_index()
    out["label"] = [f"{v} ({seeds[v]} seeds, band: seed range)" if seeds[v] > 1 else v for v in out["variant"]]
    return out.rename(columns={"variant": "run"})


def checkpoints_per_run(probes: pd.DataFrame) -> int:
    """The most probed checkpoints any run has in ``probes`` (0 when empty)."""
    return int(probes.groupby("run")["step"].nunique().max()) if not probes.empty else 0


def offline_makes_curves(offline: pd.DataFrame, online: pd.DataFrame) -> bool:
    """Whether figures over training should draw the offline probes: yes where some run was probed at two or
    more checkpoints (a curve), or where there are no online probes to draw instead; a run probed only at its
    end (``probe.final``) is one point, and the online ``probe_*`` values make the better curve."""
    return not offline.empty and (checkpoints_per_run(offline) >= 2 or online.empty)


def latest_per_step(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, weights, step): the last one written (a re-probe replaces an earlier record)."""
    keys = [c for c in ("run", "weights", "step") if c in df.columns]
    return df.drop_duplicates(keys, keep="last")


# ----------------------------------------------------------------------------- the conflict table

SHARE_COUNTS = {"frac_tfm_tcc_neg": "points_tfm_tcc", "frac_tfm_tcc_below_-0.4": "points_tfm_tcc",
                "frac_fmb_above_tfm": "points_both"}  # each share column → the column counting its points


BAND = (("p025", 0.025), ("p975", 0.975))  # the per-run percentile band of the cosines: its 2.5 % and 97.5 % points


def summarize_conflict(df: pd.DataFrame, *, skip: float = 0.0) -> pd.DataFrame:
    """Per run (and weights), over its checkpoints (``latest_per_step``) with step > skip·its last step, the
    numbers behind Fig. 2a:

    checkpoints, first/last step; mean, min and max of cos_tfm_tcc and cos_fmb_tcc;
    frac_tfm_tcc_neg (share with cos_tfm_tcc < 0), frac_tfm_tcc_below_-0.4 (share below −0.4, the
    paper's "typically below −0.4"), frac_fmb_above_tfm (share with cos_fmb_tcc > cos_tfm_tcc), the
    points each share counts (``SHARE_COUNTS``: checkpoints where the compared values are present), and the
    2.5 % and 97.5 % points of each cosine over the run's points (``p025_cos_tfm_tcc``, ``p975_…``: ``BAND``).
    ``skip`` = 0.1 leaves out the first tenth of training, where every curve starts from initialisation.
    """
    keys = ["run", "label"] + (["weights"] if "weights" in df.columns else [])
    out = []
    for key, g in latest_per_step(df).groupby(keys, sort=False, dropna=False):
        g = g[g["step"] > skip * g["step"].max()] if skip > 0 else g
        a = g.get("cos_tfm_tcc", pd.Series(np.nan, index=g.index)).astype(float)
        b = g.get("cos_fmb_tcc", pd.Series(np.nan, index=g.index)).astype(float)
        both = a.notna() & b.notna()
        out.append({**dict(zip(keys, key)), "checkpoints": len(g), "first_step": g["step"].min(),
                    "last_step": g["step"].max(),
                    "mean_cos_tfm_tcc": a.mean(), "mean_cos_fmb_tcc": b.mean(),
                    "frac_tfm_tcc_neg": (a.dropna() < 0).mean(), "frac_tfm_tcc_below_-0.4": (a.dropna() < -0.4).mean(),
                    "frac_fmb_above_tfm": (b[both] > a[both]).mean(),
                    "points_tfm_tcc": int(a.notna().sum()), "points_both": int(both.sum()),
                    "min_cos_tfm_tcc": a.min(), "max_cos_tfm_tcc": a.max(),
                    "min_cos_fmb_tcc": b.min(), "max_cos_fmb_tcc": b.max(),
                    **{f"{q}_cos_{c}": v.quantile(f) if v.notna().any() else np.nan
                       for c, v in (("tfm_tcc", a), ("fmb_tcc", b)) for q, f in BAND}})
    return pd.DataFrame(out)


def markdown_table(df: pd.DataFrame, *, floatfmt: str = ".3f", index: bool = False) -> str:
    """A GitHub markdown table of ``df`` (no ``tabulate`` needed); NaN/None print empty, ``|`` is escaped."""
    table = df.reset_index() if index else df

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if isinstance(v, (float, np.floating)):
            return format(float(v), floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = [cell(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
