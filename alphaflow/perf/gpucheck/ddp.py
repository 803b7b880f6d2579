"""Section ``ddp`` of ``alphaflow doctor``: a 2-rank NCCL run of the trainer (two GPUs; skipped with one)."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from alphaflow.perf.gpucheck.helpers import check_finite, device_of
from alphaflow.perf.gpucheck.settings import Settings, Skip


def ddp(s: Settings, out: dict[str, Any]) -> None:
    """A 2-rank NCCL DDP run of the project's trainer (``alphaflow.train.loop.train``) on the embedded digits:
    ``ddp_steps`` steps, a log tick and an online probe every half; the run's metrics rows (loss, images/s,
    the probe's cosines averaged over ranks), its wall time and its DONE marker. Needs >= 2 GPUs."""
    if s.device != "cuda":
        raise Skip("NCCL DDP needs >= 2 CUDA GPUs; the CPU rehearsal has none (tests/test_gpucheck.py runs the same "
                   "2-rank launch with gloo on the CPU)")
    device_of(s)
    n = torch.cuda.device_count()
    if n < 2:
        raise Skip(f"a 2-rank NCCL run needs >= 2 GPUs; this machine has {n}")
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        out.update(run_ddp(Path(tmp) / "ddp", device="cuda", model_name=s.ddp_model, steps=s.ddp_steps,
                           batch_size=s.ddp_batch))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    """One rank: the torchrun environment, then the trainer (``init_distributed`` reads it)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from alphaflow.config import load_config
    from alphaflow.train.loop import train as train_run

    train_run(load_config(None, overrides), out, log=lambda _msg: None)
    # DDP keeps the gloo process group alive past destroy_process_group (its worker threads stay; checked with
    # torch 2.13), and tearing such a group down during interpreter exit can abort the rank ("terminate called
    # without an active exception": a CI flake after a finished run). Leave the way multiprocessing's forked
    # children do, without finalisation: everything the run wrote is closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ddp(folder: Path, *, device: str, model_name: str, steps: int, batch_size: int, world: int = 2,
            extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train ``world`` ranks (spawned processes) into ``folder`` and read back what the run wrote; raises
    when a rank fails, a tick or probe row is missing, or a logged number is non-finite."""
    from alphaflow.run.folder import RunFolder

    half = max(steps // 2, 1)
    overrides = [f"model.name={model_name}", f"train.steps={steps}", f"train.log_every={half}",
                 f"probe.every={half}", f"train.device={device}", f"train.batch_size={batch_size}",
                 f"train.ckpt_every={steps}", "train.sample_every=0", "sample.num=8", "sample.nfe=[1]", *extra]
    start = time.perf_counter()
    torch.multiprocessing.start_processes(_ddp_worker, args=(world, _free_port(), overrides, str(folder)),
                                          nprocs=world, join=True, start_method="spawn")
    wall = time.perf_counter() - start
    run = RunFolder(folder)
    rows = run.read_metrics()
    keep = ("step", "loss", "loss_mse", "grad_norm", "images_per_sec", "probe_cos_tfm_tcc", "probe_cos_fmb_tcc",
            "probe_gradnorm_mf")
    result = {"world_size": world, "steps": steps, "wall_seconds": wall, "done": run.is_done(),
              "rows": [{k: v for k, v in row.items() if k in keep} for row in rows]}
    probe_rows = [row for row in rows if any(k.startswith("probe_") for k in row)]
    if not result["done"] or [row["step"] for row in rows] != list(range(half, steps + 1, half)) or not probe_rows:
        raise RuntimeError(f"the DDP run is incomplete: done={result['done']}, metrics rows at steps "
                           f"{[row['step'] for row in rows]}, {len(probe_rows)} with a probe")
    for row in rows:
        check_finite(f"ddp metrics at step {row['step']}",
                     {k: v for k, v in row.items() if k.startswith(("loss", "probe_cos"))})
    return result
