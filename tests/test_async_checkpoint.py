"""Checkpoints written in the background (``alphaflow.train.checkpointing``): the file holds the state of the
moment ``save`` returned, a failed write is the synchronous path's one-line error at the next call, a kill -9
mid-write leaves the previous checkpoint and an exact resume, and ``train.async_ckpt`` changes no bit."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import alphaflow.run.files as files
import alphaflow.run.folder as runfolder
from alphaflow.config import load_config
from alphaflow.run.errors import WriteFailed
from alphaflow.run.files import read_checkpoint
from alphaflow.run.folder import RunFolder
from alphaflow.train.checkpointing import AsyncCheckpointer, PinnedArena, snapshot
from alphaflow.train.callbacks import Callback
from alphaflow.train.loop import train

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.name=DiT-N/2", "train.steps=6", "train.batch_size=8", "train.log_every=2", "train.ckpt_every=2",
        "train.sample_every=0", "sample.num=4", "ema.halflife_steps=2", "data.stats_samples=32"]


def checkpoint_state(step: int, numel: int = 1000) -> dict:
    """A state in the checkpoint layout (``read_checkpoint`` accepts it) with state-dict-like nesting."""
    weights = {"w": torch.full((numel,), float(step)), "b": torch.arange(4.0)}
    opt = {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.ones(8)}},
           "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}]}
    return {"format": 1, "step": step, "config": {}, "net": weights, "ema": {}, "opt": opt, "data_stats": {},
            "state": {"step": step, "tick": {"sums": {"loss": 0.5}}}, "rng": []}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def test_the_file_holds_the_state_of_the_moment_save_returned(tmp_path, monkeypatch):
    release = threading.Event()
    real = runfolder.save_torch_atomic

    def held(obj, path, what=None):  # the write starts only after the trainer has changed everything
        assert release.wait(10)
        real(obj, path, what=what)

    monkeypatch.setattr(runfolder, "save_torch_atomic", held)
    run, state = RunFolder(tmp_path / "run"), checkpoint_state(10)
    writer = AsyncCheckpointer(run)
    writer.save(state, 10)
    assert writer.in_flight
    state["net"]["w"].add_(1.0)  # Adam and the EMA change the weights in place ...
    state["opt"]["state"][0]["exp_avg"].zero_()
    state["opt"]["param_groups"][0]["lr"] = 0.2  # ... and the loop its containers
    state["state"]["tick"]["sums"]["loss"] = 9.0
    release.set()
    writer.wait()
    saved = read_checkpoint(run.checkpoints()[0][1])
    assert torch.equal(saved["net"]["w"], torch.full((1000,), 10.0))
    assert torch.equal(saved["opt"]["state"][0]["exp_avg"], torch.ones(8))
    assert saved["opt"]["param_groups"][0]["lr"] == 0.1 and saved["state"]["tick"]["sums"]["loss"] == 0.5
    writer.close()


def test_a_snapshot_keeps_views_shared_and_shares_nothing_with_the_state():
    base = torch.arange(10.0)
    tree = {"a": base, "b": base[2:5], "n": [1, "x", (2.0, None)]}
    copy = snapshot(tree)
    assert copy["b"].untyped_storage().data_ptr() == copy["a"].untyped_storage().data_ptr()
    assert copy["a"].untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    assert copy["b"].storage_offset() == 2 and torch.equal(copy["b"], base[2:5])
    assert copy["n"] == tree["n"] and copy["n"] is not tree["n"]


class HostArena(PinnedArena):
    """The arena's packing, exercised without a GPU: host storages are staged too, in small unpinned chunks."""

    CHUNK = 4096

    def stages(self, storage: torch.UntypedStorage) -> bool:
        return True


