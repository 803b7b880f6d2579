"""``alphaflow sweep FILE --smoke`` (alphaflow.launch.smoke): what a rehearsal shrinks and what it keeps, for every
committed sweep file; the end-to-end rehearsal of the ImageNet path is tests/test_smoke_imagenet.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alphaflow.cli.main import main
from alphaflow.config import to_dict
from alphaflow.launch.smoke import SMOKE_BATCH, describe, shrink_config, smoke_sweep
from alphaflow.launch.sweeps import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml")) + sorted((ROOT / "sweeps" / "imagenet").glob("*.yaml"))
# what decides *what* is trained: a rehearsal keeps these sections exactly as the file has them
KEPT = ("seed", "objective", "optim", "ema", "conflict")


def test_every_committed_sweep_file_is_found():
    assert len(SWEEPS) >= 16 and any(p.parent.name == "imagenet" for p in SWEEPS)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_smoke_keeps_what_is_trained_and_shrinks_size_and_length(path):
    real = load_sweep(path)
    small, shrunk = smoke_sweep(real, steps=4)
    assert len(small.runs) == len(real.runs) and small.name == f"{real.name}-smoke"
    assert small.resources == real.resources  # checked and shown, never rewritten
    for r, s in zip(real.runs, small.runs):
        a, b = to_dict(r.config), to_dict(s.config)
        for section in KEPT:
            assert a[section] == b[section], (r.name, section)
        assert {k: v for k, v in a["data"].items() if k != "workers"} == \
               {k: v for k, v in b["data"].items() if k != "workers"}
        assert b["data"]["workers"] == min(a["data"]["workers"], len(os.sched_getaffinity(0)))
        assert a["sample"]["nfe"] == b["sample"]["nfe"] and a["sample"]["sampler"] == b["sample"]["sampler"]
        assert a["train"]["init_from"] == b["train"]["init_from"]
        train = s.config.train
        assert train.steps == min(4, r.config.train.steps) and train.batch_size <= SMOKE_BATCH
        assert train.device == "cpu" and train.log_every == 1 and train.ckpt_every == 2
        assert s.config.model.name.split("-")[1].split("/")[0] in ("T", "XT", "N")
        assert s.config.model.name.split("/")[1] == r.config.model.name.split("/")[1]  # the patch size stays
        assert s.name.rsplit("-", 1)[0] == r.name.rsplit("-", 1)[0] and s.name != r.name
    # the table names every key that changed in some run, with the file's values and the rehearsal's
    keys = {row.key for row in shrunk}
    assert {"train.steps", "train.batch_size", "train.device"} <= keys
    text = describe(path, small, shrunk, Path("runs/x"), 4)
    for row in shrunk:
        assert row.key in text and str(row.after[0]) in text


def test_imagenet_b2_becomes_xt2_with_block_counts_at_the_same_share():
    small, shrunk = smoke_sweep(load_sweep(ROOT / "sweeps/imagenet/family_b2.yaml"))
    by = {r.variant: r.config for r in small.runs}
    assert {c.model.name for c in by.values()} == {"DiT-XT/2"}
    assert by["decoupled_meanflow"].model.decouple_at == 3  # 8 of B's 12 blocks → 3 of XT's 4
    assert by["imf"].model.aux_head_depth == 3 and by["imf"].model.guidance_embed
    row = {s.key: s for s in shrunk}["model.decouple_at"]
    assert (row.before, row.after, row.runs) == ([8], [3], 1)
    xl = smoke_sweep(load_sweep(ROOT / "sweeps/imagenet/table1_xl2_cfg.yaml"))[0].runs[0].config
    assert xl.model.name == "DiT-XT/2" and xl.objective.guidance.omega == 0.2 and xl.objective.guidance.t_max == 0.75


def test_cpu_sized_models_and_small_values_are_kept():
    cfg = load_sweep(ROOT / "sweeps/fm_baseline.yaml").runs[0].config
    small, changes = shrink_config(cfg, steps=6)
    assert "model.name" not in changes and small.model.name == cfg.model.name == "DiT-T/2"
    assert changes["train.steps"] == 6 and changes["train.ckpt_every"] == 3
    assert "probe.every" not in changes and small.probe.every == 0  # off stays off
    short = shrink_config(small, steps=6)[1]
    assert "train.steps" not in short and "train.batch_size" not in short  # nothing left to shrink there


def test_smoke_errors_name_the_flag(capsys):
    path = str(ROOT / "sweeps/fm_baseline.yaml")
    assert main(["sweep", path, "--smoke-steps", "3"]) == 2
    assert "--smoke-steps" in capsys.readouterr().err
    assert main(["sweep", path, "--smoke", "--executor", "slurm"]) == 2
    assert "--executor slurm" in capsys.readouterr().err
    assert main(["sweep", path, "--smoke", "--smoke-steps", "1", "--dry-run"]) == 2
    assert "--smoke-steps must be >= 2" in capsys.readouterr().err


def test_smoke_dry_run_lists_shrunk_runs_and_the_real_batch_script(capsys, tmp_path):
    path = str(ROOT / "sweeps/imagenet/table2a_schedules.yaml")
    assert main(["sweep", path, "--smoke", "--dry-run", "--root", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "model.name              DiT-B/2 -> DiT-XT/2" in out and "train.steps             400000 -> 4" in out
    assert "#SBATCH --gpus-per-node=8" in out and "#SBATCH --array=0-6%7" in out  # the file's 7 × 8 GPUs
    assert out.count("\nnew ") == 7 and not (tmp_path / "r").exists()  # a dry run writes nothing


def test_overrides_may_follow_flags(capsys, tmp_path):
    """`sweep FILE --smoke data.path=X`: key=value after a flag still reaches the runs; a stray word does not."""
    path = str(ROOT / "sweeps/fm_baseline.yaml")
    assert main(["sweep", path, "--dry-run", "--root", str(tmp_path), "train.steps=7"]) == 0
    assert "train.steps=7" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sweep", path, "--dry-run", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err
