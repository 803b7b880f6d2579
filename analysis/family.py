"""The third part of a loss's gradient, per variant: how the objectives of the MeanFlow family that have one
(Modular MeanFlow's ``d``, Decoupled MeanFlow's ``lv``, improved MeanFlow's ``aux``; docs/objectives.md#the-meanflow-family)
pull against L_TFM and L_TCC.

    table = third_parts_by_variant(online_probes(load_runs(root)))   # per variant, 95 % t-intervals over seeds
    print(markdown_table(interval_table(table)))

Per run, over its probe points after the first ``skip`` share of training: the mean cos(∇L_TFM, ∇X),
cos(∇L_TCC, ∇X) and ‖∇X‖ / ‖∇L_TFM‖ for the third part X the run's probes report; then pooled per variant.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .labels import variant_column
from .summary import summarize_variants

THIRD_PARTS = ("d", "lv", "aux")  # the probes' names for them (alphaflow.instrument.probes.EXTRA_TERMS)
VALUES = ("cos_tfm_x", "cos_tcc_x", "norm_x_over_tfm")


def third_parts(probes: pd.DataFrame, parts: Sequence[str] = THIRD_PARTS, *, skip: float = 0.1) -> pd.DataFrame:
    """One row per (run, part) the probes report: ``run``, ``variant``, ``part``, ``points`` and ``VALUES``
    (means over the run's probe points with step > skip·its last step). ``probes``: ``online_probes`` or
    ``load_probes`` columns (``cos_tfm_d``, ``gradnorm_d``, ...); empty in, empty out."""
    rows = []
    if probes.empty or "run" not in probes.columns:
        return pd.DataFrame(columns=["run", "variant", "part", "points", *VALUES])
    variants = dict(zip(probes["run"], variant_column(probes)))
    for run, g in probes.groupby("run", sort=True):
        g = g[g["step"] > skip * g["step"].max()]
        for x in parts:
            need = [f"cos_tfm_{x}", f"cos_tcc_{x}", f"gradnorm_{x}", "gradnorm_tfm"]
            if not all(c in g.columns for c in need):
                continue
            h = g.dropna(subset=need)
            if h.empty:
                continue
            rows.append({"run": run, "variant": variants[run], "part": x, "points": len(h),
                         "cos_tfm_x": h[f"cos_tfm_{x}"].mean(), "cos_tcc_x": h[f"cos_tcc_{x}"].mean(),
                         "norm_x_over_tfm": (h[f"gradnorm_{x}"] / h["gradnorm_tfm"]).mean()})
    return pd.DataFrame(rows, columns=["run", "variant", "part", "points", *VALUES])


def third_parts_by_variant(probes: pd.DataFrame, *, skip: float = 0.1, level: float = 0.95) -> pd.DataFrame:
    """``third_parts`` pooled per "variant (part)": ``n`` runs and ``<value>_n/_mean/_sd/_lo/_hi``."""
    per_run = third_parts(probes, skip=skip)
    if per_run.empty:
        return pd.DataFrame(columns=["variant", "n"])
    per_run = per_run.assign(variant=per_run["variant"] + " (" + per_run["part"] + ")")
    return summarize_variants(per_run, list(VALUES), level=level)
