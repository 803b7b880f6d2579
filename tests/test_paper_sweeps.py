"""The paper's experiments as sweep files (docs/objectives.md#released-schedules; arXiv 2510.20771
Tables 1 and 2): each expands to the intended runs and resources."""

from __future__ import annotations

from pathlib import Path

import pytest

from alphaflow.cli.main import main
from alphaflow.config import Config
from alphaflow.launch.sweeps import load_sweep

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = ROOT / "sweeps" / "imagenet"
EIGHT_GPUS = {"nodes": 1, "gpus_per_node": 8, "tasks_per_node": 8}


def by_variant(path: Path, overrides: tuple[str, ...] = ()) -> dict[str, list[Config]]:
    out: dict[str, list[Config]] = {}
    for run in load_sweep(path, overrides).runs:
        variant = run.name.rsplit("-s", 1)[0]
        out.setdefault(variant, []).append(run.config)
    return out


def sigmoid_window(cfg: Config) -> tuple[float, float]:
    a = cfg.objective.alpha
    assert a.kind == "sigmoid" and a.unit == "step" and (a.start, a.end) == (1.0, 0.0)
    assert (a.gamma, a.clamp) == (25.0, 0.005)
    return a.k_start, a.k_end


def is_alpha_zero(cfg: Config) -> bool:
    a = cfg.objective.alpha
    return a.kind == "constant" and a.start == 0.0


def test_table2a_schedules_on_b2_without_cfg():
    runs = by_variant(IMAGENET / "table2a_schedules.yaml")
    assert len(runs) == 7 and all(len(v) == 1 for v in runs.values())
    cfgs = {k: v[0] for k, v in runs.items()}
    for cfg in cfgs.values():
        assert cfg.model.name == "DiT-B/2" and cfg.data.name == "latents" and cfg.objective.name == "alphaflow"
        assert cfg.train.steps == 400_000 and cfg.train.batch_size == 256
        assert cfg.objective.ratio_fm.start == 0.25 and not (cfg.objective.guidance.omega != 1.0 or cfg.objective.guidance.kappa)
    assert is_alpha_zero(cfgs["constant-0"])
    windows = {k: sigmoid_window(c) for k, c in cfgs.items() if k.startswith("sigmoid")}
    assert windows == {"sigmoid-0k-100k": (0, 100_000), "sigmoid-50k-150k": (50_000, 150_000),
                       "sigmoid-100k-200k": (100_000, 200_000), "sigmoid-150k-250k": (150_000, 250_000),
                       "sigmoid-0k-400k": (0, 400_000)}
    step = cfgs["step-200k"].objective.alpha
    assert step.kind == "step" and step.k_start == step.k_end == 200_000
    assert load_sweep(IMAGENET / "table2a_schedules.yaml").resources.items() >= EIGHT_GPUS.items()


def test_table2b_crosses_ratio_with_meanflow_and_alphaflow():
    sweep = load_sweep(IMAGENET / "table2b_ratio.yaml")
    assert len(sweep.runs) == 8
    seen = set()
    for run in sweep.runs:
        cfg = run.config
        kind = "meanflow" if is_alpha_zero(cfg) else "alphaflow"
        if kind == "alphaflow":
            assert sigmoid_window(cfg) == (0, 400_000)
        seen.add((kind, cfg.objective.ratio_fm.start))
        assert cfg.model.name == "DiT-B/2" and cfg.train.steps == 400_000
    assert seen == {(k, r) for k in ("meanflow", "alphaflow") for r in (0.0, 0.25, 0.5, 0.75)}


def test_shared_configs_share_a_run_folder():
    """Table 2a's constant-0 at 25 % is Table 2b's MeanFlow at 25 %: same config, same name."""
    a = {r.name.rsplit("-", 1)[1] for r in load_sweep(IMAGENET / "table2a_schedules.yaml").runs}
    b = {r.name.rsplit("-", 1)[1] for r in load_sweep(IMAGENET / "table2b_ratio.yaml").runs}
    assert len(a & b) == 2  # constant-0 and sigmoid-0k-400k, both at 25 %


@pytest.mark.parametrize("file, model, omega, kappa, t_max, af_ratio, af_window", [
    ("table1_b2_cfg.yaml", "DiT-B/2", 1.0, 0.5, 1.0, 0.25, (0, 1_200_000)),
    ("table1_xl2_cfg.yaml", "DiT-XL/2", 0.2, 0.92, 0.75, 0.5, (600_000, 1_000_000)),
])
def test_table1_cfg_runs(file, model, omega, kappa, t_max, af_ratio, af_window):
    runs = by_variant(IMAGENET / file)
    assert len(runs) == 2
    af = next(v[0] for k, v in runs.items() if k.startswith("alphaflow"))
    mf = next(v[0] for k, v in runs.items() if k.startswith("meanflow"))
    for cfg in (af, mf):
        c = cfg.objective.guidance
        assert cfg.model.name == model and cfg.train.steps == 1_200_000 and cfg.train.batch_size == 256
        assert (c.omega, c.kappa, c.t_min, c.t_max, c.label_dropout) == (omega, kappa, 0.0, t_max, 0.1)
    assert sigmoid_window(af) == af_window and af.objective.ratio_fm.start == af_ratio
    assert is_alpha_zero(mf) and mf.objective.ratio_fm.start == 0.5


