"""Every interval the report writes lies inside its quantity's range, on a sweep with 1, 2 and 3 seeds.

The runs are written here with values spread across their whole range (cosines from −0.95 to 0.95 between
seeds, squared errors and distances near 0 with one far seed), where a plain Student-t interval over 2 or 3
seeds leaves the range (t₀.₉₇₅ is 12.7 at n = 2, 4.3 at n = 3). The ranges below are the test's own, by the
meaning of each quantity, not read from the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from alphaflow.config import config_hash, load_config, to_dict  # noqa: E402
from analysis import write_report  # noqa: E402

SEEDS = {"one": [0], "two": [0, 1], "three": [0, 1, 2]}
COS = [-0.95, 0.95, -0.9]           # per seed: the level of every cosine the run logs
SMALL = [0.01, 3.0, 0.02]           # per seed: squared errors, norms, distances (one seed far from the others)


def quantity_range(column: str) -> tuple[float, float]:
    """The range of the quantity behind an interval column, from what the quantity is."""
    name = column.removesuffix("_lo").removesuffix("_hi")
    if "cos" in name:
        return -1.0, 1.0
    if name.startswith(("frac_", "mean_conflict_changed", "mean_conflict_ratio", "ratio")):
        return 0.0, 1.0
    if "loss_tcc" in name:  # 2⟨ṽ − u_tgt, u_θ⟩: either sign
        return -math.inf, math.inf
    return 0.0, math.inf  # squared errors, Fréchet distances, norms, relative changes, the weighted loss


def write_run(root: Path, variant: str, seed: int) -> None:
    cfg = load_config(None, ["objective.name=meanflow", "conflict.mode=pcgrad", f"seed={seed}", "train.steps=400",
                             f"optim.lr={1e-3 if variant != 'two' else 2e-3}", f"train.log_every={50 + len(variant)}"])
    run = root / f"{variant}-s{seed}-{config_hash(cfg)}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    (run / "run.json").write_text(json.dumps({"sweep": "ranges", "variant": variant, "seed": seed}))
    c, small = COS[seed], SMALL[seed]
    rows, probes = [], []
    for k in range(1, 9):
        wobble = 0.04 * (-1) ** k
        rows.append({"step": 50 * k, "loss": small, "loss_mse": small, "loss_tfm": small, "loss_tcc": -small + wobble,
                     "probe_cos_tfm_tcc": c + wobble, "probe_cos_fmb_tcc": -c - wobble, "probe_ratio_tfm_tcc": 0.02,
                     "probe_loss_tfm": small, "probe_cos_tfm_d": c, "probe_cos_tcc_d": -c, "probe_gradnorm_d": small,
                     "probe_gradnorm_tfm": 1.0, "conflict_cos": c + wobble, "conflict_ratio": 0.98 - small / 10,
                     "conflict_changed": float(seed == 1), "conflict_change": small, "conflict_norm_tfm": small,
                     "conflict_norm_tcc": small})
        probes.append({"step": 50 * k, "weights": "raw", "batches": 2, "batch_size": 8, "seed": 0,
                       "cos_tfm_tcc": c + wobble, "cos_fmb_tcc": -c, "loss_tfm": small})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probes))
    evals = [{"step": 400, "nfe": n, "metric": "fd_digits", "value": small * n, "weights": "ema", "sampler": "ode"}
             for n in (1, 2)]
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    (run / "DONE").write_text(json.dumps({"step": 400}) + "\n")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ranges") / "sweep"
    for variant, seeds in SEEDS.items():
        for seed in seeds:
            write_run(root, variant, seed)
    return write_report(root)


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_every_interval_of_every_csv_lies_in_its_range(report):
    checked = 0
    for path in sorted(report.glob("*.csv")):
        table = pd.read_csv(path)
        for lo_col in [c for c in table.columns if c.endswith("_lo") and f"{c[:-3]}_hi" in table.columns]:
            hi_col = f"{lo_col[:-3]}_hi"
            low, high = quantity_range(lo_col)
            both = table[[lo_col, hi_col]].dropna()
            assert (both[lo_col] >= low).all() and (both[hi_col] <= high).all(), (path.name, lo_col, both)
            assert (both[lo_col] <= both[hi_col]).all(), (path.name, lo_col)
            checked += len(both)
    assert checked >= 40, "the sweep must exercise many intervals"


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_one_seed_gets_no_t_interval_and_the_clip_was_needed(report):
    variants = pd.read_csv(report / "variants.csv").set_index("variant")
    assert variants.loc["one", "final_loss_mse_n"] == 1 and pd.isna(variants.loc["one", "final_loss_mse_lo"])
    assert variants.loc["two", "final_loss_mse_lo"] == 0.0, "0.01 and 3.0: the plain t-interval goes below 0"
    conflict = pd.read_csv(report / "conflict.csv").set_index("variant")
    assert conflict.loc["two", "mean_cos_tfm_tcc_lo"] == -1.0 and conflict.loc["two", "mean_cos_tfm_tcc_hi"] == 1.0
    assert conflict.loc["one", "mean_cos_tfm_tcc_interval"] == "band", "one run: its percentile band of points"
    assert -0.99 <= conflict.loc["one", "mean_cos_tfm_tcc_lo"] < -0.95 < conflict.loc["one", "mean_cos_tfm_tcc_hi"]
    assert conflict.loc["three", "frac_tfm_tcc_below_-0.4_interval"] == "wilson"
    head = (report / "headline.md").read_text()
    assert "(band " in head and "-1.8" not in head



def test_paired_differences_lie_in_the_range_of_a_difference():
    """A difference of two cosines lies in [−2, 2], of two shares in [−1, 1]: the t-interval of seeds that swing
    from −0.9 to 0.9 leaves [−2, 2] and is clipped there; the bootstrap's never leaves it; a distance is not clipped."""
    from analysis.compare import difference_range, paired

    base, other = pd.Series([-0.9, 0.9, -0.9]), pd.Series([0.9, -0.9, 0.9])
    out = paired(base, other, "mean_cos_tfm_tcc")
    assert out["diff_lo"] == -2.0 and out["diff_hi"] == 2.0 and difference_range("mean_cos_tfm_tcc") == (-2.0, 2.0)
    assert -2.0 <= out["boot_lo"] <= out["boot_hi"] <= 2.0
    share = paired(base.abs() / 2, other.abs() * 0 + 0.9, "frac_tfm_tcc_below_-0.4")
    assert -1.0 <= share["diff_lo"] <= share["diff_hi"] <= 1.0
    far = paired(base * 100, other * 100, "fd_digits 1-NFE")
    assert far["diff_lo"] < -200 and far["diff_hi"] > 200, "a distance's difference is unbounded"
