"""Load gradient-probe records from a sweep root into tidy frames, and the conflict table
(docs/probes.md; arXiv 2510.20771 §3.2, Appendix E).

A sweep root holds run folders (``alphaflow.runfolder``); each may hold ``probes.jsonl``, one JSON
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

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphaflow.runfolder import CONFIG, PROBES, RunFolder

from .runfiles import read_jsonl, run_folders

RUN_COLUMNS = ["run", "objective", "ratio_fm", "seed", "label"]
SETTING_COLUMNS = ["step", "weights", "batches", "batch_size", "probe_seed"]
PAIRS = ["tfm_fmb", "tfm_tcc", "tfm_mf", "fmb_tcc", "fmb_mf", "tcc_mf"]
QUANTITIES = ([f"loss_{c}" for c in ("tfm", "tcc", "fmb", "mf")]
              + [f"gradnorm_{c}" for c in ("tfm", "tcc", "fmb", "mf")] + [f"cos_{p}" for p in PAIRS])


# ----------------------------------------------------------------------------- run identity

def ratio_value(ratio: Any) -> float:
    """The constant r = t share of a config's ``objective.ratio_fm``; NaN for null or a non-constant schedule."""
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        return float(ratio)
    if isinstance(ratio, dict):
        if ratio.get("kind", "constant") == "constant":  # a constant schedule is its ``start``
            return float(ratio.get("start", math.nan))
        if ratio.get("start") is not None and ratio.get("start") == ratio.get("end"):
            return float(ratio["start"])
    return math.nan


def _pct(v: Any) -> str:
    return f"{float(v) * 100:g}%"


def run_label(cfg: dict) -> str:
    """A human name from objective + ratio_fm: "meanflow, r=t 75%", "alphaflow, r=t linear 100%→0%".

    A null ratio_fm means the objective's own default (see ``alphaflow.objectives``): "meanflow, r=t default".
    """
    obj = cfg.get("objective") or {}
    name = str(obj.get("name", "?"))
    ratio = obj.get("ratio_fm")
    value = ratio_value(ratio)
    if not math.isnan(value):
        return f"{name}, r=t {_pct(value)}"
    if isinstance(ratio, dict):
        start, end = _pct(ratio.get("start", math.nan)), _pct(ratio.get("end", math.nan))
        return f"{name}, r=t {ratio.get('kind', '?')} {start}→{end}"
    return f"{name}, r=t default"


def scan_runs(root: str | Path) -> tuple[list[tuple[RunFolder, dict]], list[str]]:
    """(run folder, config) for each run under ``root`` (or ``root`` itself if it is a run), and problems.

    The folders are those of ``runfiles.run_folders``; one without a readable config is skipped, with a problem.
    """
    folders, problems = run_folders(root)
    runs = []
    for path in folders:
        try:
            cfg = RunFolder(path).read_config()
        except (json.JSONDecodeError, OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path.name}: unreadable {CONFIG} ({type(exc).__name__}); skipped")
            continue
        if not isinstance(cfg, dict):
            problems.append(f"{path.name}: no {CONFIG}; skipped")
            continue
        runs.append((RunFolder(path), cfg))
    return runs, problems


def _identity(runs: list[tuple[RunFolder, dict]]) -> pd.DataFrame:
    """One row per run: RUN_COLUMNS; labels made unique by seed, then by run name, where they collide."""
    rows = [{"run": rf.root.name, "objective": (cfg.get("objective") or {}).get("name"),
             "ratio_fm": ratio_value((cfg.get("objective") or {}).get("ratio_fm")),
             "seed": cfg.get("seed"), "label": run_label(cfg)} for rf, cfg in runs]
    ident = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for extra in ("seed", "run"):
        dup = ident["label"].duplicated(keep=False)
        ident.loc[dup, "label"] = ident.loc[dup, "label"] + f", {extra} " + ident.loc[dup, extra].astype(str)
    return ident


# ----------------------------------------------------------------------------- loaders

