"""What a run folder keeps when its files are damaged or its start went wrong: checksummed checkpoints, the config
a resume is held to, a failed start that trained nothing, free keys, temporaries of killed writers, damaged
metrics lines, an invalid config.json. Each case is one line for the user and nothing they saved is lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from alphaflow.cli.main import main
from alphaflow.config import load_config
from alphaflow.run.files import read_checkpoint
from alphaflow.train.build import load_model
from alphaflow.run.folder import RunFolder
from alphaflow.train.loop import train

TINY = ["model.name=DiT-XT/2", "train.batch_size=8", "train.steps=6", "train.ckpt_every=2", "train.log_every=1",
        "train.sample_every=0", "sample.num=4", "data.stats_samples=64"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped at step 4 of 6: checkpoints at 2 and 4, metrics rows 1-4 (copied by ``run_copy``)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    train(load_config(None, TINY), out, stop_at=4, log=lambda _: None)
    return out


@pytest.fixture()
def run_copy(stopped, tmp_path):
    shutil.copytree(stopped, tmp_path / "run")
    return RunFolder(tmp_path / "run")


@pytest.fixture()
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def flip(path, tensor: torch.Tensor) -> None:
    """Invert the bytes of ``tensor`` where the file ``path`` stores them: torch.load still reads the file."""
    data, raw = bytearray(path.read_bytes()), tensor.contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) < 0, "the tensor's bytes are found once in the file"
    data[at:at + len(raw)] = bytes(b ^ 0xFF for b in raw)
    path.write_bytes(bytes(data))


def one_line(capsys, argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- 1. checkpoint checksums

def test_a_checkpoint_whose_tensor_bytes_changed_is_named_and_the_previous_one_resumes(run_copy):
    newest = run_copy.checkpoint_dir / "latest-00000004.pt"
    assert set(torch.load(newest, weights_only=True)["checksum"]["crc32"]) >= {"net", "ema", "opt"}
    flip(newest, read_checkpoint(newest)["opt"]["state"][0]["exp_avg"])
    assert torch.load(newest, weights_only=True)["step"] == 4, "torch itself does not notice"
    messages: list[str] = []
    result = train(load_config(None, TINY), run_copy.root, log=messages.append)
    assert f"warning: checkpoint {newest} is unreadable: checksum mismatch in its opt tensors" in messages[0], messages
    assert "resuming" in messages[1] and "latest-00000002.pt (step 2)" in messages[1], messages
    assert result.finished and [r["step"] for r in run_copy.read_metrics()] == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_written_before_checksums_loads_without_a_word(run_copy):
    newest = run_copy.checkpoint_dir / "latest-00000004.pt"
    ckpt = torch.load(newest, weights_only=True)
    del ckpt["checksum"]
    torch.save(ckpt, newest)
    messages: list[str] = []
    state, path = run_copy.load_checkpoint(report=messages.append)
    assert path == newest and state["step"] == 4 and "checksum" not in state and messages == []
    saved = run_copy.save_checkpoint(state, 8)
    assert "checksum" in torch.load(saved, weights_only=True) and "checksum" not in read_checkpoint(saved)


def test_with_no_usable_checkpoint_the_resume_is_refused_naming_them_and_nothing_changes(run_copy, capsys):
    for _, path in run_copy.checkpoints():
        flip(path, read_checkpoint(path)["net"]["final_layer.linear.weight"])
    before = {p.name: p.read_bytes() for p in [*run_copy.checkpoint_dir.iterdir(), run_copy.metrics_path]}
    err = one_line(capsys, ["train", "--out", str(run_copy.root), *TINY])
    assert err.startswith(f"alphaflow train: no checkpoint in {run_copy.checkpoint_dir} can be resumed from "
                          "(latest-00000004.pt, latest-00000002.pt: each is unreadable"), err
    assert {p.name: p.read_bytes() for p in [*run_copy.checkpoint_dir.iterdir(), run_copy.metrics_path]} == before


def test_the_commands_that_read_weights_check_the_ones_they_read(run_copy, capsys):
    newest = run_copy.checkpoint_dir / "latest-00000004.pt"
    flip(newest, read_checkpoint(newest)["opt"]["state"][0]["exp_avg_sq"])
    assert not load_model(run_copy.root).training, "Adam's moments are not what load_model reads"
    flip(newest, torch.load(newest, weights_only=True)["ema"]["final_layer.linear.weight"])
    with pytest.raises(ValueError, match=r"latest-00000004.pt is not a readable checkpoint: checksum mismatch in "
                                         r"its ema tensors"):
        load_model(run_copy.root)
    err = one_line(capsys, ["eval", str(run_copy.root), "--num-samples", "4"])
    assert f"{newest} is not a readable checkpoint: checksum mismatch in its ema tensors" in err, err


def test_a_file_of_random_bytes_is_named_as_truncated_or_damaged(run_copy):
    newest = run_copy.checkpoint_dir / "latest-00000004.pt"
    newest.write_bytes(os.urandom(50_000))
    with pytest.raises(ValueError, match=r"latest-00000004.pt is not a readable checkpoint: the file is truncated "
                                         r"or damaged \("):
        read_checkpoint(newest)
    lines: list[str] = []
    assert run_copy.load_checkpoint(report=lines.append)[0]["step"] == 2
    assert lines[0].startswith(f"warning: checkpoint {newest} is unreadable: the file is truncated or damaged")


# ----------------------------------------------------------------------------- 2 and 4. the config on resume

def test_with_config_json_gone_another_model_is_refused_and_a_thread_count_change_resumes(run_copy, capsys,
                                                                                          keep_threads):
    run_copy.config_path.unlink()
    err = one_line(capsys, ["train", "--out", str(run_copy.root), *TINY, "model.name=DiT-T/2"])
    assert "was trained with a different config" in err and "model.name: 'DiT-XT/2' → 'DiT-T/2'" in err, err
    assert not run_copy.config_path.exists() and [s for s, _ in run_copy.checkpoints()] == [4, 2]
    assert main(["train", "--out", str(run_copy.root), *TINY, "train.threads=1"]) == 0
    out = [line for line in capsys.readouterr().out.splitlines() if "train.threads" in line]
    assert out == [f"{run_copy.checkpoint_dir / 'latest-00000004.pt'}: changed keys (checkpoint → now): "
                   "train.threads: None → 1; they do not change the run's numbers, so the run resumes and "
                   "config.json records the new values"], out
    assert run_copy.is_done() and run_copy.read_config()["train"]["threads"] == 1


def test_a_thread_count_change_resumes_with_one_line_and_a_device_change_is_refused(run_copy, capsys, keep_threads):
    err = one_line(capsys, ["train", "--out", str(run_copy.root), *TINY, "train.threads=1", "train.device=cpu"])
    assert "Differing keys: train.device, train.threads" in err, err
    assert main(["train", "--out", str(run_copy.root), *TINY, "train.threads=1", "data.workers=0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{run_copy.config_path}: changed keys (config.json → now): train.threads: None → 1; they do "
                      "not change the run's numbers, so the run resumes and config.json records the new values"), out
    assert sum("train.threads" in line for line in out) == 1 and "latest-00000004.pt (step 4)" in out[1], out
    assert run_copy.is_done() and run_copy.read_config()["train"]["threads"] == 1


# ----------------------------------------------------------------------------- 3. a start that trained nothing

def test_a_start_that_trained_nothing_restarts_with_the_corrected_command_but_not_once_it_logged(stopped, tmp_path,
                                                                                                   capsys):
    out, source = tmp_path / "run", stopped / "checkpoints" / "latest-00000004.pt"
    err = one_line(capsys, ["train", "--out", str(out), *TINY, "train.steps=2", "model.name=DiT-T/2",
                            f"train.init_from={source}"])
    assert "its network weights do not fit this run's model" in err, err
    assert json.loads((out / "config.json").read_text())["model"]["name"] == "DiT-T/2", "the failed start's config"
    logged = RunFolder(shutil.copytree(out, tmp_path / "logged"))  # the same, after a metrics row
    logged.append_metrics({"step": 1, "loss": 1.0})
    err = one_line(capsys, ["train", "--out", str(logged.root), *TINY, "train.steps=2", f"train.init_from={source}"])
    assert "holds a different config; resuming would mix two runs" in err, err
    assert logged.read_config()["model"]["name"] == "DiT-T/2" and logged.read_metrics() == [{"step": 1, "loss": 1.0}]
    assert main(["train", "--out", str(out), *TINY, "train.steps=2", f"train.init_from={source}"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (f"{out / 'config.json'} held another config (differing keys: model.name) from a start that "
                       "trained nothing (no checkpoint, no metrics row); starting over with this command's config")
    run = RunFolder(out)
    assert run.is_done() and run.read_config()["model"]["name"] == "DiT-XT/2"


# ----------------------------------------------------------------------------- 5. temporaries of killed writers

def test_the_next_trainer_removes_the_temporaries_of_dead_writers_only(run_copy):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        left = run_copy.checkpoint_dir / f".latest-00000006.pt.tmp{int(dead.stdout)}"
        left.write_bytes(bytes(2 << 20))
        config_tmp = run_copy.root / f".config.json.tmp{int(dead.stdout)}"
        config_tmp.write_text("{")
        init_tmp = run_copy.root / f".init.json.tmp{int(dead.stdout)}"
        init_tmp.write_text("{")
        run_copy.samples_dir.mkdir(exist_ok=True)
        grid_tmp = run_copy.samples_dir / f".step-00000006-nfe1.png.tmp{int(dead.stdout)}"
        grid_tmp.write_bytes(bytes(1000))
        writing = run_copy.checkpoint_dir / f".latest-00000006.pt.tmp{live.pid}"
        writing.write_bytes(bytes(1000))
        not_ours = run_copy.root / f".notes.txt.tmp{int(dead.stdout)}"  # a user's file beside the run's: not touched
        not_ours.write_text("x")
        messages: list[str] = []
        assert train(load_config(None, TINY), run_copy.root, log=messages.append).finished
        assert messages[0] == (f"removed 4 temporary files of writes cut short in {run_copy.root} ({left.name}, "
                               f"{grid_tmp.name}, {config_tmp.name}, {init_tmp.name}; 2.0 MiB): their writers are no "
                               "longer running"), messages
        assert not any(p.exists() for p in (left, config_tmp, init_tmp, grid_tmp))
        assert writing.exists(), "a live writer's file is kept"
        assert not_ours.exists(), "only the run's own files' temporaries are removed"
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------------------- 6. damaged metrics lines

def test_a_damaged_metrics_line_before_the_last_is_named_and_its_text_kept(run_copy):
    lines = run_copy.metrics_path.read_bytes().split(b"\n")
    garbled = lines[1][:30] + b"\x00\xffgarbled" + lines[1][40:]
    lines[1] = garbled
    run_copy.metrics_path.write_bytes(b"\n".join(lines) + b'{"step": 5, "lo')  # and a torn last line
    messages: list[str] = []
    train(load_config(None, TINY), run_copy.root, log=messages.append)
    assert (f"warning: {run_copy.metrics_path} is damaged at line 2 (not a metrics row); the text is kept in "
            "metrics.damaged.jsonl and the run resumes without it") in messages, messages
    assert (run_copy.root / "metrics.damaged.jsonl").read_bytes() == garbled + b"\n", "only line 2, as it was"
    assert [r["step"] for r in run_copy.read_metrics()] == [1, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- 7. an invalid config.json

@pytest.mark.parametrize("text, problem", [('{"seed": 0,\n', "it is not JSON (Expecting property name enclosed in "
                                                                "double quotes: line 2 column 1)"),
                                           ("[1, 2]\n", "it holds a JSON list, not an object")])
def test_an_invalid_config_json_is_named(tmp_path, capsys, text, problem):
    config = tmp_path / "run" / "config.json"
    config.parent.mkdir()
    config.write_text(text)
    err = one_line(capsys, ["train", "--out", str(config.parent), *TINY])
    assert err.startswith(f"alphaflow train: {config} is not a valid run config: {problem}. Restore it, or delete "
                          "it"), err
    assert config.read_text() == text
