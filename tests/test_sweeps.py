"""Sweep files expand into named, validated runs; the committed sweeps load."""

from __future__ import annotations

from pathlib import Path

import pytest

from alphaflow.cli.main import main
from alphaflow.config import config_hash
from alphaflow.launch.executors import run_inline
from alphaflow.launch.sweeps import load_sweep
from alphaflow.run.folder import run_status

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_variants_grid_zip_and_seeds_expand_to_their_product(tmp_path):
    path = write(tmp_path, """
name: demo
base: {train: {steps: 40}}
variants:
  mf: {objective.name: meanflow, objective.ratio_fm: 0.25}
  af: {objective.name: alphaflow}
grid: {optim.lr: [0.001, 0.0003]}
zip: {train.batch_size: [16, 32], train.log_every: [10, 20]}
seeds: [0, 1]
""")
    sweep = load_sweep(path)
    name, runs = sweep.name, sweep.runs
    assert name == "demo" and len(runs) == 2 * 2 * 2 * 2
    assert len({r.name for r in runs}) == len(runs)
    mf = [r for r in runs if r.name.startswith("mf-")]
    assert all(r.config.objective.name == "meanflow" and r.config.objective.ratio_fm.start == 0.25 for r in mf)
    assert {(r.config.train.batch_size, r.config.train.log_every) for r in runs} == {(16, 10), (32, 20)}
    assert {r.config.seed for r in runs} == {0, 1} and all(r.config.train.steps == 40 for r in runs)
    first = runs[0]
    assert first.name.endswith(config_hash(first.config)) and "lr0.001" in first.name and "-s0-" in first.name


def test_seeds_per_variant_give_each_variant_its_own_seeds(tmp_path):
    path = write(tmp_path, """
variants:
  fm: {objective.name: fm}
  mf: {objective.name: meanflow}
grid: {optim.lr: [0.001, 0.0003]}
seeds: {fm: [0, 1], mf: [0, 1, 2]}
""")
    runs = load_sweep(path).runs
    seeds: dict[str, list[int]] = {}
    for r in runs:
        seeds.setdefault(r.variant, []).append(r.config.seed)
    assert len(runs) == 2 * 2 + 3 * 2
    assert seeds == {"fm-lr0.001": [0, 1], "fm-lr0.0003": [0, 1], "mf-lr0.001": [0, 1, 2], "mf-lr0.0003": [0, 1, 2]}