def load_probes(root: str | Path, *, weights: str | None = None) -> pd.DataFrame:
    """All probe rows under a sweep root: RUN_COLUMNS, then the record's keys, one row per line.

    The record's own ``seed`` (the probe's sampling seed) is renamed ``probe_seed``; ``seed`` is the
    run's training seed. ``weights`` ("raw" | "ema") keeps only rows probed on those weights.
    Rows are sorted by (label, weights, step), keeping file order within ties.
    ``df.attrs["problems"]`` and ``df.attrs["runs_without_probes"]`` are lists of strings.
    """
    runs, problems = scan_runs(root)
    ident = _identity(runs).set_index("run")
    frames, without = [], []
    for rf, _ in runs:
        rows, bad = read_jsonl(rf.root / PROBES)
        if bad:
            problems.append(f"{rf.root.name}: skipped {bad} unreadable line(s) in {PROBES}")
        if weights is not None:
            rows = [r for r in rows if r.get("weights") == weights]
        if not rows:
            without.append(rf.root.name)
            continue
        frame = pd.DataFrame(rows).rename(columns={"seed": "probe_seed"})
        frame.insert(0, "_order", range(len(frame)))
        for col in reversed(RUN_COLUMNS):
            frame.insert(0, col, ident.loc[rf.root.name, col] if col != "run" else rf.root.name)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RUN_COLUMNS + SETTING_COLUMNS)
    sort = [c for c in ("label", "weights", "step", "_order") if c in df.columns]
    df = df.sort_values(sort, kind="stable").drop(columns="_order", errors="ignore").reset_index(drop=True)
    df.attrs["problems"], df.attrs["runs_without_probes"] = problems, without
    return df


def load_online_probes(root: str | Path, *, prefix: str = "probe_") -> pd.DataFrame:
    """Probe values the trainer logged in ``metrics.jsonl`` (``probe_x`` → column ``x``; no percentiles).

    One row per metrics row that holds any ``probe_*`` key; RUN_COLUMNS + ``step`` + the probe columns.
    The same ``attrs`` as ``load_probes``. The figures accept this frame and draw no bands.
    """
    runs, problems = scan_runs(root)
    ident = _identity(runs).set_index("run")
    frames, without = [], []
    for rf, _ in runs:
        rows = [{"step": r["step"], **{k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)}}
                for r in rf.read_metrics() if any(k.startswith(prefix) for k in r)]
        if not rows:
            without.append(rf.root.name)
            continue
        frame = pd.DataFrame(rows)
        for col in reversed(RUN_COLUMNS):
            frame.insert(0, col, ident.loc[rf.root.name, col] if col != "run" else rf.root.name)
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RUN_COLUMNS + ["step"])
    df = df.sort_values(["label", "step"], kind="stable").reset_index(drop=True)
    df.attrs["problems"], df.attrs["runs_without_probes"] = problems, without
    return df


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

def summarize_conflict(df: pd.DataFrame) -> pd.DataFrame:
    """Per run (and weights), over its checkpoints (``latest_per_step``), the numbers behind Fig. 2a:

    checkpoints, first/last step; mean, min and max of cos_tfm_tcc and cos_fmb_tcc;
    frac_tfm_tcc_neg (share with cos_tfm_tcc < 0), frac_tfm_tcc_below_-0.4 (share below −0.4, the
    paper's "typically below −0.4"), frac_fmb_above_tfm (share with cos_fmb_tcc > cos_tfm_tcc).
    Shares count checkpoints where the compared values are present.
    """
    keys = ["run", "label"] + (["weights"] if "weights" in df.columns else [])
    out = []
    for key, g in latest_per_step(df).groupby(keys, sort=False, dropna=False):
        a = g.get("cos_tfm_tcc", pd.Series(np.nan, index=g.index)).astype(float)
        b = g.get("cos_fmb_tcc", pd.Series(np.nan, index=g.index)).astype(float)
        both = a.notna() & b.notna()
        out.append({**dict(zip(keys, key)), "checkpoints": len(g), "first_step": g["step"].min(),
                    "last_step": g["step"].max(),
                    "mean_cos_tfm_tcc": a.mean(), "mean_cos_fmb_tcc": b.mean(),
                    "frac_tfm_tcc_neg": (a.dropna() < 0).mean(), "frac_tfm_tcc_below_-0.4": (a.dropna() < -0.4).mean(),
                    "frac_fmb_above_tfm": (b[both] > a[both]).mean(),
                    "min_cos_tfm_tcc": a.min(), "max_cos_tfm_tcc": a.max(),
                    "min_cos_fmb_tcc": b.min(), "max_cos_fmb_tcc": b.max()})
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
