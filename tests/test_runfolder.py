"""The run-folder format: atomic files, rolling checkpoints, tolerant metrics, config checks."""

from __future__ import annotations

import io

import pytest

from alphaflow.train.progress import Progress
from alphaflow.runfolder import RunFolder


def test_rolling_checkpoints_keep_two_and_permanent_keeps_stay(tmp_path):
    run = RunFolder(tmp_path)
    for step in (10, 20, 30, 40):
        run.save_checkpoint({"step": step}, step, keep=step == 20)
    names = sorted(p.name for p in run.checkpoint_dir.iterdir())
    assert names == ["latest-00000030.pt", "latest-00000040.pt", "step-00000020.pt"]
    assert [s for s, _ in run.checkpoints()] == [40, 30, 20]
    state, path = run.load_checkpoint()
    assert state == {"step": 40} and path.name == "latest-00000040.pt"


def test_a_checkpoint_that_lies_about_its_step_is_skipped(tmp_path):
    run = RunFolder(tmp_path)
    run.save_checkpoint({"step": 5}, 5)
    run.save_checkpoint({"step": 5}, 6)  # file name says 6, content says 5
    messages: list[str] = []
    state, path = run.load_checkpoint(report=messages.append)
    assert path.name == "latest-00000005.pt" and "does not hold step 6" in messages[0]


def test_metrics_tolerate_a_torn_line_and_truncate(tmp_path):
    run = RunFolder(tmp_path)
    for step in (1, 2, 3):
        run.append_metrics({"step": step, "loss": step / 10})
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 4, "lo')
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    assert run.truncate_metrics(2) == 2  # row 3 and the torn line
    assert run.metrics_path.read_text() == '{"step": 1, "loss": 0.1}\n{"step": 2, "loss": 0.2}\n'
    with pytest.raises(ValueError, match="step"):
        run.append_metrics({"loss": 1.0})


def test_config_is_written_once_and_guarded(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.write_config({"a": 1, "b": {"c": 2}})
    run.write_config({"a": 1, "b": {"c": 2}})  # the same config: a resume
    with pytest.raises(ValueError, match="b.c"):
        run.write_config({"a": 1, "b": {"c": 3}})
    assert not run.is_done()
    run.mark_done({"step": 1})
    assert run.is_done() and not list((tmp_path / "r").glob(".*tmp*"))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_lines_elsewhere():
    lines: list[str] = []
    plain = Progress(10, 0, stream=io.StringIO(), say=lines.append)
    plain.step(5)
    plain.tick(5, {"loss": 0.5, "alpha": 1.0})
    assert len(lines) == 1 and lines[0].startswith("step 5/10  loss 0.5  alpha 1") and "ETA" in lines[0]
    screen = _Tty()
    bar = Progress(10, 0, stream=screen, say=lines.append)
    bar.step(5)
    bar.tick(5, {"loss": 0.5})
    bar.close()
    assert len(lines) == 1 and "5/10" in screen.getvalue()
