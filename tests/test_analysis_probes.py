"""analysis.probe_frames / analysis.plots on run folders written here with known numbers (docs/probes.md)."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import (fig2a, fig2b, fig2c, fig6, load_online_probes, load_probes, markdown_table,  # noqa: E402
                      save_figures, summarize_conflict)
from analysis.labels import run_label  # noqa: E402
from analysis.probe_frames import QUANTITIES, latest_per_step  # noqa: E402

# (cos_tfm_tcc, cos_fmb_tcc) per raw checkpoint; the summary test works these out by hand.
COS = {"mf-r0": {1000: (-0.5, -0.1), 2000: (-0.25, -0.3), 3000: (0.1, 0.2)},
       "mf-r75": {1000: (-0.6, 0.0), 2000: (-0.45, 0.1)}}


def config(name, ratio, seed=0):
    return {"seed": seed, "objective": {"name": name, "ratio_fm": ratio}, "train": {"steps": 4000}}


def const(v):
    return {"kind": "constant", "start": v, "end": v, "k_start": 0.0, "k_end": 0.0, "unit": "step"}


def record(step, weights, k, cos_pair):
    """A probes.jsonl line: every quantity q with q, q_p05 = q − 0.1, q_p95 = q + 0.1 (k makes them distinct)."""
    row = {"step": step, "weights": weights, "batches": 4, "batch_size": 8, "seed": 123}
    for i, q in enumerate(QUANTITIES):
        row[q] = (i + 1) / 7 + k / 3
    row["cos_tfm_tcc"], row["cos_fmb_tcc"] = cos_pair
    for q in QUANTITIES:
        row[f"{q}_p05"], row[f"{q}_p95"] = row[q] - 0.1, row[q] + 0.1
    row["loss_loss"] = 1.5 + k
    row["part.blocks.0.cos_tfm_tcc"] = -0.125
    return row


def write_run(path, cfg=None, probes=(), torn=False, metrics=()):
    path.mkdir(parents=True)
    if cfg is not None:
        (path / "config.json").write_text(json.dumps(cfg))
    if probes:
        text = "".join(json.dumps(r) + "\n" for r in probes)
        (path / "probes.jsonl").write_text(text + ('{"step": 4000, "weights": "raw", "cos_t' if torn else ""))
    if metrics:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics) + '{"step": 9')


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    a = [record(s, "raw", s // 1000, c) for s, c in COS["mf-r0"].items()]
    a += [record(s, "ema", 10 + s // 1000, (0.5, 0.5)) for s in (1000, 2000)]
    write_run(root / "mf-r0", config("meanflow", const(0.0)), a, torn=True)
    b = [record(s, "raw", 20 + s // 1000, c) for s, c in COS["mf-r75"].items()]
    online = [{"step": 100, "loss": 1.0}, {"step": 200, "loss": 0.9, "probe_cos_tfm_tcc": -0.5, "probe_loss_tfm": 1.25},
              {"step": 400, "loss": 0.8, "probe_cos_tfm_tcc": -0.75, "probe_loss_tfm": 1.125}]
    write_run(root / "mf-r75", config("meanflow", const(0.75)), b, metrics=online)
    write_run(root / "af-default", config("alphaflow", None), metrics=[{"step": 1, "loss": 2.0}])
    write_run(root / "stray", None, [record(1000, "raw", 99, (0.0, 0.0))])
    return root


# ----------------------------------------------------------------------------- loading

def test_frame_rows_columns_and_labels(sweep):
    df = load_probes(sweep)
    assert len(df) == 3 + 2 + 2, "mf-r0: 3 raw + 2 ema rows (torn line skipped); mf-r75: 2 raw; none from stray"
    assert set(df["run"]) == {"mf-r0", "mf-r75"}
    labels = df.drop_duplicates("run").set_index("run")["label"].to_dict()
    assert labels == {"mf-r0": "meanflow, r=t 0%", "mf-r75": "meanflow, r=t 75%"}
    assert df.drop_duplicates("run").set_index("run")["ratio_fm"].to_dict() == {"mf-r0": 0.0, "mf-r75": 0.75}
    for col in ["run", "objective", "ratio_fm", "seed", "label", "step", "weights", "batches", "batch_size",
                "probe_seed", "loss_loss", "part.blocks.0.cos_tfm_tcc"]:
        assert col in df.columns, col
    for q in QUANTITIES:
        assert {q, f"{q}_p05", f"{q}_p95"} <= set(df.columns), q
    assert (df["objective"] == "meanflow").all() and (df["seed"] == 0).all() and (df["probe_seed"] == 123).all()
    assert 4000 not in set(df["step"]), "the torn last line must be skipped"


def test_numbers_round_trip_exactly(sweep):
    df = load_probes(sweep, weights="raw").set_index(["run", "step"])
    for run, k0 in (("mf-r0", 0), ("mf-r75", 20)):
        for step, cos in COS[run].items():
            want = record(step, "raw", k0 + step // 1000, cos)
            got = df.loc[(run, step)]
            for key in QUANTITIES + [f"{q}_p05" for q in QUANTITIES] + ["loss_loss"]:
                assert got[key] == want[key], (run, step, key)  # exact, not approximate


def test_weights_filter(sweep):
    raw, ema = load_probes(sweep, weights="raw"), load_probes(sweep, weights="ema")
    assert len(raw) == 5 and set(raw["weights"]) == {"raw"}
    assert len(ema) == 2 and set(ema["weights"]) == {"ema"} and set(ema["run"]) == {"mf-r0"}
    assert "mf-r75" in ema.attrs["runs_without_probes"]


def test_problems_are_reported_not_raised(sweep):
    df = load_probes(sweep)
    problems = df.attrs["problems"]
    assert any(p.startswith("stray:") and "config.json" in p for p in problems), problems
    assert any(p.startswith("mf-r0:") and "1 unreadable line" in p for p in problems), problems
    assert df.attrs["runs_without_probes"] == ["af-default"]
    empty = load_probes(sweep / "nothing-here")
    assert empty.empty and empty.attrs["problems"]


def test_labels_for_other_ratios_and_collisions(tmp_path):
    assert run_label(config("alphaflow", const(0.5))) == "alphaflow, r=t 50%"
    assert run_label(config("alphaflow", None)) == "alphaflow, r=t default"
    assert run_label(config("alphaflow", {"kind": "linear", "start": 1.0, "end": 0.25})) == \
        "alphaflow, r=t linear 100%→25%"
    for seed in (0, 1):
        write_run(tmp_path / f"s{seed}", config("meanflow", const(0.75), seed), [record(10, "raw", 0, (0.0, 0.0))])
    df = load_probes(tmp_path)
    assert sorted(df["label"]) == ["meanflow, r=t 75%, seed 0", "meanflow, r=t 75%, seed 1"]


def test_latest_per_step_keeps_the_last_record(sweep):
    with open(sweep / "mf-r75" / "probes.jsonl", "a") as f:
        f.write(json.dumps(record(1000, "raw", 50, (-0.9, 0.3))) + "\n")
    df = latest_per_step(load_probes(sweep, weights="raw"))
    row = df[(df["run"] == "mf-r75") & (df["step"] == 1000)]
    assert len(row) == 1 and row["cos_tfm_tcc"].item() == -0.9


def test_online_probes_from_metrics(sweep):
    df = load_online_probes(sweep)
    assert list(df["run"]) == ["mf-r75", "mf-r75"] and list(df["step"]) == [200, 400]
    assert list(df["cos_tfm_tcc"]) == [-0.5, -0.75] and list(df["loss_tfm"]) == [1.25, 1.125]
    assert "probe_cos_tfm_tcc" not in df.columns and "loss" not in df.columns
    assert set(df.attrs["runs_without_probes"]) == {"mf-r0", "af-default"}


# ----------------------------------------------------------------------------- the conflict table

def test_summarize_conflict_by_hand(sweep):
    s = summarize_conflict(load_probes(sweep, weights="raw")).set_index("run")
    a, b = s.loc["mf-r0"], s.loc["mf-r75"]
    assert a["checkpoints"] == 3 and (a["first_step"], a["last_step"]) == (1000, 3000)
    assert a["mean_cos_tfm_tcc"] == pytest.approx((-0.5 - 0.25 + 0.1) / 3)
    assert a["mean_cos_fmb_tcc"] == pytest.approx((-0.1 - 0.3 + 0.2) / 3)
    assert a["frac_tfm_tcc_neg"] == pytest.approx(2 / 3)
    assert a["frac_tfm_tcc_below_-0.4"] == pytest.approx(1 / 3)
    assert a["frac_fmb_above_tfm"] == pytest.approx(2 / 3)  # −0.1 > −0.5, −0.3 < −0.25, 0.2 > 0.1
    assert (a["min_cos_tfm_tcc"], a["max_cos_tfm_tcc"]) == (-0.5, 0.1)
    assert (a["min_cos_fmb_tcc"], a["max_cos_fmb_tcc"]) == (-0.3, 0.2)
    assert b["checkpoints"] == 2 and b["mean_cos_tfm_tcc"] == pytest.approx(-0.525)
    assert b["mean_cos_fmb_tcc"] == pytest.approx(0.05)
    assert b["frac_tfm_tcc_neg"] == b["frac_tfm_tcc_below_-0.4"] == b["frac_fmb_above_tfm"] == 1.0


def test_markdown_table():
    df = pd.DataFrame({"run": ["a|b", "c"], "x": [0.5, math.nan], "n": [3, 4]})
    assert markdown_table(df, floatfmt=".2f") == ("| run | x | n |\n|---|---|---|\n"
                                                  "| a\\|b | 0.50 | 3 |\n| c |  | 4 |\n")


# ----------------------------------------------------------------------------- figures

def test_fig2a_lines_and_bands(sweep):
    fig = fig2a(load_probes(sweep, weights="raw"))
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == 2 * 2 + 1, "2 lines per run + the zero line"
    assert len(ax.collections) == 2 * 2, "one 5–95 % band per line"
    assert ax.get_ylim() == (-1.0, 1.0) and ax.get_ylabel() == "cosine similarity"
    solid = [ln for ln in ax.lines if ln.get_linestyle() == "-" and len(ln.get_xdata()) == 3]
    assert np.array_equal(solid[0].get_ydata(), [-0.5, -0.25, 0.1]), "mean line of mf-r0's cos_tfm_tcc"
    # Mixed raw + EMA: one curve per (run, weights).
    assert len(fig2a(load_probes(sweep)).axes[0].lines) == 2 * 3 + 1


def test_a_figure_drawn_into_an_axes_of_a_subfigure_saves_the_whole_figure(sweep, tmp_path):
    top = Figure()
    left, _ = top.subfigures(1, 2)
    ax = left.add_subplot()
    fig = fig2a(load_probes(sweep, weights="raw"), ax=ax, path=tmp_path / "f.png")
    assert fig is top and (tmp_path / "f.png").stat().st_size > 0
    assert len(ax.lines) == 2 * 2 + 1


def test_fig2bc_and_fig6(sweep):
    df = load_probes(sweep, weights="raw")
    for make in (fig2b, fig2c):
        ax = make(df).axes[0]
        assert len(ax.lines) == 2 and len(ax.collections) == 2
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["meanflow, r=t 0%", "meanflow, r=t 75%"]
    fig = fig6(df)
    assert len(fig.axes) == 6 and len(fig.legends) == 1
    for ax in fig.axes:
        assert len(ax.lines) == 2 + 1 and len(ax.collections) == 2 and ax.get_ylim() == (-1.0, 1.0)
    assert fig.axes[0].get_title().startswith("(a)") and fig.axes[5].get_title().startswith("(f)")


def test_online_frame_plots_without_bands(sweep):
    ax = fig2a(load_online_probes(sweep)).axes[0]
    assert len(ax.lines) == 1 + 1 and len(ax.collections) == 0, "cos_tfm_tcc only, no percentiles"


def test_save_figures_writes_four_pngs(sweep, tmp_path):
    paths = save_figures(load_probes(sweep, weights="raw"), tmp_path / "figs")
    assert sorted(paths) == ["fig2a", "fig2b", "fig2c", "fig6"]
    for p in paths.values():
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_grad_conflict_report_writes_figures_and_table(sweep, tmp_path):
    from analysis.grad_conflict import report

    out = report(sweep, tmp_path / "report")
    assert {p.name for p in out.iterdir()} >= {"fig2a.png", "fig2b.png", "fig2c.png", "fig6.png", "conflict.md"}
    assert "mean_cos_tfm_tcc" in (out / "conflict.md").read_text()
