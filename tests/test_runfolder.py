"""The run-folder format: atomic files, rolling checkpoints, tolerant metrics, config checks."""

from __future__ import annotations

import io

import pytest

from alphaflow.train.progress import Progress
from alphaflow.run.folder import STATES, RunFolder, State, read_jsonl, run_status, scan_jsonl
from alphaflow.run.files import CHECKPOINT_KEYS


def ckpt(step: int) -> dict:
    """The smallest dict with a training checkpoint's keys (what read_checkpoint accepts)."""
    return {**{k: {} for k in CHECKPOINT_KEYS}, "format": 1, "step": step}


def test_rolling_checkpoints_keep_two_and_permanent_keeps_stay(tmp_path):
    run = RunFolder(tmp_path)
    for step in (10, 20, 30, 40):
        run.save_checkpoint(ckpt(step), step, keep=step == 20)
    names = sorted(p.name for p in run.checkpoint_dir.iterdir())
    assert names == ["latest-00000030.pt", "latest-00000040.pt", "step-00000020.pt"]
    assert [s for s, _ in run.checkpoints()] == [40, 30, 20]
    state, path = run.load_checkpoint()
    assert state == ckpt(40) and path.name == "latest-00000040.pt"


def test_a_checkpoint_that_lies_about_its_step_is_skipped(tmp_path):
    run = RunFolder(tmp_path)
    run.save_checkpoint(ckpt(5), 5)
    run.save_checkpoint(ckpt(5), 6)  # file name says 6, content says 5
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


def test_the_one_jsonl_reader_skips_and_counts_a_torn_last_line(tmp_path):
    path = tmp_path / "eval.jsonl"
    assert scan_jsonl(path) == ([], 0), "a missing file is no rows"
    path.write_text('{"step": 1, "x": NaN}\n\n[1, 2]\n{"nfe": 1}\n{"step": 2, "x": 0.5}\n{"step": 3, "x')
    rows, skipped = scan_jsonl(path)
    assert [r["step"] for r in rows] == [1, 2] and skipped == 3, "a list, a row without step and the torn line"
    assert rows[0]["x"] != rows[0]["x"], "json.dumps writes NaN; it reads back"
    assert scan_jsonl(path, require=None) == (rows[:1] + [{"nfe": 1}] + rows[1:], 2)
    assert read_jsonl(path) == rows
    path.write_bytes(b'{"step": 1}\n{"step": 2, "note": "\xff"}\n')  # bytes that are not UTF-8 do not raise
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


def test_run_status_words(tmp_path):
    assert set(STATES) == {"new", "empty", "pending", "running", "incomplete", "done", "failed"}
    run = RunFolder(tmp_path / "r")
    assert run_status(run).state == State.NEW and run_status(run.root).state == "new"
    run.root.mkdir()
    assert run_status(run).state == "empty"
    run.write_job({"job_id": "7", "executor": "slurm"})
    lookup = {"7": "PENDING"}.get
    assert run_status(run, lambda executor, job: lookup(job, "")).state == "pending"
    assert run_status(run).state == "empty", "pending and running come from the scheduler only"
    run.append_metrics({"step": 2})
    assert run_status(run).state == "incomplete" and run_status(run, logged=False).state == "empty"
    status = run_status(run, lambda executor, job: "RUNNING")
    assert (status.state, status.detail, status.job["job_id"]) == ("running", "RUNNING", "7")
    run.write_error("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    assert run_status(run) == run_status(run.root) and run_status(run).detail == "RuntimeError: boom"
    run.clear_error()
    run.write_job({"job_id": "7", "executor": "slurm", "state": "OUT_OF_MEMORY"})
    assert (run_status(run).state, run_status(run).detail) == ("failed", "OUT_OF_MEMORY")
    run.job_path.write_text('{"job_id": "7", "exec')
    problems: list[str] = []
    assert run_status(run, problems=problems).state == "incomplete" and problems == ["r: unreadable job.json (JSONDecodeError)"]
    run.write_error("")
    run.mark_done({"step": 2})
    assert run_status(run, lambda executor, job: "RUNNING").state == "done", "DONE wins over everything"


def test_run_json_is_written_and_read(tmp_path):
    run = RunFolder(tmp_path / "r")
    assert run.read_info() == {}
    run.write_info(sweep="demo", variant="meanflow-fm75", seed=2, config_hash="0123456789")
    assert run.read_info() == {"sweep": "demo", "variant": "meanflow-fm75", "seed": 2, "config_hash": "0123456789"}
    assert run.info_path.name == "run.json"


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
