"""analysis.loading / summary / report on the golden sweep (tests/golden/) and on folders written here."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import analysis.records as records  # noqa: E402
from analysis import load_probes, load_runs, summarize_runs, summarize_variants, write_report  # noqa: E402
from analysis.cache import CACHE_DIR  # noqa: E402
from analysis.records import variant_of  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
_spec = importlib.util.spec_from_file_location("golden_regenerate", GOLDEN / "regenerate.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

S0, S1, FAILED = "meanflow-fm75-s0-8ae0788347", "meanflow-fm75-s1-e39128b80b", "alphaflow-fm50-s0-1d6138c0c8"


@pytest.fixture
def sweep(tmp_path):
    """A copy of the golden sweep (the cache must not land in the repository)."""
    return Path(shutil.copytree(GOLDEN / "sweep", tmp_path / "sweep"))


# ----------------------------------------------------------------------------- the golden output

def test_golden_summaries_match_exactly(sweep):
    summary, variants = golden.expected(sweep)
    assert golden.to_csv(summary) == golden.SUMMARY.read_text(), "regenerate: python tests/golden/regenerate.py"
    assert golden.to_csv(variants) == golden.VARIANTS.read_text()


def test_the_golden_sweep_is_what_regenerate_writes(tmp_path):
    golden.write_sweep(tmp_path / "fresh")
    committed = {p.relative_to(GOLDEN / "sweep"): p.read_bytes() for p in (GOLDEN / "sweep").rglob("*") if p.is_file()}
    fresh = {p.relative_to(tmp_path / "fresh"): p.read_bytes() for p in (tmp_path / "fresh").rglob("*") if p.is_file()}
    assert committed == fresh
    assert sum(len(b) for b in committed.values()) < 100_000


# ----------------------------------------------------------------------------- frames

def test_tidy_metrics_frame(sweep):
    runs = load_runs(sweep, cache=False)
    m = runs.metrics
    assert len(m) == 4 + 3 + 2, "one row per logged step; the torn line of s1 is skipped"
    assert list(m.columns[:3]) == ["run", "variant", "step"]
    assert {"lr", "loss", "loss_mse"} <= set(m.columns)
    for col in ("cfg.objective.name", "cfg.objective.ratio_fm.start", "cfg.seed", "cfg.train.steps",
                "cfg.objective.alpha.gamma", "cfg.sample.nfe"):
        assert col in m.columns and col in runs.runs.columns, col
    assert m.columns[-1].startswith("cfg.") and runs.cfg_columns == [c for c in m.columns if c.startswith("cfg.")]
    by_run = m.assign(run=m["run"].astype(str)).groupby("run")
    assert by_run["step"].apply(list).to_dict() == {S0: [50, 100, 150, 200], S1: [50, 100, 150], FAILED: [50, 100]}
    s1 = m[m["run"] == S1]
    assert list(s1["loss"]) == [1.0, 0.8125, 0.6875] and s1["loss_mse"].isna().tolist() == [False, False, True]
    assert set(s1["cfg.seed"]) == {1} and set(s1["cfg.objective.ratio_fm.start"]) == {0.75}
    assert set(s1["cfg.objective.name"]) == {"meanflow"} and set(s1["variant"]) == {"meanflow-fm75"}
    assert m["cfg.train.steps"].dtype == np.int64 and m["loss"].dtype == np.float64
    assert runs.evals[["run", "step", "nfe", "fid"]].astype({"run": str}).values.tolist() == [[S0, 200, 1, 12.5]]


def test_run_table_statuses_and_failure_details(sweep):
    (sweep / "empty-0123456789").mkdir()
    t = load_runs(sweep, cache=False).runs.set_index("run")
    assert t["status"].to_dict() == {FAILED: "failed", S0: "done", S1: "incomplete", "empty-0123456789": "empty"}
    assert t.loc[S0, "last_step"] == 200 and t.loc[S1, "last_step"] == 150
    assert math.isnan(t.loc["empty-0123456789", "last_step"])
    assert t["variant"].to_dict() == {FAILED: "alphaflow-fm50", S0: "meanflow-fm75", S1: "meanflow-fm75",
                                      "empty-0123456789": "empty"}
    assert t.loc[FAILED, "error"].endswith("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert pd.isna(t.loc[S0, "error"])
    assert t.loc[FAILED, ["job_id", "executor", "job_state"]].tolist() == ["4242", "slurm", "FAILED"]
    assert t.loc[S0, "label"] == "meanflow, r=t 75%, seed 0"


def test_failure_from_job_state_and_done_wins(sweep):
    (sweep / S1 / "job.json").write_text(json.dumps({"job_id": "7", "state": "CANCELLED"}))
    (sweep / S0 / "error.txt").write_text("an old failure, resumed since\n")
    (sweep / "queued-s0-0123456789").mkdir()
    (sweep / "queued-s0-0123456789" / "job.json").write_text('{"job_id": "8", "state": "PENDING"}')
    t = load_runs(sweep, cache=False).runs.set_index("run")
    assert t.loc[S1, "status"] == "failed" and pd.isna(t.loc[S1, "error"])
    assert t.loc[S0, "status"] == "done" and t.loc[S0, "error"] == "an old failure, resumed since"
    assert t.loc["queued-s0-0123456789", "status"] == "empty" and t.loc["queued-s0-0123456789", "job_id"] == "8"


def test_variant_names():
    assert variant_of("meanflow-fm75-s0-5502342f1a") == "meanflow-fm75"
    assert variant_of("meanflow-fm75-lr0.001-s12-5502342f1a") == "meanflow-fm75-lr0.001"
    assert variant_of("s3-5502342f1a") == "base"
    assert variant_of("my-run") == "my-run"


def test_variant_from_run_json_else_from_the_name(sweep):
    """The golden folders predate run.json: their variant comes from the name (the legacy fallback)."""
    from alphaflow.run.folder import RunFolder

    assert not any((sweep / n / "run.json").exists() for n in (S0, S1, FAILED))
    RunFolder(sweep / S1).write_info(sweep="golden", variant="meanflow-fm75-late", seed=1, config_hash=S1[-10:])
    for _ in range(2):  # cold, then from the cache
        runs = load_runs(sweep)
        t = runs.runs.set_index("run")["variant"]
        assert t.to_dict() == {FAILED: "alphaflow-fm50", S0: "meanflow-fm75", S1: "meanflow-fm75-late"}
        assert set(runs.metrics.loc[runs.metrics["run"] == S1, "variant"]) == {"meanflow-fm75-late"}
        assert len(runs.problems) == 1 and runs.problems[0].startswith(f"{S1}: skipped 1"), runs.problems
    RunFolder(sweep / S1).write_info(sweep="golden", variant="meanflow-fm75", seed=1, config_hash=S1[-10:])
    assert load_runs(sweep).runs.set_index("run").loc[S1, "variant"] == "meanflow-fm75", "run.json is a cache source"
    (sweep / S1 / "run.json").write_text("{not json")
    runs = load_runs(sweep)
    assert runs.runs.set_index("run").loc[S1, "variant"] == "meanflow-fm75"
    assert f"{S1}: unreadable run.json (JSONDecodeError)" in runs.problems


def test_the_hash_check_of_a_config_in_an_older_schema(sweep):
    """A config.json written before a field existed hashes differently once upgraded: run.json's hash is checked."""
    import hashlib

    from alphaflow.run.folder import RunFolder

    raw = json.loads((sweep / S0 / "config.json").read_text())
    del raw["train"]["dist_timeout_min"]  # as if written before train.dist_timeout_min existed
    written = hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]
    old = sweep / f"meanflow-fm75-s0-{written}"
    shutil.copytree(sweep / S0, old)
    (old / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    assert not any(old.name in p for p in load_runs(sweep, cache=False).problems)
    RunFolder(old).write_info(sweep="golden", variant="meanflow-fm75", seed=0, config_hash=written)
    assert not any(old.name in p for p in load_runs(sweep, cache=False).problems)
    RunFolder(old).write_info(sweep="golden", variant="meanflow-fm75", seed=0, config_hash="0123456789")
    p = load_runs(sweep, cache=False).problems
    assert any(x.startswith(f"{old.name}: the name's hash {written} is not the config's (0123456789)") for x in p), p


def test_load_probes_is_a_view_of_load_runs(sweep):
    """One loader: load_probes is Runs.probes without the cfg.* columns (same rows, order and values)."""
    runs = load_runs(sweep)
    expected = load_probes(sweep, runs=runs)
    assert len(expected) == 2 and expected.columns[-1] == "variant"
    assert not any(c.startswith("cfg.") for c in expected.columns) and "cfg.seed" in runs.probes.columns
    pd.testing.assert_frame_equal(runs.probes[list(expected.columns)], expected)
    pd.testing.assert_frame_equal(load_probes(sweep), expected)  # a fresh load gives the same frame


# ----------------------------------------------------------------------------- tolerance

def test_problems_are_reported_never_raised(sweep):
    (sweep / "empty-0123456789").mkdir()
    (sweep / "report").mkdir()
    (sweep / "report" / "notes.md").write_text("not a run")
    bad = sweep / "broken-s0-0123456789"
    bad.mkdir()
    (bad / "config.json").write_text('{"seed": 0, "objec')
    (bad / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    renamed = sweep / "meanflow-fm75-s0-ffffffffff"
    shutil.copytree(sweep / S0, renamed)
    runs = load_runs(sweep)
    p = runs.problems
    assert any(x.startswith(f"{S1}: skipped 1 unreadable line(s) in metrics.jsonl") for x in p), p
    assert any(x.startswith("broken-s0-0123456789: unreadable config.json") for x in p), p
    assert any(x.startswith("meanflow-fm75-s0-ffffffffff: the name's hash") for x in p), p
    assert not any(S0 in x or FAILED in x or "empty" in x for x in p), "DONE, failed and empty are statuses"
    t = runs.runs.set_index("run")
    assert "report" not in t.index, "a folder without run files is not a run"
    assert t.loc["broken-s0-0123456789", "status"] == "incomplete"
    assert pd.isna(t.loc["broken-s0-0123456789", "cfg.seed"])
    assert (runs.metrics["run"] == "broken-s0-0123456789").sum() == 1
    missing = load_runs(sweep / "missing")
    assert missing.problems == [f"{sweep / 'missing'} is not a folder"]
    assert missing.runs.empty and missing.metrics.empty and missing.probes.empty and missing.evals.empty


def test_a_single_run_folder_is_a_root(sweep):
    runs = load_runs(sweep / S0, cache=False)
    assert list(runs.runs["run"]) == [S0] and len(runs.metrics) == 4


def test_values_of_mixed_types_load(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    rows = [{"step": 1, "x": 1, "note": "a"}, {"step": 2, "x": 2.5, "note": 3, "hist": [1, 2]},
            {"step": 3, "x": float("nan"), "deep": {"a": 1}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for cache in (True, True):  # cold, then from the cache
        m = load_runs(tmp_path, cache=cache).metrics
        assert m["x"].tolist()[:2] == [1.0, 2.5] and math.isnan(m["x"].iloc[2])
        assert m["note"].tolist()[:2] == ["a", "3"] and m["hist"].iloc[1] == "[1, 2]"
        assert json.loads(m["deep"].iloc[2]) == {"a": 1}


# ----------------------------------------------------------------------------- cache

def count_reads(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = records.read_jsonl

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(records, "read_jsonl", counting)
    return calls


def test_cache_hit_then_invalidation(sweep, monkeypatch):
    calls = count_reads(monkeypatch)
    cold = load_runs(sweep)
    assert len(calls) == 3 * 3, "3 runs × (metrics, probes, eval)"
    assert (sweep / CACHE_DIR / f"{S0}.json").exists()
    calls.clear()
    warm = load_runs(sweep)
    assert calls == [], "a second load reads no JSONL"
    for name in ("metrics", "runs", "probes", "evals"):
        pd.testing.assert_frame_equal(getattr(warm, name), getattr(cold, name), obj=name)
    assert warm.problems == cold.problems

    with open(sweep / S0 / "metrics.jsonl", "a") as f:  # the run logs another row
        f.write(json.dumps({"step": 250, "lr": 0.001, "loss": 0.25, "loss_mse": 0.25}) + "\n")
    again = load_runs(sweep)
    assert {p.parent.name for p in calls} == {S0}, "only the changed run is read again"
    assert again.metrics[again.metrics["run"] == S0]["step"].max() == 250
    assert again.runs.set_index("run").loc[S0, "last_step"] == 250

    calls.clear()
    (sweep / S1 / "DONE").write_text("{}\n")  # a new DONE (not a JSONL file) also invalidates
    st = os.stat(sweep / FAILED / "metrics.jsonl")  # same size, newer mtime: invalidates too
    os.utime(sweep / FAILED / "metrics.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    runs = load_runs(sweep)
    assert {p.parent.name for p in calls} == {S1, FAILED}
    assert runs.runs.set_index("run").loc[S1, "status"] == "done"


def test_cache_off_writes_nothing_and_stale_entries_are_pruned(sweep):
    load_runs(sweep, cache=False)
    assert not (sweep / CACHE_DIR).exists()
    load_runs(sweep)
    shutil.rmtree(sweep / S1)
    load_runs(sweep)
    assert not any(p.name.startswith(S1) for p in (sweep / CACHE_DIR).iterdir())
    assert any(p.name.startswith(S0) and p.suffix == ".parquet" for p in (sweep / CACHE_DIR).iterdir())


# ----------------------------------------------------------------------------- summaries

def test_t_interval_by_hand_for_three_seeds():
    summary = pd.DataFrame({"variant": ["a", "a", "a", "b"], "status": ["done"] * 3 + ["failed"],
                            "x": [1.0, 2.0, 4.0, 5.0]})
    v = summarize_variants(summary, ["x"]).set_index("variant")
    mean, sd = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    p = 0.975
    t2 = (2 * p - 1) / math.sqrt(2 * p * (1 - p))  # Student t quantile in closed form for 2 degrees of freedom
    assert t2 == pytest.approx(4.302652729911275, rel=1e-9)
    a = v.loc["a"]
    assert (a["n"], a["done"], a["x_n"]) == (3, 3, 3)
    assert a["x_mean"] == pytest.approx(mean, rel=1e-12) and a["x_sd"] == pytest.approx(sd, rel=1e-12)
    assert a["x_lo"] == pytest.approx(mean - t2 * sd / math.sqrt(3), rel=1e-9)
    assert a["x_hi"] == pytest.approx(mean + t2 * sd / math.sqrt(3), rel=1e-9)
    b = v.loc["b"]
    assert (b["n"], b["done"], b["x_mean"]) == (1, 0, 5.0)
    assert math.isnan(b["x_sd"]) and math.isnan(b["x_lo"]) and math.isnan(b["x_hi"]), "n = 1: no interval"


def test_summarize_runs_final_and_best(sweep):
    s = summarize_runs(load_runs(sweep, cache=False), metrics=("loss", "loss_mse", "never_logged")).set_index("run")
    assert (s.loc[S0, "final_loss"], s.loc[S0, "best_loss"]) == (0.625, 0.5)
    assert s.loc[S1, "final_loss_mse"] == 1.0, "the last step that logged it, not the last row"
    assert s["final_never_logged"].isna().all() and s["best_never_logged"].isna().all()
    # ratio_fm differs between the variants; α-Flow's own options exist for its run only (NaN for MeanFlow's)
    alpha_only = ["cfg.objective.alpha." + k for k in ("kind", "start", "end", "k_start", "k_end", "unit", "gamma",
                                                         "clamp", "discrete")] + ["cfg.objective.clip", "cfg.objective.shift"]
    assert [c for c in s.columns if c.startswith("cfg.")] == ["cfg.seed", "cfg.objective.name",
                                                             "cfg.objective.ratio_fm.start",
                                                             "cfg.objective.ratio_fm.end", *alpha_only]
    assert s.loc[S0, alpha_only].isna().all() and s.loc[FAILED, "cfg.objective.alpha.kind"] == "sigmoid"


# ----------------------------------------------------------------------------- report

@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_write_report_writes_the_files(sweep):
    out = write_report(sweep)
    assert out == sweep / "report"
    names = {p.name for p in out.iterdir()}
    assert {"runs.csv", "summary.csv", "variants.csv", "summary.md", "loss.png"} <= names
    assert {"fig2a.png", "fig2b.png", "fig2c.png", "fig6.png"} <= names, "the golden s0 run has probe rows"
    for png in ("loss.png", "fig2a.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    assert "## Variants" in md and "meanflow-fm75" in md and "RuntimeError: CUDA out of memory" in md
    assert "skipped 1 unreadable line(s)" in md
    assert len(pd.read_csv(out / "runs.csv")) == 3 and len(pd.read_csv(out / "variants.csv")) == 2
    assert "report" not in set(load_runs(sweep).runs["run"]), "the report folder is not read as a run"
    assert {"quality.csv", "conflict.csv", "headline.md", "schedules.png"} <= names
    assert "samples.png" not in names and "conflict.png" not in names, "no grids, no conflict.mode: no blank figure"
    head = (out / "headline.md").read_text()
    assert "No eval.jsonl rows" in head, "the golden eval row predates the metric/value format"
    assert "Gradient conflict per variant (offline probes, probes.jsonl)" in head and "meanflow-fm75" in head
    assert head in md, "summary.md opens with the headline"


def test_pool_seeds_averages_online_probes_per_variant_with_the_seed_range_as_band():
    from analysis.report import pool_seeds

    df = pd.DataFrame({"run": ["mf-s0-0123456789", "mf-s1-abcdef0123", "mf-s0-0123456789", "fm-s0-9876543210"],
                       "label": ["a", "b", "a", "c"], "step": [50, 50, 100, 50],
                       "cos_tfm_tcc": [-0.5, -0.75, -1.0, 0.25]})
    out = pool_seeds(df).set_index(["run", "step"])
    assert out.loc[("mf", 50), "cos_tfm_tcc"] == -0.625
    assert (out.loc[("mf", 50), "cos_tfm_tcc_p05"], out.loc[("mf", 50), "cos_tfm_tcc_p95"]) == (-0.75, -0.5)
    assert out.loc[("mf", 100), "cos_tfm_tcc"] == -1.0 and out.loc[("fm", 50), "cos_tfm_tcc"] == 0.25
    assert out.loc[("mf", 50), "label"] == "mf (2 seeds, band: seed range)" and out.loc[("fm", 50), "label"] == "fm"
    single = df[df["run"] != "mf-s1-abcdef0123"]
    assert pool_seeds(single).equals(single), "one run per variant: nothing to pool"


def test_headline_leads_with_the_online_table_when_the_offline_probes_are_one_point_per_run(sweep):
    run = sweep / "meanflow-fm75-s0-8ae0788347"
    probes = run / "probes.jsonl"
    probes.write_text(probes.read_text().splitlines()[-1] + "\n")  # probe.final: the last checkpoint only
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row.update(probe_cos_tfm_tcc=-0.5 - row["step"] / 1000, probe_cos_fmb_tcc=0.1)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    head = (write_report(sweep) / "headline.md").read_text()
    online = head.index("Gradient conflict per variant (online probes after the first tenth of training)")
    offline = head.index("Gradient conflict per variant (offline probes of each run's last checkpoint, probes.jsonl)")
    assert online < offline
    table = pd.read_csv(sweep / "report" / "conflict_online.csv").set_index("variant")
    assert table.loc["meanflow-fm75", "frac_tfm_tcc_below_-0.4_mean"] == 1.0
    assert table.loc["meanflow-fm75", "frac_tfm_tcc_below_-0.4_n"] == sum(r["step"] > 0.1 * rows[-1]["step"] for r in rows)


# ----------------------------------------------------------------------------- a variant is its config

def _launch(root: Path, sweep_file: Path) -> None:
    """What the launcher leaves behind before training: each run's config.json and run.json (and one metrics row)."""
    from alphaflow.config import config_hash, to_dict
    from alphaflow.launch.sweeps import load_sweep
    from alphaflow.run.folder import RunFolder

    for r in load_sweep(sweep_file).runs:
        run = RunFolder(root / r.name)
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_config(to_dict(r.config))
        run.write_info(sweep=r.sweep, variant=r.variant, seed=r.config.seed, config_hash=config_hash(r.config))
        run.append_metrics({"step": 1, "loss_mse": 0.5 + 0.01 * r.config.seed})


def test_an_edited_base_rerun_into_one_root_splits_its_variants(tmp_path):
    """The reproduction: edit a sweep file's base (optim.lr), rerun it into the same root, report. The old and the
    new runs are not pooled as seeds of one variant; the split is named under Problems and on stdout."""
    text = "name: lr\nbase: {{optim: {{lr: {lr}}}}}\nvariants: {{fm: {{objective.name: fm}}, mf: {{objective.name: meanflow}}}}\nseeds: [0, 1]\n"
    root, sweep_file = tmp_path / "root", tmp_path / "lr.yaml"
    sweep_file.write_text(text.format(lr=0.001))
    _launch(root, sweep_file)
    assert sorted(load_runs(root, cache=False).runs["variant"]) == ["fm", "fm", "mf", "mf"]
    sweep_file.write_text(text.format(lr=0.0005))
    _launch(root, sweep_file)

    runs = load_runs(root, cache=False)
    counts = runs.runs["variant"].value_counts()
    assert len(counts) == 4 and set(counts) == {2}, "two configs per name, two seeds each"
    assert {v.split("@")[0] for v in counts.index} == {"fm", "mf"}
    split = [p for p in runs.problems if "different configs" in p]
    assert len(split) == 2 and all("differing keys: optim.lr: " in p and "0.001 (@" in p and "0.0005 (@" in p
                                   for p in split)
    variants = summarize_variants(summarize_runs(runs), ["final_loss_mse"])
    assert list(variants["n"]) == [2, 2, 2, 2] and list(variants["final_loss_mse_n"]) == [2, 2, 2, 2]

    out = write_report(root)
    md = (out / "summary.md").read_text()
    assert "Problems: none" not in md and md.count("different configs") == 2
    from analysis.command import run_report
    import argparse
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run_report(argparse.Namespace(root=str(root), out=None))
    assert buf.getvalue().count("problem: variant ") == 2


def test_seeds_of_one_config_stay_one_variant(tmp_path):
    text = "name: s\nvariants: {fm: {objective.name: fm}}\nseeds: [0, 1, 2]\n"
    (tmp_path / "s.yaml").write_text(text)
    _launch(tmp_path / "root", tmp_path / "s.yaml")
    runs = load_runs(tmp_path / "root", cache=False)
    assert list(runs.runs["variant"]) == ["fm"] * 3 and not [p for p in runs.problems if "configs" in p]


def test_skipped_updates_are_totalled_per_run_and_named_in_the_summary(tmp_path):
    root = tmp_path / "root"
    for name, skips in (("a-s0", [0, 2, 1]), ("a-s1", [0, 0, 0])):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps({"seed": int(name[-1])}))
        rows = [{"step": 100 * (k + 1), "loss": 1.0, "spike_skipped": s, "nonfinite": 0} for k, s in enumerate(skips)]
        (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize_runs(load_runs(root, cache=False)).set_index("run")
    assert summary.loc["a-s0", "spike_skipped"] == 3 and summary.loc["a-s1", "spike_skipped"] == 0
    md = (write_report(root) / "summary.md").read_text()
    assert "updates skipped by train.spike_guard: 3 in 1 run(s): a-s0 (3)" in md and "non-finite steps" not in md


def test_report_refuses_a_bad_out_in_one_line_before_any_work(sweep, tmp_path, capsys):
    from alphaflow.cli.main import main

    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    assert main(["report", str(sweep), "--out", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == f"alphaflow report: --out {a_file} is a file: give a folder (it is " \
                                              "created if missing)"
    assert a_file.read_text() == "keep me"
    assert main(["report", str(sweep), "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert not (sweep / "report").exists() and not (sweep / ".analysis-cache").exists(), "refused before loading"


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_report_on_a_read_only_root_is_one_line_and_exit_1(sweep, tmpfs, capsys):
    from alphaflow.cli.main import main
    from small_fs import remount

    fs = tmpfs("20m")
    root = Path(shutil.copytree(sweep, fs / "sweep"))
    remount(fs, "ro")
    assert main(["report", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"alphaflow report: could not write the report (--out FOLDER writes "
                                               f"it elsewhere) in {root / 'report'}: Read-only file system"), err
    assert main(["report", str(root), "--out", str(fs.parent / "elsewhere")]) == 0, "the cache is optional there"


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_report_draws_the_sample_figure_only_with_grids(sweep):
    """The golden runs hold no grid (no samples.png, see above); one grid of one run makes the figure."""
    from PIL import Image

    grid = sweep / S0 / "samples" / "step-00000004-nfe1.png"
    grid.parent.mkdir()
    Image.new("L", (16, 16), 128).save(grid)
    out = write_report(sweep)
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "samples.png" in (out / "summary.md").read_text()
