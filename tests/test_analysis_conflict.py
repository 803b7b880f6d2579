"""analysis.conflict_ticks and the report's conflict-intervention tables, on run folders written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from alphaflow.config import config_hash, load_config, to_dict  # noqa: E402
from analysis import load_runs, write_report  # noqa: E402
from analysis.conflict_ticks import conflict_ticks, fig_conflict, tick_means, ticks_by_variant  # noqa: E402
from analysis.labels import run_label  # noqa: E402
from analysis.summary import t_interval  # noqa: E402

# variant → (overrides, per seed the conflict_cos of its four ticks; None: a run with mode none logs no ticks)
RUNS = {"meanflow-pcgrad": (["objective.name=meanflow", "conflict.mode=pcgrad"],
                            {0: [-0.5, -0.75, -0.25, -0.5], 1: [-0.25, -0.5, -0.5, -0.75]}),
        "meanflow-none": (["objective.name=meanflow"], {0: None, 1: None})}


def write_run(root: Path, variant: str, overrides: list[str], seed: int, cos: list[float] | None) -> str:
    cfg = load_config(None, overrides + [f"seed={seed}", "train.steps=200"])
    name = f"{variant}-s{seed}-{config_hash(cfg)}"
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    (run / "run.json").write_text(json.dumps({"sweep": "t", "variant": variant, "seed": seed}))
    rows = []
    for k in range(4):
        row = {"step": 50 * (k + 1), "loss": 1.0, "probe_cos_tfm_tcc": -0.5 - 0.125 * k, "probe_ratio_tfm_tcc": 0.25}
        if cos is not None:
            row.update(conflict_cos=cos[k], conflict_ratio=0.5, conflict_changed=float(k % 2), conflict_change=0.125)
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "DONE").write_text(json.dumps({"step": 200}) + "\n")
    return name


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for variant, (overrides, seeds) in RUNS.items():
        for seed, cos in seeds.items():
            write_run(root, variant, overrides, seed, cos)
    return root


def test_ticks_are_the_rows_of_runs_with_a_mode(sweep):
    metrics = load_runs(sweep, cache=False).metrics
    ticks = conflict_ticks(metrics)
    assert set(ticks["variant"]) == {"meanflow-pcgrad"} and len(ticks) == 8
    assert conflict_ticks(metrics.drop(columns=[c for c in metrics if c.startswith("conflict_")])).empty


def test_tick_means_per_run_and_the_interval_over_seeds(sweep):
    metrics = load_runs(sweep, cache=False).metrics
    per_run = tick_means(metrics).set_index("run")
    assert sorted(per_run["mean_conflict_cos"]) == [-0.5, -0.5]
    assert (per_run["mean_conflict_changed"] == 0.5).all() and (per_run["ticks"] == 4).all()
    later = tick_means(metrics, skip=0.5).set_index("variant")
    # ticks at steps 100..200 (>= half of 200): s0 → (-0.75 - 0.25 - 0.5)/3 = -0.5, s1 → (-0.5 - 0.5 - 0.75)/3
    assert sorted(later["mean_conflict_cos"]) == pytest.approx(sorted([-0.5, -1.75 / 3]))
    table = ticks_by_variant(metrics, skip=0.5).set_index("variant")
    n, mean, _, lo, hi = t_interval([-0.5, -1.75 / 3])
    assert lo < -1 < mean < hi < 0, "two seeds: t₀.₉₇₅,₁ = 12.7 makes the plain t-interval leave [−1, 1]"
    row = table.loc["meanflow-pcgrad"]
    assert row["mean_conflict_cos_n"] == n == 2 and row["mean_conflict_cos_mean"] == pytest.approx(mean)
    # clipped to the cosine's range: the true value lies in [−1, 1], so the coverage is the t-interval's
    assert (row["mean_conflict_cos_lo"], row["mean_conflict_cos_hi"]) == pytest.approx((-1.0, hi))
    assert t_interval([-0.5, -1.75 / 3], bounds=(-1.0, 1.0))[3:] == pytest.approx((-1.0, hi))
    assert ticks_by_variant(metrics[metrics["variant"] == "meanflow-none"]).empty


def test_labels_name_the_conflict_mode():
    cfg = {"objective": {"name": "meanflow", "ratio_fm": 0.75}, "conflict": {"mode": "pcgrad"}}
    assert run_label(cfg) == "meanflow, r=t 75%, pcgrad"
    assert run_label({**cfg, "conflict": {"mode": "none"}}) == "meanflow, r=t 75%"
    assert run_label({"objective": {"name": "fm"}}) == "fm, r=t default", "a config without the section"


def test_fig_conflict_draws_one_pooled_curve_per_variant(sweep):
    fig = fig_conflict(load_runs(sweep, cache=False))
    probe_cos, probe_ratio, changed, tick_cos, tick_ratio, change = fig.axes[:6]
    # the mean line per variant (seeds pooled), plus the reference lines at 0 and -0.4 on the cosine panels
    assert len([ln for ln in probe_cos.lines if len(ln.get_xdata()) == 4]) == 2
    assert len([ln for ln in tick_cos.lines if len(ln.get_xdata()) == 4]) == 1, "the none runs log no ticks"
    line = next(ln for ln in tick_cos.lines if len(ln.get_xdata()) == 4)
    assert list(line.get_ydata()) == [-0.375, -0.625, -0.375, -0.625], "mean over the two seeds per step"
    assert len(probe_cos.collections) == 2, "one seed-range band per variant"
    assert list(next(ln for ln in changed.lines if len(ln.get_xdata()) == 4).get_ydata()) == [0, 1, 0, 1]
    assert list(next(ln for ln in tick_ratio.lines if len(ln.get_xdata()) == 4).get_ydata()) == [0.5] * 4


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_the_report_writes_the_tick_table_and_figure(sweep):
    out = write_report(sweep)
    names = {p.name for p in out.iterdir()}
    assert {"conflict_ticks.csv", "conflict.png"} <= names
    ticks = pd.read_csv(out / "conflict_ticks.csv").set_index("variant")
    assert list(ticks.index) == ["meanflow-pcgrad"] and ticks.loc["meanflow-pcgrad", "mean_conflict_cos_mean"] == -0.5
    conflict = pd.read_csv(out / "conflict.csv").set_index("variant")
    # the online probes: per run the mean of -0.5, -0.625, -0.75, -0.875 → -0.6875 in every run
    assert conflict.loc["meanflow-none", "mean_cos_tfm_tcc_mean"] == -0.6875
    assert math.isclose(conflict.loc["meanflow-pcgrad", "frac_tfm_tcc_below_-0.4_mean"], 1.0)
    head = (out / "headline.md").read_text()
    assert "Conflict interventions during training" in head and "meanflow-pcgrad" in head
    assert (out / "conflict.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