@pytest.mark.parametrize("text,message", [
    ("variants: {a: {}, b: {}}\nseeds: {a: [0]}\n", "one list per variant"),
    ("variants: {a: {}}\nseeds: {a: []}\n", "every 'seeds' entry needs a non-empty list"),
    ("seeds: 3\n", "'seeds' needs a non-empty list"),
    ("name: x\nvariant: {}\n", "unknown sweep keys"),
    ("zip: {seed: [1, 2], train.steps: [5]}\n", "same length"),
    ("variants: {bad: {train.step: 5}}\n", "variant bad"),
    ("- a\n- b\n", "a sweep file is a mapping"),
    ("grid: {optim.lr: []}\n", "non-empty list"),
    ("grid: {optim.lr: [0.1]}\nzip: {optim.lr: [0.2]}\n", "set by both 'grid' and 'zip'"),
    ("variants: {a: {seed: 3}}\nseeds: [0, 1]\n", "set by both 'variants' and 'seeds'"),
    ("resources: [1]\n", "'resources' must be a mapping"),
    # PyYAML would keep the last of two keys without a word: refused at the second, with its line
    ("variants:\n  a: {optim.lr: 0.1}\n  b: {}\n  a: {optim.lr: 0.2}\n", r"line 4, column 3: duplicate key 'a' \(first at line 2\)"),
    ("base: {optim: {lr: 0.1, lr: 0.2}}\n", r"line 1, column 25: duplicate key 'lr'"),
    ("variants: {a: {}, b: {}}\nbaseline: z\n", r"baseline 'z' is not one of the sweep's variants \['a', 'b'\]"),
])
@pytest.mark.fast
def test_bad_sweep_files_name_the_problem(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_sweep(write(tmp_path, text))


def test_committed_grad_conflict_sweep_expands():
    runs = load_sweep(ROOT / "sweeps" / "grad_conflict.yaml").runs
    objectives = sorted((r.config.objective.name, r.config.objective.ratio_fm.start) for r in runs)
    assert objectives == [("alphaflow", 0.5), ("meanflow", 0.0), ("meanflow", 0.75)]
    assert all(r.config.train.keep_every > 0 and r.config.probe.every > 0 for r in runs)


def test_inline_runner_skips_done_runs_and_dry_run_lists_states(tmp_path, capsys):
    path = write(tmp_path, """
name: tiny
base: {model: {name: DiT-N/2}, train: {steps: 2, batch_size: 8, log_every: 1, ckpt_every: 2, sample_every: 0},
       sample: {num: 4}, data: {stats_samples: 16}}
variants: {fm: {objective.name: fm}, mf: {objective.name: meanflow}}
""")
    runs = load_sweep(path).runs
    run_inline(runs[:1], tmp_path / "root", log=lambda _: None)
    assert run_status(tmp_path / "root" / runs[0].name).state == "done"
    assert run_status(tmp_path / "root" / runs[1].name).state == "new"
    assert main(["sweep", str(path), "--root", str(tmp_path / "root"), "--dry-run", "--executor", "local"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("done") and out[2].startswith("new")
    messages: list[str] = []
    run_inline(runs, tmp_path / "root", log=messages.append)
    assert messages[0] == "2 runs: 1 done, 0 incomplete, 1 new"
    assert all(run_status(tmp_path / "root" / r.name).state == "done" for r in runs)


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_sweep_expands(path):
    sweep = load_sweep(path)
    assert sweep.runs and len({r.name for r in sweep.runs}) == len(sweep.runs)


def test_alpha_schedule_variants_are_the_papers():
    runs = load_sweep(ROOT / "sweeps" / "alpha_schedules.yaml").runs
    assert len(runs) == 9
    by_variant = {r.name.rsplit("-s", 1)[0]: r.config.objective.alpha.resolve(1500) for r in runs}
    assert by_variant["sigmoid-0-to-end"](750) == pytest.approx(0.5)
    assert by_variant["step-at-half"](749) == 1.0 and by_variant["step-at-half"](750) == 0.0
    assert by_variant["constant-0"](0) == 0.0


def test_demo_sweep_is_three_objectives_with_probes_and_evaluation_in_an_even_number_of_runs():
    sweep = load_sweep(ROOT / "sweeps" / "demo.yaml")
    seeds: dict[str, list[int]] = {}
    for r in sweep.runs:
        seeds.setdefault(r.config.objective.name, []).append(r.config.seed)
    assert seeds == {"fm": [0, 1], "meanflow": [0, 1, 2], "alphaflow": [0, 1, 2]}
    assert len(sweep.runs) % 2 == 0, "two shells on two cores: the runs split evenly"
    for r in sweep.runs:
        c = r.config
        assert c.data.name == "digits" and c.train.threads == 1 and c.probe.every > 0 and c.probe.online_batches > 1
        assert c.probe.final and c.eval.final and c.sample.nfe == [1, 2]
    assert "sweeps/demo.yaml" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "scripts/demo.sh" in (ROOT / "Makefile").read_text()



STATES_SWEEP = """
name: states
base: {model: {name: DiT-N/2}, train: {steps: 2, batch_size: 8, log_every: 1, ckpt_every: 2, sample_every: 0},
       sample: {num: 4}, data: {stats_samples: 16}}
seeds: [0, 1, 2, 3, 4, 5, 6, 7]
"""
# what each run's folder holds, and the state it is in
LAYOUT = ["new", "empty", "incomplete", "failed", "failed (job.json)", "done", "pending", "running"]


def lay_out(root: Path, runs) -> dict[str, str]:
    """Write one folder per entry of LAYOUT; {run name: expected state}."""
    from alphaflow.config import to_dict
    from alphaflow.run.folder import RunFolder

    expected = {}
    for r, kind in zip(runs, LAYOUT):
        run = RunFolder(root / r.name)
        expected[r.name] = kind.split()[0]
        if kind == "new":
            continue
        run.root.mkdir(parents=True)
        if kind == "empty":
            continue
        run.write_config(to_dict(r.config))
        run.append_metrics({"step": 1, "loss": 1.0})
        if kind == "failed":
            run.write_error("Traceback (most recent call last):\nRuntimeError: boom\n")
        if kind == "failed (job.json)":
            run.write_job({"job_id": "9", "executor": "slurm", "state": "CANCELLED"})
        if kind == "done":
            run.mark_done({"step": 2})
        if kind in ("pending", "running"):
            run.write_job({"job_id": kind, "executor": "slurm"})
    return expected


def test_one_state_function_answers_status_inline_and_analysis_alike(tmp_path, capsys, monkeypatch):
    from alphaflow.launch import executors as launcher
    from analysis import load_runs

    path = write(tmp_path, STATES_SWEEP)
    runs, root = load_sweep(path).runs, tmp_path / "root"
    expected = lay_out(root, runs)
    # a scheduler that queues job "pending" and runs job "running"
    monkeypatch.setattr(launcher, "scheduler_state", lambda root: lambda executor, job: job.upper())
    assert {r.name: run_status(root / r.name, launcher.scheduler_state(root)).state for r in runs} == expected

    assert main(["sweep", str(path), "--root", str(root), "--status", "--executor", "local"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{'state':<11} {'step':>7}  run"
    shown = {line.split()[2]: line.split()[0] for line in lines[1:]}
    assert shown == expected
    assert "[RuntimeError: boom]" in lines[1 + LAYOUT.index("failed")] and "[CANCELLED]" in lines[5]

    table = load_runs(root, cache=False).runs.set_index("run")["status"].to_dict()
    no_scheduler = {n: "incomplete" if s in ("pending", "running") else s for n, s in expected.items() if s != "new"}
    assert table == no_scheduler, "analysis asks no scheduler: a queued or running run is incomplete there"

    trained: list[Path] = []
    monkeypatch.setattr("alphaflow.launch.training.train_run",
                        lambda cfg, run_dir, log: trained.append(Path(run_dir)))
    messages: list[str] = []
    run_inline(runs, root, log=messages.append)
    assert messages[0] == "8 runs: 1 done, 1 incomplete, 1 new, 1 empty, 1 pending, 1 running, 2 failed"
    started = {m[4:].split(" (")[0]: m.split(" (")[1].rstrip(")") for m in messages[1:]}
    assert started == {n: s for n, s in expected.items() if s not in ("done", "pending", "running")}
    assert [p.name for p in trained] == list(started)


def test_the_sweep_writes_run_json_and_analysis_reads_the_variant_from_it(tmp_path, monkeypatch):
    from alphaflow.config import config_hash
    from alphaflow.run.folder import RunFolder
    from analysis import load_runs
    from analysis.records import variant_of

    path = write(tmp_path, """
name: demo
base: {train: {steps: 40}}
variants: {mf: {objective.name: meanflow}, af: {objective.name: alphaflow}}
grid: {optim.lr: [0.001, 0.0003]}
seeds: [0, 1]
""")
    runs, root = load_sweep(path).runs, tmp_path / "root"
    assert all(r.variant == variant_of(r.name) and r.sweep == "demo" for r in runs), "run.json agrees with the name"
    assert {r.variant for r in runs} == {"mf-lr0.001", "mf-lr0.0003", "af-lr0.001", "af-lr0.0003"}
    monkeypatch.setattr("alphaflow.launch.training.train_run", lambda cfg, run_dir, log: None)
    run_inline(runs, root, log=lambda _: None)
    for r in runs:
        assert RunFolder(root / r.name).read_info() == {"sweep": "demo", "variant": r.variant, "seed": r.config.seed,
                                                       "config_hash": config_hash(r.config),
                                                       "baseline": runs[0].variant}
    first = RunFolder(root / runs[0].name)
    first.write_info(sweep="demo", variant="renamed-by-hand", seed=0, config_hash=config_hash(runs[0].config))
    variants = load_runs(root, cache=False).runs.set_index("run")["variant"]
    assert variants[runs[0].name] == "renamed-by-hand" and variants[runs[1].name] == runs[1].variant


def test_the_executors_are_a_registry():
    from alphaflow.launch import executors as launcher

    assert list(launcher.EXECUTORS) == ["inline", "local", "slurm"]
    assert launcher.EXECUTORS["inline"].run is run_inline
    assert launcher.resolve_executor("inline") == "inline" and launcher.resolve_executor("auto") in ("local", "slurm")
    with pytest.raises(ValueError, match="must be auto, inline, local, slurm"):
        launcher.resolve_executor("ssh")


@pytest.mark.fast
def test_the_baseline_is_the_files_or_its_first_variant(tmp_path):
    text = "variants: {mf: {objective.name: meanflow}, fm: {objective.name: fm}}\n"
    assert {r.baseline for r in load_sweep(write(tmp_path, text)).runs} == {"mf"}
    assert {r.baseline for r in load_sweep(write(tmp_path, text + "baseline: fm\n")).runs} == {"fm"}
