"""Who a run is, in one row: objective, constant r = t share, seed and a human label (unique within a sweep)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .records import variant_of

RUN_COLUMNS = ["run", "objective", "ratio_fm", "seed", "label"]


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


def run_label(cfg: dict[str, Any]) -> str:
    """A human name from objective + ratio_fm (+ the conflict mode when it is not none): "meanflow, r=t 75%",
    "alphaflow, r=t linear 100%→0%", "meanflow, r=t default, pcgrad".

    A null ratio_fm means the objective's own default (see ``alphaflow.objectives``): "meanflow, r=t default".
    """
    obj = cfg.get("objective") or {}
    name = str(obj.get("name", "?"))
    ratio = obj.get("ratio_fm")
    value = ratio_value(ratio)
    mode = (cfg.get("conflict") or {}).get("mode", "none")
    suffix = f", {mode}" if mode not in (None, "none") else ""
    if not math.isnan(value):
        return f"{name}, r=t {_pct(value)}{suffix}"
    if isinstance(ratio, dict):
        start, end = _pct(ratio.get("start", math.nan)), _pct(ratio.get("end", math.nan))
        return f"{name}, r=t {ratio.get('kind', '?')} {start}→{end}{suffix}"
    return f"{name}, r=t default{suffix}"


def run_identity(runs: list[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """One row per (run name, config dict): RUN_COLUMNS; labels made unique by seed, then by run name, where they collide."""
    rows = [{"run": name, "objective": (cfg.get("objective") or {}).get("name"),
             "ratio_fm": ratio_value((cfg.get("objective") or {}).get("ratio_fm")),
             "seed": cfg.get("seed"), "label": run_label(cfg)} for name, cfg in runs]
    ident = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for extra in ("seed", "run"):
        dup = ident["label"].duplicated(keep=False)
        ident.loc[dup, "label"] = ident.loc[dup, "label"] + f", {extra} " + ident.loc[dup, extra].astype(str)
    return ident


def variant_column(frame: pd.DataFrame) -> list[str]:
    """The variant of each row of ``frame``: its ``variant`` column (from each run's run.json, as ``load_runs``
    gives it) where present, else ``records.variant_of`` of the run name (folders written before run.json)."""
    if "variant" in frame.columns:
        return [v if isinstance(v, str) and v else variant_of(str(r)) for v, r in zip(frame["variant"], frame["run"])]
    return [variant_of(str(r)) for r in frame["run"]]
