"""Bad inputs end with one line on stderr that names the input, exit code 2 and no traceback (alphaflow.cli.main);
``--debug`` shows the traceback instead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alphaflow.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.name=DiT-N/2", "train.steps=2", "train.batch_size=8", "train.sample_every=0", "data.stats_samples=16"]


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_batch_larger_than_the_dataset_is_refused_before_the_folder_gets_a_config(capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), *TINY, "train.batch_size=5000"])
    assert err == ("alphaflow train: train.batch_size=5000 exceeds the size of dataset 'digits' (1797 samples); "
                   "use train.batch_size <= 1797\n")
    assert not (tmp_path / "r" / "config.json").exists(), "so the corrected command can use the same --out"


def test_an_out_folder_holding_another_config_is_refused_in_one_line(capsys, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed": 5}))
    err = one_line_error(capsys, ["train", "--out", str(run), *TINY])
    assert err.startswith(f"alphaflow train: {run / 'config.json'} holds a different config; resuming would mix two "
                          "runs. Differing keys: ")
    assert json.loads((run / "config.json").read_text()) == {"seed": 5}, "the folder is left as it was"


def test_an_out_folder_that_cannot_be_created_is_named(capsys):
    err = one_line_error(capsys, ["train", "--out", "/proc/alphaflow-test/run", *TINY])
    assert err.startswith("alphaflow train: /proc/alphaflow-test/run: cannot create this folder or its lock file (")


@pytest.mark.parametrize("command", ["sweep", "train"])
def test_a_yaml_syntax_error_names_the_file_line_and_column(capsys, tmp_path, command):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nvariants: {a: {seed: 1}\n  bad: [\n")
    argv = ["sweep", str(path), "--executor", "inline"] if command == "sweep" else ["train", "--out",
                                                                                   str(tmp_path / "r"), "--config",
                                                                                   str(path)]
    err = one_line_error(capsys, argv)
    assert err == f"alphaflow {command}: {path}: not valid YAML at line 3, column 3: expected ',' or '}}', but got '<scalar>'\n"


def test_a_folder_given_as_a_sweep_file_is_named(capsys, tmp_path):
    (tmp_path / "sweep.yaml").mkdir()
    err = one_line_error(capsys, ["sweep", str(tmp_path / "sweep.yaml"), "--dry-run"])
    assert err == f"alphaflow sweep: {tmp_path / 'sweep.yaml'}: cannot read this file (Is a directory)\n"


def test_extract_latents_names_a_missing_image_folder(capsys, tmp_path):
    err = one_line_error(capsys, ["extract-latents", str(tmp_path / "none"), "--vae", str(tmp_path),
                                  "--out", str(tmp_path / "lat")])
    assert err == f"alphaflow extract-latents: image folder '{tmp_path / 'none'}' does not exist\n"


def test_unlock_of_a_folder_that_is_not_locked_says_so(capsys, tmp_path):
    assert main(["unlock", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{tmp_path} is not locked\n"


@pytest.mark.slow
def test_the_console_command_exits_2_without_a_traceback_and_debug_shows_it(tmp_path):
    argv = [sys.executable, "-m", "alphaflow", "train", "--out", str(tmp_path / "r"), "train.steps=x"]
    plain = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr == "alphaflow train: config key 'train.steps' expects int, got 'x' (str)\n"
    debug = subprocess.run([*argv, "--debug"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError: config key 'train.steps' expects int" in debug.stderr
