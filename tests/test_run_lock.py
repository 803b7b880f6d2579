"""One trainer per run folder (alphaflow/run/lock.py, docs/locking.md): refusals name the holder, stale locks are
taken over with a line, a locked run reads as running, and `alphaflow unlock` clears another host's record."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import alphaflow.run.lock as runlock
from alphaflow.run.folder import RunFolder, run_status
from alphaflow.run.lock import LOCK_FILE, RunLocked, break_lock, lock_holder, read_holder, run_lock

REPO = Path(__file__).resolve().parents[1]
ALPHAFLOW = [sys.executable, "-m", "alphaflow"]


def write_record(root: Path, **fields) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": 1, "since": "2026-01-01T00:00:00+0000", "job": None,
              "started": None, **fields}
    path = root / LOCK_FILE
    path.write_text(json.dumps(record))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_lock_is_refused_naming_the_holder_and_released_locks_can_be_taken(tmp_path):
    run = tmp_path / "run"
    with run_lock(run, say=lambda _: None):
        holder = lock_holder(run)
        assert holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname()
        with pytest.raises(RunLocked) as refused:  # another open file description: flock says no
            run_lock(run, say=lambda _: None).acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message and "since 20" in message
        assert f"kill {os.getpid()}" in message
        status = run_status(run)
        assert status.state == "running" and status.detail.startswith("locked by pid")
    assert lock_holder(run) is None and (run / LOCK_FILE).read_text() == "", "released: the record is cleared"
    assert run_status(run).state == "empty"
    with run_lock(run, say=lambda _: None):
        pass


def test_the_record_of_a_dead_process_on_this_host_is_taken_over_with_a_line(tmp_path):
    pid = dead_pid()
    write_record(tmp_path, pid=pid, started="123")
    assert lock_holder(tmp_path) is None and run_status(tmp_path).state != "running"
    lines: list[str] = []
    with run_lock(tmp_path, say=lines.append):
        assert read_holder(tmp_path / LOCK_FILE).pid == os.getpid()
    assert lines == [f"taking over the lock of {tmp_path} left by pid {pid} on {socket.gethostname()}, since "
                     "2026-01-01T00:00:00+0000, last heartbeat 0 s ago: that process is no longer running"]


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path):
    write_record(tmp_path, pid=os.getppid(), started="1")  # a live process, but not the one that locked
    assert lock_holder(tmp_path) is None


def test_another_hosts_fresh_record_refuses_with_the_unlock_command_and_a_stale_one_is_taken_over(tmp_path):
    path = write_record(tmp_path, host="node-b", pid=4242, job="777_3")
    status = run_status(tmp_path)
    assert status.state == "running" and "pid 4242 on node-b, SLURM job 777_3" in status.detail
    with pytest.raises(RunLocked) as refused:
        run_lock(tmp_path, say=lambda _: None).acquire()
    assert f"alphaflow unlock {tmp_path}" in str(refused.value) and "scancel 777_3" in str(refused.value)
    old = time.time() - runlock.STALE_S - 5
    os.utime(path, (old, old))
    lines: list[str] = []
    with run_lock(tmp_path, say=lines.append):
        pass
    assert len(lines) == 1 and "left by pid 4242 on node-b" in lines[0] and "heartbeat stopped" in lines[0]


def test_unlock_clears_another_hosts_record_and_refuses_a_live_local_holder(tmp_path):
    write_record(tmp_path, host="node-b", pid=4242)
    assert break_lock(tmp_path).startswith(f"cleared the lock of {tmp_path} (it was held by pid 4242 on node-b")
    with run_lock(tmp_path, say=lambda _: None):
        pass  # no refusal once cleared
    with run_lock(tmp_path, say=lambda _: None):
        with pytest.raises(RunLocked, match=f"running on this host; stop it first \\(kill {os.getpid()}\\)"):
            break_lock(tmp_path)
    assert break_lock(tmp_path) == f"{tmp_path} is not locked"


def test_a_requeued_slurm_job_takes_over_its_earlier_attempts_record(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "900")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    write_record(tmp_path, host="node-a", pid=4242, job="900_2")  # fresh, another host: would refuse otherwise
    lines: list[str] = []
    with run_lock(tmp_path, say=lines.append):
        assert read_holder(tmp_path / LOCK_FILE).job == "900_2"
    assert len(lines) == 1 and "from an earlier attempt of this job" in lines[0]


def test_the_heartbeat_touches_the_lock_file(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    with run_lock(tmp_path, say=lambda _: None):
        path = tmp_path / LOCK_FILE
        old = time.time() - 100
        os.utime(path, (old, old))
        deadline = time.time() + 10
        while read_holder(path).age > 50:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.05)


def test_a_lock_held_by_another_process_shows_the_run_as_running_until_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from alphaflow.run.lock import run_lock
        lock = run_lock({str(tmp_path)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_status(tmp_path).state == "running"
        with pytest.raises(RunLocked, match=f"pid {holder.pid} on"):
            run_lock(tmp_path, say=lambda _: None).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert run_status(tmp_path).state != "running", "SIGKILL: the kernel dropped the flock, the pid is gone"
    lines: list[str] = []
    with run_lock(tmp_path, say=lines.append):
        pass
    assert "no longer running" in lines[0]


@pytest.mark.slow
def test_two_trainers_on_one_folder_the_second_is_refused_and_a_killed_one_is_taken_over(tmp_path):
    run = RunFolder(tmp_path / "run")
    cmd = [*ALPHAFLOW, "train", "--out", str(run.root), "model.name=DiT-N/2", "train.steps=3000",
           "train.batch_size=8", "train.log_every=5", "train.ckpt_every=20", "train.sample_every=0",
           "data.stats_samples=16", "train.threads=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not run.checkpoints():
            assert time.time() < deadline and first.poll() is None, "the first trainer did not get going"
            time.sleep(0.2)
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second
        assert "Traceback" not in second.stderr and second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith(f"alphaflow train: {run.root} is in use by pid {first.pid} on "), second.stderr
        assert first.poll() is None, "the first trainer goes on"
    finally:
        first.kill()
        first.wait()
    steps = [r["step"] for r in run.read_metrics()]
    assert steps == sorted(set(steps)), "the second process wrote nothing"
    third = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [third.stdout.readline() for _ in range(3)]
    finally:
        third.kill()
        third.wait()
    assert lines[0].startswith(f"taking over the lock of {run.root} left by pid {first.pid}"), lines
    assert "that process is no longer running" in lines[0]
    if lines[1].startswith("removed 1 temporary file"):
        # the kill can land while the first trainer writes a checkpoint: its temporary file is
        # named after its pid and the third trainer clears it before resuming
        assert f".tmp{first.pid}" in lines[1] and "no longer running" in lines[1], lines
        lines.pop(1)
    assert lines[1].startswith(f"resuming {run.root} from latest-"), lines