def test_the_arena_packs_the_state_and_is_refilled_in_place_by_the_next_save(tmp_path):
    run, arena = RunFolder(tmp_path / "run"), HostArena(pin=False)
    state = checkpoint_state(10, numel=2000)  # 8000 bytes: a chunk of its own; the rest shares one
    base = torch.arange(10.0)
    state["net"].update(view=base[2:5], base=base)
    writer = AsyncCheckpointer(run, arena=arena)
    writer.save(state, 10)
    state["net"]["w"].add_(1.0)
    writer.wait()
    chunks = [c.data_ptr() for c in arena.chunks]
    assert [c.nbytes() for c in arena.chunks] == [8000, 4096]
    writer.save(state, 11)
    state["net"]["w"].add_(1.0)
    writer.close()
    assert [c.data_ptr() for c in arena.chunks] == [] and writer.arena is arena  # close let the memory go
    for step, value in ((10, 10.0), (11, 11.0)):
        saved = read_checkpoint(run.checkpoint_dir / f"latest-{step:08d}.pt")
        assert torch.equal(saved["net"]["w"], torch.full((2000,), value))
        assert torch.equal(saved["net"]["view"], base[2:5]) and saved["net"]["view"].storage_offset() == 2
        assert torch.equal(saved["opt"]["state"][0]["exp_avg"], torch.ones(8))
    assert len(chunks) == 2


def _fail_writes_of(monkeypatch, name: str, code: int = errno.ENOSPC) -> None:
    """Writes of checkpoint ``name`` fail with ``code`` (a full disk, an I/O error), as torch's writer meets it."""
    real = files._Recorder.write

    def write(self, b):
        if f".{name}.tmp" in self.f.name:
            self.error = OSError(code, os.strerror(code))
            raise self.error
        return real(self, b)

    monkeypatch.setattr(files._Recorder, "write", write)


def test_a_failed_background_write_is_the_synchronous_error_at_the_next_call(tmp_path, monkeypatch):
    _fail_writes_of(monkeypatch, "latest-00000020.pt", errno.EIO)  # EIO: no free-space figure in the message
    run = RunFolder(tmp_path / "run")
    with pytest.raises(WriteFailed) as synchronous:
        run.save_checkpoint(checkpoint_state(20), 20)
    writer = AsyncCheckpointer(run)
    writer.save(checkpoint_state(10), 10)
    writer.save(checkpoint_state(20), 20)  # waits for 10, then fails in the background
    while writer.in_flight:
        time.sleep(0.01)
    assert writer.failed()
    with pytest.raises(WriteFailed) as polled:
        writer.poll()
    assert type(polled.value) is type(synchronous.value) and str(polled.value) == str(synchronous.value)
    assert str(polled.value).startswith(f"could not write checkpoint latest-00000020.pt in {run.checkpoint_dir}: "
                                        "Input/output error")
    assert not writer.failed() and writer.close() is None  # raised once
    assert [s for s, _ in run.checkpoints()] == [10] and leftovers(tmp_path) == []
    assert torch.equal(read_checkpoint(run.checkpoints()[0][1])["net"]["w"], torch.full((1000,), 10.0))

    writer = AsyncCheckpointer(run)  # the next save raises it and writes nothing; close can return it instead
    writer.save(checkpoint_state(20), 20)
    with pytest.raises(WriteFailed, match="latest-00000020.pt"):
        writer.save(checkpoint_state(30), 30)
    writer.save(checkpoint_state(20), 20)
    assert isinstance(writer.close(raise_error=False), WriteFailed)
    assert [s for s, _ in run.checkpoints()] == [10]


def test_the_trainer_stops_at_a_failed_background_write_with_its_one_line(tmp_path, monkeypatch):
    _fail_writes_of(monkeypatch, "latest-00000002.pt")
    with pytest.raises(WriteFailed, match=r"^could not write checkpoint latest-00000002.pt in .*No space left"):
        train(load_config(None, TINY), tmp_path / "run", log=lambda _: None)
    run = RunFolder(tmp_path / "run")
    assert run.checkpoints() == [] and not run.is_done() and leftovers(tmp_path) == []
    assert run.read_metrics()[-1]["step"] < 6, "every rank stops at the step boundary after the failure"
    assert not [t for t in threading.enumerate() if t.name.startswith("checkpoint-")]


