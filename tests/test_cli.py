"""The ``alphaflow`` command: help, dry runs, config errors, the model registry."""

from __future__ import annotations

import pytest

from alphaflow.cli.main import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "ref-stats", "probe", "sweep", "report", "extract-latents", "models"):
        assert command in out


def test_models_lists_registry_with_counts(capsys):
    assert main(["models", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("DiT-XL/2 "))
    assert int(line.split()[-1].replace(",", "")) == pytest.approx(675e6, rel=0.01)


def test_train_dry_run_prints_the_resolved_config(capsys):
    assert main(["train", "--out", "unused", "--dry-run", "train.steps=7", "objective.name=meanflow"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "name: meanflow" in out


def test_train_refuses_a_bad_key_before_running(capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path / "run"), "train.step=7"]) == 2
    assert "did you mean 'train.steps'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,message", [
    ("model.name=DiT-Q/2", "did you mean"),
    ("data.name=cifar10", "needs data.path"),
    ("objective.name=meanflw", "did you mean 'meanflow'"),
    ("objective.clip=2.0", "'objective.clip' applies to objective.name=alphaflow, not to 'meanflow'"),
])
def test_train_preflight_names_the_bad_key(capsys, tmp_path, override, message):
    extra = ["objective.name=meanflow"] if override.startswith("objective.clip") else []
    assert main(["train", "--out", str(tmp_path / "run"), *extra, override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_extract_latents_command(capsys, tmp_path, latents):
    vae_root, _, _ = latents
    from conftest import make_image_folder

    images = make_image_folder(tmp_path / "images", sizes=((16, 16), (24, 20)))
    assert main(["extract-latents", str(images), "--vae", str(vae_root / "vae"), "--out", str(tmp_path / "lat"),
                 "--resolution", "16", "--batch-size", "2"]) == 0
    assert "latents written to" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "lat").iterdir()} >= {"meta.json", "mean.npy", "logvar.npy", "labels.npy"}


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_report_writes_tables_and_figures(capsys, tmp_path):
    import shutil
    from pathlib import Path

    root = tmp_path / "sweep"
    shutil.copytree(Path(__file__).parent / "golden" / "sweep", root)
    assert main(["report", str(root)]) == 0
    assert "report written to" in capsys.readouterr().out
    written = {p.name for p in (root / "report").iterdir()}
    assert {"runs.csv", "summary.csv", "variants.csv", "summary.md", "loss.png"} <= written
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_train_builds_the_objective_once_and_trains_with_it(tmp_path, monkeypatch):
    """Preflight builds the objective to check its options; the trainer uses that one, it builds no second."""
    import alphaflow.train.build as build
    import alphaflow.train.loop as loop

    built: list[object] = []

    def counting(options, steps):  # noqa: ANN001, ANN202
        built.append(objective_from_options(options, steps))
        return built[-1]

    from alphaflow.objectives import objective_from_options

    monkeypatch.setattr(build, "objective_from_options", counting)
    monkeypatch.setattr(loop, "objective_from_options", counting)
    seen: list[object] = []
    real_step = loop.training_step
    monkeypatch.setattr(loop, "training_step", lambda parts, *a, **k: (seen.append(parts.objective), real_step(parts, *a, **k))[1])
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "model.name=DiT-N/2", "train.steps=2", "train.batch_size=8",
                 "train.log_every=1", "train.ckpt_every=2", "train.sample_every=0", "data.stats_samples=16",
                 "train.threads=1"]) == 0
    assert len(built) == 1 and seen and all(o is built[0] for o in seen)
    assert (out / "DONE").exists()
