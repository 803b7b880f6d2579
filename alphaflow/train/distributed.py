"""Process-group set-up that degrades to one process (EDM ``distributed.py`` style).

Rank information comes from the environment, in this order:
  * torchrun, or a submitit/SLURM job whose launcher exported the torchrun variables
    (``submitit.helpers.TorchDistributedEnvironment().export()``): RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT;
  * a bare ``srun`` with several tasks: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (MASTER_ADDR and
    MASTER_PORT must then be set by the job script);
  * otherwise a single process.
The backend is NCCL on CUDA and gloo on CPU.

Every collective of the package goes through this module (a test keeps it that way), and each one
refuses a tensor that is not on the run's device: a process group initialised with NCCL accepts
only CUDA tensors ("No backend type associated with device type cpu"), while gloo on a CPU run
takes anything, so a CPU-built tensor on a logging path would pass every CPU test and crash the
first multi-GPU run at its first log tick. The check runs in one process too, where it is cheap
(a device comparison), so CPU tests see the same rule. Scalars are reduced with ``mean_over_ranks``,
which builds its tensor on the run's device itself.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from alphaflow.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_ranks() -> tuple[int, int, int]:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in env:
                raise RuntimeError(f"running under SLURM with {env['SLURM_NTASKS']} tasks but {key} is not set; "
                                   "export MASTER_ADDR and MASTER_PORT in the job script, or launch with torchrun")
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' → cuda:<local_rank> when CUDA is available, else cpu; 'cuda' without CUDA is an error."""
    if preference not in ("auto", "cpu", "cuda"):
        raise UsageError(f"the device (train.device, or --device) must be auto, cpu or cuda, got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("the device is cuda (train.device, or --device) but CUDA is not available on this "
                         "machine; use cpu or auto")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_preference: str = "auto", timeout_min: float = 60.0) -> tuple[DistInfo, bool]:
    """Join the process group described by the environment (or none) and pick the device.

    Returns the rank information and whether this call created the process group (then the caller
    destroys it at the end; a group the caller made before, e.g. a test or a notebook, is left alone).
    ``timeout_min`` bounds every collective: NCCL's default of 10 minutes is shorter than rank 0's
    in-run evaluation or a checkpoint of a large model on a slow file system, while the other ranks
    wait in a barrier.
    """
    rank, world, local = _env_ranks()
    device = resolve_device(device_preference, local)
    created = False
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=rank, world_size=world, timeout=datetime.timedelta(minutes=timeout_min),
                                device_id=device if device.type == "cuda" else None)
        created = True
    return DistInfo(rank, world, local, device), created


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def set_tf32(enabled: bool, device: torch.device) -> None:
    """On CUDA, let fp32 matrix products and convolutions use TF32 tensor cores (``train.tf32``).

    Training's matmuls run in bf16 under autocast and are unaffected; what runs in fp32 is sampling, the
    probes, evaluation and the DiT's attention tangent, which TF32 makes several times faster at a relative
    error of about 1e-3 per product. Off gives IEEE fp32 everywhere. A no-op on the CPU.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def check_device(values: torch.Tensor, info: DistInfo, what: str = "a collective") -> None:
    """Refuse a tensor that is not on the run's device (NCCL takes CUDA tensors only; see the module docstring)."""
    if values.device != info.device:
        raise RuntimeError(f"{what} got a tensor on {values.device}, but this run's device is {info.device}: "
                           "build it on the run's device (NCCL accepts only CUDA tensors)")


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (identity in one process). ``values`` must live on ``info.device``."""
    check_device(values, info, "all_reduce_mean")
    if info.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= info.world_size
    return values


def mean_over_ranks(values: Sequence[float], info: DistInfo) -> list[float]:
    """Host numbers → their means over ranks, as host numbers: one float64 tensor on the run's device,
    one all-reduce, one device-to-host transfer. The identity in one process."""
    if not info.distributed or not values:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=info.device)
    return all_reduce_mean(tensor, info).tolist()


def gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Every rank's ``obj`` on every rank, in rank order ([obj] in one process)."""
    if not info.distributed:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        # NCCL: name the device, or the barrier guesses one from the rank and can hang on a mismatch
        dist.barrier(device_ids=[info.device.index] if info.device.type == "cuda" else None)


def on_main(info: DistInfo, work: Callable[[], object]) -> None:
    """Run ``work`` on rank 0 only (the run folder's one writer), and make its failure every rank's: when it
    raises, rank 0 re-raises it and the other ranks raise ``RuntimeError``, instead of waiting in the next
    collective until the timeout. One all-reduce of a flag, which is also the barrier after the work."""
    failed: BaseException | None = None
    if info.is_main:
        try:
            work()
        except Exception as exc:  # re-raised below, on this rank unchanged
            failed = exc
    if info.distributed and mean_over_ranks([float(failed is not None)], info)[0] > 0 and failed is None:
        raise RuntimeError("rank 0 failed while writing to the run folder; its message is in rank 0's output")
    if failed is not None:
        raise failed