def _same_checkpoints(a: RunFolder, b: RunFolder) -> None:
    assert [s for s, _ in a.checkpoints()] == [s for s, _ in b.checkpoints()] == [6, 4]
    for (_, pa), (_, pb) in zip(a.checkpoints(), b.checkpoints()):
        x, y = read_checkpoint(pa), read_checkpoint(pb)
        for key in ("net", "ema"):
            assert x[key].keys() == y[key].keys() and all(torch.equal(x[key][k], y[key][k]) for k in x[key])
        for i, moments in x["opt"]["state"].items():
            assert all(torch.equal(v, y["opt"]["state"][i][k]) for k, v in moments.items())
        assert x["opt"]["param_groups"] == y["opt"]["param_groups"]
        (rx,), (ry,) = x["rng"], y["rng"]
        assert torch.equal(rx["generator"], ry["generator"]) and torch.equal(rx["torch"], ry["torch"])
        untimed = [{k: v for k, v in c["state"].items() if k not in ("wall", "tick")} for c in (x, y)]
        assert untimed[0] == untimed[1] and x["state"]["tick"]["sums"] == y["state"]["tick"]["sums"]
        assert x["config"]["train"].pop("async_ckpt") != y["config"]["train"].pop("async_ckpt")
        assert x["config"] == y["config"] and x["step"] == y["step"] and x["data_stats"] == y["data_stats"] == {}


class AtTheEnd(Callback):
    """What the end-of-run work sees: the checkpoints, and which of them the process still maps."""

    def on_end(self, run_dir: Path, device: torch.device, info, log) -> None:
        run = RunFolder(run_dir)
        maps = Path("/proc/self/maps")
        self.mapped = [line for line in maps.read_text().splitlines() if str(run.checkpoint_dir) in line]
        self.steps = [s for s, _ in run.checkpoints()]
        self.newest = read_checkpoint(run.checkpoints()[0][1])["step"]


def test_async_and_synchronous_checkpoints_are_bit_identical_through_a_mapped_resume(tmp_path):
    """The async run stops at 2 and resumes from its mapped checkpoint, which rotation deletes at 6."""
    train(load_config(None, TINY), tmp_path / "async", stop_at=2, log=lambda _: None)
    end = AtTheEnd()
    asynchronous = train(load_config(None, TINY), tmp_path / "async", callbacks=[end], log=lambda _: None)
    synchronous = train(load_config(None, [*TINY, "train.async_ckpt=false"]), tmp_path / "sync", log=lambda _: None)
    assert asynchronous.finished and synchronous.finished
    _same_checkpoints(asynchronous.run, synchronous.run)
    assert end.steps == [6, 4] and end.newest == 6, "the last write is done before the end-of-run work"
    if Path("/proc/self/maps").exists():  # Adam's CPU moments were copied out of the mapped file
        assert not [line for line in end.mapped if "(deleted)" in line], end.mapped


DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import alphaflow.run.files as files

    out, blocked, marker, overrides = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
    real = files._Recorder.write

    def write(self, b):  # the write of one checkpoint starts, then hangs: a slow disk, until kill -9
        n = real(self, b)
        if f".{blocked}.tmp" in self.f.name:
            self.f.flush()
            marker.touch()
            time.sleep(600)
        return n

    files._Recorder.write = write
    from alphaflow.cli.main import main
    sys.exit(main(["train", "--out", out, *overrides]))
""")


@pytest.mark.slow
def test_kill_9_during_a_background_write_resumes_from_the_previous_checkpoint_bit_for_bit(tmp_path):
    overrides = [*TINY, "train.steps=8", "train.threads=1"]
    threads = torch.get_num_threads()
    driver, marker, run = tmp_path / "driver.py", tmp_path / "writing", RunFolder(tmp_path / "run")
    driver.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(driver), str(run.root), "latest-00000006.pt", str(marker),
                             *overrides], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and 8 in [r["step"] for r in run.read_metrics()]):  # trained on meanwhile
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not run.is_done() and [s for s, _ in run.checkpoints()] == [4, 2]
    assert leftovers(run.root) == [f".latest-00000006.pt.tmp{proc.pid}"]  # not taken for a checkpoint
    assert run.load_checkpoint(report=lambda _: None)[0]["step"] == 4
    try:
        messages: list[str] = []
        resumed = train(load_config(None, overrides), run.root, log=messages.append)
        straight = train(load_config(None, overrides), tmp_path / "straight", log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    assert any("resuming" in m and "step 4" in m for m in messages), messages
    assert resumed.finished and leftovers(run.root) == []  # the stray temporary went with the next save
    for a, b in ((resumed.model, straight.model), (resumed.ema, straight.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["step"] for r in run.read_metrics()] == [2, 4, 6, 8]
