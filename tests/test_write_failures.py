"""A full or read-only disk on real small file systems (tmpfs): every writer of a run folder leaves no partial
file, keeps what was there, and says in one line what it could not write, where, and how much space is free."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alphaflow.run.errors import WriteFailed
from alphaflow.run.files import append_jsonl, atomic_write_bytes, read_checkpoint
from alphaflow.run.images import save_grid_png
from alphaflow.run.folder import RunFolder
from small_fs import fill, remount

REPO = Path(__file__).resolve().parents[1]


def checkpoint_state(step: int, numel: int = 300_000) -> dict:
    """A state in the checkpoint layout (read_checkpoint accepts it), ``numel`` float32 weights in all."""
    weights = {"w": torch.full((numel,), float(step))}
    return {"format": 1, "step": step, "config": {}, "net": weights, "ema": {}, "opt": {}, "data_stats": {},
            "state": {"step": step}, "rng": []}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def test_a_checkpoint_that_does_not_fit_leaves_no_partial_file_and_the_previous_one_loads(tmpfs):
    fs = tmpfs("2m")
    run = RunFolder(fs / "run")
    run.save_checkpoint(checkpoint_state(10), 10)  # 1.2 MB: fits
    with pytest.raises(WriteFailed) as failed:
        run.save_checkpoint(checkpoint_state(20), 20)
    message = str(failed.value)
    assert message.startswith(f"could not write checkpoint latest-00000020.pt in {run.checkpoint_dir}: "
                              "No space left on device; ") and message.endswith("free there"), message
    assert failed.value.errno == errno.ENOSPC
    assert leftovers(fs) == [], "the partial temporary is gone, so the disk is not kept full"
    assert [step for step, _ in run.checkpoints()] == [10]
    assert torch.equal(read_checkpoint(run.checkpoints()[0][1])["net"]["w"], torch.full((300_000,), 10.0))


def test_a_metrics_row_that_does_not_fit_leaves_the_file_as_it_was(tmpfs):
    fs = tmpfs("1m")
    run = RunFolder(fs / "run")
    run.append_metrics({"step": 1, "loss": 0.5})
    before = run.metrics_path.read_bytes()
    fill(fs, leave=4096)  # one page left: a 10 kB row gets part of the way, then ENOSPC
    with pytest.raises(WriteFailed, match=r"could not write the metrics row of step 2 in .*No space left on device"):
        run.append_metrics({"step": 2, "note": "x" * 10_000})
    assert run.metrics_path.read_bytes() == before, "cut back: no torn line"
    assert [r["step"] for r in run.read_metrics()] == [1]


@pytest.mark.parametrize("writer", ["probe row", "eval row"])
def test_probe_and_eval_rows_that_do_not_fit_leave_their_files_as_they_were(tmpfs, writer):
    fs = tmpfs("1m")
    run = RunFolder(fs / "run")
    write = (run.append_probes if writer == "probe row" else
             lambda row: append_jsonl(run.eval_path, row, what=f"the fid row of step {row['step']}, 1 NFE"))
    write({"step": 1})
    path = run.probes_path if writer == "probe row" else run.eval_path
    before = path.read_bytes()
    fill(fs, leave=4096)
    with pytest.raises(WriteFailed, match="No space left on device") as failed:
        write({"step": 2, "pad": "y" * 10_000})
    assert ("a probe row of step 2" if writer == "probe row" else "the fid row of step 2, 1 NFE") in str(failed.value)
    assert path.read_bytes() == before


def test_a_sample_grid_that_does_not_fit_leaves_no_partial_png(tmpfs):
    fs = tmpfs("1m")
    fill(fs, leave=8192)
    path = fs / "run" / "samples" / "step-00000010-nfe1.png"
    noise = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1  # ~200 kB of PNG
    with pytest.raises(WriteFailed, match="could not write sample grid step-00000010-nfe1.png in .*samples"):
        save_grid_png(noise, path)
    assert not path.exists() and leftovers(fs) == []


def test_a_read_only_file_system_is_reported_and_the_old_file_stays(tmpfs):
    fs = tmpfs("1m")
    run = RunFolder(fs / "run")
    run.write_config({"seed": 0})
    remount(fs, "ro")
    with pytest.raises(WriteFailed, match=r"could not write DONE in .*: Read-only file system$"):
        run.mark_done({"step": 1})
    with pytest.raises(WriteFailed, match="Read-only file system"):
        atomic_write_bytes(run.config_path, b"{}", what="the config")
    assert run.read_config() == {"seed": 0} and not run.is_done()


@pytest.mark.slow
def test_training_on_a_full_disk_stops_with_one_line_and_resumes_once_there_is_room(tmpfs):
    """DiT-N/2 on the digits: a checkpoint is 3.3 MB, so a 5 MiB disk holds one and not the next."""
    fs = tmpfs("5m")
    run = RunFolder(fs / "run")
    cmd = [sys.executable, "-m", "alphaflow", "train", "--out", str(run.root), "model.name=DiT-N/2",
           "train.steps=30", "train.batch_size=8", "train.log_every=5", "train.ckpt_every=10", "train.sample_every=0",
           "data.stats_samples=16", "train.threads=1"]

    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)

    first = attempt()
    assert first.returncode == 1, first
    assert "warning: " in first.stdout and "less than the next two checkpoints need" in first.stdout, first.stdout
    assert "Traceback" not in first.stderr and first.stderr.count("\n") == 1, first.stderr
    assert first.stderr.startswith(f"alphaflow train: could not write checkpoint latest-00000020.pt in "
                                   f"{run.checkpoint_dir}: No space left on device; "), first.stderr
    assert "free there. What was written before is intact" in first.stderr and "resumes" in first.stderr
    assert leftovers(fs) == [] and [s for s, _ in run.checkpoints()] == [10]
    assert read_checkpoint(run.checkpoints()[0][1])["step"] == 10

    second = attempt()  # the disk is still full: the same line, nothing duplicated
    prefix = first.stderr.split("No space left on device; ")[0]
    assert second.returncode == 1 and second.stderr.startswith(prefix) and second.stderr.count("\n") == 1, second
    assert f"resuming {run.root} from latest-00000010.pt" in second.stdout

    remount(fs, "size=20m")
    third = attempt()
    assert third.returncode == 0, third
    assert run.is_done() and [r["step"] for r in run.read_metrics()] == [5, 10, 15, 20, 25, 30]
    assert leftovers(fs) == []
