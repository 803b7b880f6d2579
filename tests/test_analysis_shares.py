"""Shares of probe points: Wilson's interval, and the conflict table that pools a variant's points under it."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.summary import wilson_interval
from analysis.tables import conflict_by_variant, interval_table


def test_wilson_interval_matches_the_closed_form_values():
    # 8 of 10 at 95 %: the textbook interval (0.4902, 0.9433); 0 and 10 of 10 keep a width of 0.2775
    assert wilson_interval(8, 10) == pytest.approx((0.49016, 0.94332), abs=5e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=5e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=5e-5)
    lo90, hi90 = wilson_interval(8, 10, level=0.90)
    lo95, hi95 = wilson_interval(8, 10)
    assert lo95 < lo90 < 0.8 < hi90 < hi95, "a lower level narrows the interval around p̂"


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 200])
def test_wilson_interval_stays_in_the_unit_interval_and_holds_the_share(n):
    for k in range(n + 1):
        lo, hi = wilson_interval(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
        assert hi - lo > 0


def test_wilson_interval_refuses_counts_outside_zero_to_n():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes must lie in"):
        wilson_interval(11, 10)


def probe_frame() -> pd.DataFrame:
    """Two seeds of one variant, ten online probe points each at steps 10..100.

    Seed 0: cos(TFM, TCC) = −0.9 everywhere but −0.1 at step 10 and 50; seed 1: −0.9 but −0.1 at step 10.
    cos(FM′, TCC) = 0 everywhere, so FM′ is above TFM exactly where cos(TFM, TCC) < 0.
    """
    rows = []
    for seed, high in ((0, {10, 50}), (1, {10})):
        for step in range(10, 101, 10):
            rows.append({"run": f"mf-s{seed}-abc", "label": "mf", "variant": "mf", "step": step,
                         "cos_tfm_tcc": -0.1 if step in high else -0.9, "cos_fmb_tcc": 0.0})
    return pd.DataFrame(rows)


def test_shares_pool_the_points_of_every_seed_under_wilson():
    table = conflict_by_variant(probe_frame()).set_index("variant")
    row = table.loc["mf"]
    # 8 + 9 = 17 of 20 points below −0.4, pooled over the seeds (not a per-seed share with a t-interval)
    assert row["frac_tfm_tcc_below_-0.4_n"] == 20 and row["frac_tfm_tcc_below_-0.4_mean"] == pytest.approx(17 / 20)
    assert (row["frac_tfm_tcc_below_-0.4_lo"], row["frac_tfm_tcc_below_-0.4_hi"]) == pytest.approx(wilson_interval(17, 20))
    assert row["frac_fmb_above_tfm_mean"] == 1.0 and row["frac_fmb_above_tfm_hi"] == 1.0
    assert row["frac_fmb_above_tfm_lo"] == pytest.approx(wilson_interval(20, 20)[0]) and row["frac_fmb_above_tfm_lo"] < 1
    # the mean cosine stays a per-seed mean with a t-interval over the two seeds (n = runs)
    assert row["mean_cos_tfm_tcc_n"] == 2
    assert row["mean_cos_tfm_tcc_mean"] == pytest.approx(((-0.9 * 8 - 0.2) / 10 + (-0.9 * 9 - 0.1) / 10) / 2)


def test_skip_leaves_out_the_first_tenth_of_each_run():
    row = conflict_by_variant(probe_frame(), skip=0.1).set_index("variant").loc["mf"]
    # step 10 (= 0.1 · 100) goes: 18 points, of which only seed 0's step 50 is above −0.4
    assert row["frac_tfm_tcc_below_-0.4_n"] == 18 and row["frac_tfm_tcc_below_-0.4_mean"] == pytest.approx(17 / 18)


def test_share_cells_read_inside_the_unit_interval():
    cell = interval_table(conflict_by_variant(probe_frame())).set_index("variant").loc["mf", "frac_tfm_tcc_below_-0.4"]
    lo, hi = wilson_interval(17, 20)
    assert cell == f"0.85 [{lo:.4g}, {hi:.4g}]"
