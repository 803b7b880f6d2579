"""analysis.family: the third gradient part per run and per variant, from a probe frame written here."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.family import third_parts, third_parts_by_variant


def frame() -> pd.DataFrame:
    rows = []
    for seed, scale in ((0, 1.0), (1, 2.0)):
        for step in (10, 50, 100):
            rows.append({"run": f"imf-s{seed}-abc", "variant": "imf", "step": step, "cos_tfm_aux": 0.1 * step / 50,
                         "cos_tcc_aux": -0.2, "gradnorm_aux": scale * step, "gradnorm_tfm": 2.0 * step})
    rows.append({"run": "meanflow-s0-def", "variant": "meanflow", "step": 100})  # no third part: no row
    return pd.DataFrame(rows)


def test_third_parts_averages_after_the_skip_and_pools_seeds():
    per_run = third_parts(frame(), skip=0.2)  # drops step 10 (≤ 0.2·100)
    assert list(per_run["run"]) == ["imf-s0-abc", "imf-s1-abc"] and set(per_run["part"]) == {"aux"}
    assert per_run["points"].tolist() == [2, 2]
    assert per_run["cos_tfm_x"].tolist() == pytest.approx([0.15, 0.15])
    assert per_run["norm_x_over_tfm"].tolist() == pytest.approx([0.5, 1.0])
    table = third_parts_by_variant(frame(), skip=0.2).set_index("variant")
    assert table.loc["imf (aux)", "n"] == 2
    assert table.loc["imf (aux)", "norm_x_over_tfm_mean"] == pytest.approx(0.75)
    assert table.loc["imf (aux)", "cos_tcc_x_mean"] == pytest.approx(-0.2)
    assert table.loc["imf (aux)", "norm_x_over_tfm_lo"] < 0.75 < table.loc["imf (aux)", "norm_x_over_tfm_hi"]
    assert third_parts_by_variant(frame()[frame()["variant"] == "meanflow"]).empty


def test_conflict_panels_draw_alpha_on_a_twin_axis_only_where_it_varies():
    from analysis.family import fig_conflict_panels

    steps = [50, 100, 150]
    rows = [{"run": name, "label": name, "step": s, "alpha": a, "cos_tfm_tcc": -0.5, "cos_fmb_tcc": 0.1}
            for name, alphas in (("alphaflow", (1.0, 0.5, 0.0)), ("meanflow", (0.0, 0.0, 0.0)))
            for s, a in zip(steps, alphas)]
    fig = fig_conflict_panels(pd.DataFrame(rows))
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"alphaflow", "meanflow"}
    twins = [ax for ax in fig.axes if not ax.get_title() and ax.get_ylabel() == "α"]
    assert len(twins) == 1, "one α axis: the α-Flow panel's (MeanFlow's α is constant)"
    (alpha_line,) = twins[0].lines
    assert alpha_line.get_ydata().tolist() == [1.0, 0.5, 0.0]
    assert twins[0].bbox.bounds == panels["alphaflow"].bbox.bounds, "drawn over the α-Flow panel"
    assert any(line.get_ydata()[0] == -0.4 for line in panels["meanflow"].lines), "the paper's −0.4 line"
