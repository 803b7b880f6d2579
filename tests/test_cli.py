"""The ``alphaflow`` command and the few-step demo (the main job until the trainer lands)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from alphaflow.cli import main
from alphaflow.demo import run_demo


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "models"):
        assert command in out


def test_models_lists_registry_with_counts(capsys):
    assert main(["models", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("DiT-XL/2 "))
    assert int(line.split()[-1].replace(",", "")) == pytest.approx(675e6, rel=0.01)


def test_demo_trains_and_writes_grids(tmp_path):
    lines: list[str] = []
    summary = run_demo(tmp_path, steps=3, batch=8, model="DiT-N/2", num_samples=16, log=lines.append, log_every=1)
    assert set(summary) == {"fm", "meanflow", "alphaflow"}
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk.keys() == summary.keys()
    for key, row in summary.items():
        assert on_disk[key] == pytest.approx(row)
        assert all(value == value and abs(value) < 1e6 for value in row.values()), row  # finite numbers
    for key in summary:
        for nfe in (1, 2):
            with Image.open(tmp_path / "samples" / f"{key}_nfe{nfe}.png") as image:
                # 16 samples in rows of 8: 2 rows of (8 + 1 pad) pixels + 1, upscaled 4×
                assert image.size == (4 * (8 * 9 + 1), 4 * (2 * 9 + 1))
    assert any("alphaflow" in line and "step    2" in line for line in lines)