def test_fm_baseline_samples_with_80_euler_steps():
    (cfg,) = [r.config for r in load_sweep(IMAGENET / "fm_baseline_b2.yaml").runs]
    assert cfg.objective.name == "fm" and cfg.model.name == "DiT-B/2" and cfg.train.steps == 400_000
    assert cfg.sample.sampler == "euler" and 80 in cfg.sample.nfe


def test_digits_counterparts_are_small_and_evaluate_themselves():
    for name, count in (("alpha_schedules", 9), ("ratio_fm", 16), ("cfg", 6), ("fm_baseline", 3)):
        sweep = load_sweep(ROOT / "sweeps" / f"{name}.yaml")
        assert len(sweep.runs) == count, name
        for run in sweep.runs:
            assert run.config.data.name == "digits" and run.config.train.steps <= 1500
            assert run.config.eval.final, f"{name}: runs should end with their Fréchet distances"
    cfg_runs = by_variant(ROOT / "sweeps" / "cfg.yaml")
    assert all(c.objective.guidance.kappa == 0.5 and c.objective.guidance.label_dropout == 0.1
               for v in cfg_runs.values() for c in v)


def test_command_line_overrides_reach_every_run_and_may_not_fight_an_axis(tmp_path):
    runs = load_sweep(IMAGENET / "table2b_ratio.yaml", ("data.path=/data/latents", "train.batch_size=512")).runs
    assert all(r.config.data.path == "/data/latents" and r.config.train.batch_size == 512 for r in runs)
    with pytest.raises(ValueError, match="objective.ratio_fm"):
        load_sweep(IMAGENET / "table2b_ratio.yaml", ("objective.ratio_fm=0.5",))
    with pytest.raises(ValueError, match="key=value"):
        load_sweep(IMAGENET / "table2b_ratio.yaml", ("data.path",))


def test_dry_run_prints_the_eight_gpu_batch_script(tmp_path, capsys):
    rc = main(["sweep", str(IMAGENET / "table1_xl2_cfg.yaml"), "--executor", "slurm", "--dry-run",
               "--root", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("new ") == 2 and "alphaflow-xl2-cfg-s1-" in out and "meanflow-xl2-cfg-s1-" in out
    assert "#SBATCH --gpus-per-node=8" in out and "#SBATCH --ntasks-per-node=8" in out
    assert "#SBATCH --array=0-1" in out
    assert not (tmp_path / "runs").exists()


def test_submitting_without_the_data_path_is_refused_before_anything_runs(tmp_path, capsys):
    rc = main(["sweep", str(IMAGENET / "fm_baseline_b2.yaml"), "--executor", "local", "--root", str(tmp_path / "r")])
    out = capsys.readouterr().err
    assert rc == 2 and "data.path" in out and "fm-b2-s1-" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("path", [ROOT / "sweeps" / "family.yaml", IMAGENET / "family_b2.yaml"])
def test_the_family_sweeps_hold_every_objective_and_pass_preflight(path, tmp_path):
    """Every objective of the family, each run's config accepted by preflight (the ImageNet one with a data
    folder faked only as far as its path check goes), decoupled_meanflow started from the same seed's fm run."""
    from alphaflow.train.build import preflight
    from alphaflow.objectives import OBJECTIVES

    runs = by_variant(path)
    assert set(runs) == set(OBJECTIVES) - {"tfm"}
    for variant, configs in runs.items():
        for cfg in configs:
            assert cfg.objective.name == variant
            if cfg.train.init_from is None:
                if cfg.data.name == "latents":
                    cfg.data.path = str(tmp_path)
                    (tmp_path / "meta.json").write_text("{}")
                preflight(cfg)
    (dmf,) = {c.train.init_from for c in runs["decoupled_meanflow"]}
    assert dmf == "{root}/fm-s{seed}-*" and all(c.model.logvar for c in runs["decoupled_meanflow"])
    assert all(c.model.aux_head_depth is not None for c in runs["imf"])
    if path.parent == IMAGENET:
        imf = runs["imf"][0]
        assert (imf.objective.omega_max, imf.objective.label_dropout, imf.model.aux_head_depth) == (8.0, 0.1, 8)
        assert all(c.model.name == "DiT-B/2" and c.train.steps == 400_000 for v in runs.values() for c in v)
