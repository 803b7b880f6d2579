"""Paired comparisons with the baseline (analysis.compare) and quality curves (analysis.curves), by hand."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.compare import baseline_of, bootstrap_interval, paired_table, seeds_to_resolve  # noqa: E402
from analysis.curves import area_under_curve  # noqa: E402


def frame(values: dict[str, dict[int, float]], metric: str = "fd_digits 1-NFE") -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "seed": s, metric: x} for v, per in values.items() for s, x in per.items()])


def test_paired_statistics_by_hand():
    # differences on seeds 0, 1, 2: −1, −2, −3 (the variant is lower, i.e. better, on every seed)
    per_run = frame({"base": {0: 10.0, 1: 20.0, 2: 30.0}, "new": {0: 9.0, 1: 18.0, 2: 27.0}})
    row = paired_table(per_run, ["fd_digits 1-NFE"], baseline="base").iloc[0]
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert row["pairs"] == 3 and row["diff"] == -2.0 and row["diff_sd"] == pytest.approx(1.0)
    assert (row["diff_lo"], row["diff_hi"]) == pytest.approx((-2 - half, -2 + half))
    assert row["better"] == 1.0 and row["baseline_mean"] == 20.0 and row["variant_mean"] == 18.0
    # least n with t_{.975,n−1}·1/√n < 2: n = 3 gives 4.303/1.732 = 2.48, n = 4 gives 3.182/2 = 1.59
    assert row["seeds_to_resolve"] == 4.0 == seeds_to_resolve(-2.0, 1.0)
    assert row["boot_lo"] >= -3.0 and row["boot_hi"] <= -1.0 and row["boot_lo"] < -2 < row["boot_hi"]


def test_pairing_is_by_seed_and_beats_independent_intervals():
    # seeds share a large offset (initial weights, data order): independent intervals overlap, the paired one
    # excludes 0
    offsets = {0: 0.0, 1: 40.0, 2: 80.0, 3: 120.0}
    base = {s: 50 + o for s, o in offsets.items()}
    new = {s: 48 + o + 0.25 * (-1) ** s for s, o in offsets.items()}
    new[7] = 1000.0  # a seed the baseline lacks: not paired
    row = paired_table(frame({"base": base, "new": new}), ["fd_digits 1-NFE"], baseline="base").iloc[0]
    assert row["pairs"] == 4 and row["diff"] == pytest.approx(-2.0)
    assert row["diff_hi"] < 0, "paired: the variant is better"
    sd = np.std(list(base.values()), ddof=1)
    assert stats.t.ppf(0.975, 3) * sd / 2 > 2, "independent 95 % intervals of the two means would overlap"


def test_a_repeated_seed_is_refused_and_the_baseline_is_chosen():
    per_run = frame({"base": {0: 1.0}, "new": {0: 2.0}})
    per_run = pd.concat([per_run, per_run.iloc[[1]]])
    with pytest.raises(ValueError, match="seed repeated within a variant"):
        paired_table(per_run, ["fd_digits 1-NFE"], baseline="base")
    assert baseline_of(["b", "a", "c"]) == "a"
    assert baseline_of(["b", "a", "c"], recorded=["c", "c", "x"]) == "c"
    assert baseline_of(["b", "a"], recorded=["b"], asked="a") == "a"
    with pytest.raises(ValueError, match=r"--baseline 'z' is not a variant of this root; variants: \['a', 'b'\]"):
        baseline_of(["a", "b"], asked="z")


def test_seeds_to_resolve_and_bootstrap_edges():
    assert math.isnan(seeds_to_resolve(0.0, 1.0)) and seeds_to_resolve(1.0, 0.0) == 2.0
    assert math.isinf(seeds_to_resolve(1e-6, 1.0))
    assert all(math.isnan(v) for v in bootstrap_interval(np.array([1.0])))
    assert bootstrap_interval(np.array([1.0, 2.0, 4.0])) == bootstrap_interval(np.array([1.0, 2.0, 4.0]))


def test_area_under_curve_is_the_mean_height_by_the_trapezoid_rule():
    curves = pd.DataFrame({"run": "r", "variant": "v", "seed": 0, "step": [100.0, 200.0, 400.0],
                           "metric": "fd_digits", "nfe": 1, "value": [10.0, 6.0, 2.0]})
    auc = area_under_curve(curves).iloc[0]
    # (10 + 6)/2·100 + (6 + 2)/2·200 = 800 + 800 over 300 steps
    assert auc["auc_fd_digits 1-NFE"] == pytest.approx(1600 / 300)


def test_the_report_compares_with_the_recorded_baseline(tmp_path):
    from analysis import write_report

    root = tmp_path / "root"
    for variant, level in (("alpha", 5.0), ("mf", 6.0)):
        for seed in (0, 1, 2):
            run = root / f"{variant}-s{seed}"
            run.mkdir(parents=True)
            cfg = {"seed": seed, "objective": {"name": "meanflow" if variant == "mf" else "alphaflow"}}
            (run / "config.json").write_text(json.dumps(cfg))
            (run / "run.json").write_text(json.dumps({"sweep": "t", "variant": variant, "seed": seed,
                                                      "baseline": "mf"}))
            rows = [{"step": s, "loss": 1.0, "eval_fd_digits_nfe1": level * 1000 / s + seed} for s in (100, 200, 400)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (run / "eval.jsonl").write_text(json.dumps({"step": 400, "nfe": 1, "metric": "fd_digits",
                                                        "value": level + seed + 0.1 * seed ** 2}) + "\n")
    out = write_report(root)
    compare = pd.read_csv(out / "compare.csv").set_index("metric")
    assert set(compare["baseline"]) == {"mf"} and set(compare["variant"]) == {"alpha"}
    final = compare.loc["fd_digits 1-NFE"]
    assert final["pairs"] == 3 and final["diff"] == pytest.approx(-1.0) and final["better"] == 1.0
    assert compare.loc["auc_fd_digits 1-NFE", "diff"] < 0
    steps = pd.read_csv(out / "compare_steps.csv")
    assert list(steps["step"]) == [100, 200, 400] and (steps["pairs"] == 3).all()
    assert list(steps["diff"]) == pytest.approx([-10.0, -5.0, -2.5])
    assert "Versus the baseline **mf**" in (out / "headline.md").read_text()
    assert (out / "quality_curves.png").read_bytes()[:4] == b"\x89PNG"
    other = write_report(root, tmp_path / "other", baseline="alpha")
    assert set(pd.read_csv(other / "compare.csv")["baseline"]) == {"alpha"}


def test_the_steps_table_keeps_evenly_spaced_steps_and_the_last():
    from analysis.compare import steps_table

    rows = [{"step": s, "metric": "fd 1-NFE", "variant": "v", "baseline": "b", "pairs": 3, "diff": -1.0 * s,
             "diff_lo": -2.0 * s, "diff_hi": -0.5 * s, "better": 2 / 3} for s in range(100, 2100, 100)]
    table = steps_table(pd.DataFrame(rows), "fd 1-NFE", max_rows=5)
    assert list(table["step"]) == [100, 600, 1100, 1500, 2000]  # indices round(i·19/4): 0, 5, 10, 14, 19
    assert table.iloc[0]["v"] == "-100 [-200, -50], 2/3"
