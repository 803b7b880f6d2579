"""A new user's faults end in one line on stderr, the right exit code, and nothing saved lost (docs: README's
first screen; alphaflow.run.errors). Each test reproduces one fault as a user meets it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alphaflow.cli.main import main
from alphaflow.run.errors import RunFailed
from alphaflow.launch.executors import run_inline
from alphaflow.launch.sweeps import load_sweep
from alphaflow.run.folder import RunFolder, run_status
from alphaflow.train.loop import NonFiniteLossError

TINY = ["model.name=DiT-XT/2", "train.batch_size=8", "train.sample_every=0"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write_sweep(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_a_diverging_run_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    def diverge(cfg, out, **_):
        raise NonFiniteLossError(f"the loss was non-finite for 3 consecutive steps, last at step 7; kept in {out}")

    monkeypatch.setattr("alphaflow.launch.training.train_run", diverge)
    assert main(["train", "--out", str(tmp_path / "run"), *TINY]) == 1
    assert one_line(capsys.readouterr().err).startswith("alphaflow train: the loss was non-finite for 3")


def test_an_inline_sweep_records_a_failed_run_and_goes_on(tmp_path, monkeypatch, capsys):
    path = write_sweep(tmp_path, "name: f\nbase: {train: {steps: 4}}\nvariants: {a: {}, b: {optim.lr: 0.5}}\n"
                                 "seeds: [0, 1]\n")
    runs, root = load_sweep(path).runs, tmp_path / "root"
    trained = []

    def train(cfg, out, log=None):
        if cfg.optim.lr == 0.5 and cfg.seed == 0:
            raise NonFiniteLossError("the loss was non-finite for 3 consecutive steps\nsecond line")
        trained.append(Path(out).name)
        RunFolder(out).mark_done({})

    monkeypatch.setattr("alphaflow.launch.training.train_run", train)
    messages: list[str] = []
    with pytest.raises(RunFailed, match=r"1 of 4 runs failed \(b-s0-"):
        run_inline(runs, root, log=messages.append)
    failed = next(r for r in runs if r.variant == "b" and r.config.seed == 0)
    assert len(trained) == 3 and failed.name not in trained, "the runs after the failed one still train"
    assert run_status(root / failed.name).state == "failed"
    assert "NonFiniteLossError" in (root / failed.name / "error.txt").read_text()
    assert f"failed: {failed.name}: the loss was non-finite for 3 consecutive steps" in messages

    # the command line: one line, exit 1, and `--status` says failed
    capsys.readouterr()
    assert main(["sweep", str(path), "--root", str(root), "--executor", "inline"]) == 1
    err = capsys.readouterr().err
    assert one_line(err).startswith("alphaflow sweep: 1 of 4 runs failed"), err
    assert main(["sweep", str(path), "--root", str(root), "--status"]) == 0
    status = [line for line in capsys.readouterr().out.splitlines() if failed.name in line]
    assert status and status[0].startswith("failed"), status


@pytest.mark.slow
def test_ctrl_c_ends_with_130_and_says_where_to_resume(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "alphaflow", "train", "--out", str(run), *TINY, "train.steps=100000",
           "train.ckpt_every=5", "train.log_every=5", "train.threads=1"]
    # SIGINT at its default in the child: a shell's background job (CI may run one) inherits it ignored
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not RunFolder(run).checkpoints() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    line = one_line(err)
    step = RunFolder(run).checkpoints()[0][0]
    assert line.startswith("alphaflow train: interrupted: after step ") and f"checkpoint of step {step}:" in line
    assert line.endswith("the same command resumes from there")


@pytest.mark.parametrize("command,verb", [(["eval"], "evaluate"), (["sample", "--out", "grid.png"], "sample"),
                                          (["probe"], "probe")])
def test_a_run_without_checkpoints_says_to_train_it_first(command, verb, tmp_path, capsys, monkeypatch):
    from alphaflow.config import Config, to_dict

    monkeypatch.chdir(tmp_path)
    RunFolder(tmp_path / "run").write_config(to_dict(Config()))
    assert main([command[0], str(tmp_path / "run"), *command[1:]]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"alphaflow {command[0]}: {tmp_path / 'run'} has no checkpoint to {verb} yet: ")
    assert line.endswith(f"then {verb} it")
    assert "train.ckpt_every" in line and "keep_every" not in line and "the same `alphaflow train` resumes it" in line


def test_more_bad_inputs_get_one_line(tmp_path, capsys):
    """Found by trying bad inputs beyond the issue's list: each is refused in one line with exit 2."""
    sweep = write_sweep(tmp_path, "name: ok\nvariants: {a: {}}\nseeds: [0]\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cases = [
        (["sweep", str(sweep), "--wait", "--wait-every", "-1", "--dry-run"], "--wait-every is the seconds between"),
        (["sweep", str(sweep), "--root", str(a_file), "--executor", "inline"], f"--root {a_file} is a file"),
        (["unlock", str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'} is not a folder"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"alphaflow {argv[0]}: {expected}"), (argv, line)
    assert not (tmp_path / "runs").exists() and a_file.read_text() == ""


def test_a_ctrl_c_that_a_callback_swallows_still_stops_the_run_at_the_next_step(tmp_path, capsys, monkeypatch):
    """Python raises KeyboardInterrupt wherever the main thread is; inside a weakref or GC callback it is printed
    as "Exception ignored" and lost, and training went on (seen once in CI). The handler also sets the flag the
    loop polls after every step, so the run stops there with a checkpoint and the command exits 130."""
    polled: list[bool] = []

    def fake_train(cfg, out, *, objective, should_stop):  # noqa: ANN001, ANN202
        handler = signal.getsignal(signal.SIGINT)
        assert handler is not signal.default_int_handler and callable(handler)
        assert not should_stop()
        try:
            handler(signal.SIGINT, None)  # the signal arrives inside a callback ...
        except KeyboardInterrupt:
            pass  # ... that swallows it
        polled.append(should_stop())  # the loop's next step boundary
        RunFolder(out).root.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr("alphaflow.launch.training.train_run", fake_train)
    assert main(["train", "--out", str(tmp_path / "run"), *TINY]) == 130
    assert polled == [True]
    assert one_line(capsys.readouterr().err).startswith("alphaflow train: interrupted: ")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is put back"
