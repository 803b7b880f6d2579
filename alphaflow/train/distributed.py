"""Process-group set-up that degrades to one process (EDM ``distributed.py`` style).

Rank information comes from the environment, in this order:
  * torchrun, or a submitit/SLURM job whose launcher exported the torchrun variables
    (``alphaflow.launch.executors.export_rendezvous``: submitit's export with a port derived from the
    job id): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
  * a bare ``srun`` with several tasks: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (MASTER_ADDR and
    MASTER_PORT must then be set by the job script);
  * otherwise a single process.
The backend is NCCL on CUDA and gloo on CPU.

The device (``resolve_device``): ``auto`` is the GPU when one is usable, and refuses to fall back to the
CPU when this process was given GPUs (SLURM's GPU variables, a ``CUDA_VISIBLE_DEVICES`` that names
devices): a CPU-only torch wheel or a driver that torch cannot use would otherwise train on the CPU, orders
of magnitude slower and silently. ``cpu`` forces the CPU everywhere.

The process group's first rendezvous (the store at MASTER_ADDR:MASTER_PORT and a first barrier) runs
under a short timeout (``INIT_TIMEOUT_MIN``), then the group's timeout is raised to the run's long one,
so a wrong address or a blocked port fails in minutes with one line instead of hanging for an hour.

Every collective of the package goes through this module (a test keeps it that way), and each one
refuses a tensor that is not on the run's device: a process group initialised with NCCL accepts
only CUDA tensors ("No backend type associated with device type cpu"), while gloo on a CPU run
takes anything, so a CPU-built tensor on a logging path would pass every CPU test and crash the
first multi-GPU run at its first log tick. The check runs in one process too, where it is cheap
(a device comparison), so CPU tests see the same rule. Scalars are reduced with ``mean_over_ranks``,
which builds its tensor on the run's device itself.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.distributed as dist

from alphaflow.run.errors import UsageError


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


# SLURM's variables that say this job or step was given GPUs: counts, or "[type:]count" (a zero means none) ...
SLURM_GPU_COUNTS = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK")
# ... and lists of the GPU indices given (any value means some)
SLURM_GPU_LISTS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
_HIDE_ALL = ("", "-1")  # CUDA_VISIBLE_DEVICES values that hide every device


def _zero_count(value: str) -> bool:
    """'0', 'a100:0' or '0,h100:0': a count of no GPU."""
    return all(item.rsplit(":", 1)[-1].strip() == "0" for item in value.split(","))


def assigned_gpus(env: Mapping[str, str] | None = None) -> str | None:
    """The variable that says this process was given GPUs, as ``NAME=value``, or None.

    SLURM's GPU variables (``SLURM_GPU_COUNTS`` with a non-zero count, ``SLURM_GPU_LISTS`` with any value),
    then a ``CUDA_VISIBLE_DEVICES`` that names devices (not "" or "-1", which hide them all).
    """
    env = os.environ if env is None else env
    for name in (*SLURM_GPU_COUNTS, *SLURM_GPU_LISTS):
        value = env.get(name, "").strip()
        if value and not (name in SLURM_GPU_COUNTS and _zero_count(value)):
            return f"{name}={value}"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in _HIDE_ALL:
        return f"CUDA_VISIBLE_DEVICES={visible}"
    return None


def why_no_cuda() -> str:
    """Why torch cannot use a GPU here, in a few words: a CPU build, devices hidden, or the driver's reason."""
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build of the same version "
                "from PyTorch's CUDA wheel index (pip install torch --index-url "
                "https://download.pytorch.org/whl/cu<CUDA version>, see pytorch.org/get-started)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in _HIDE_ALL:
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every device"
    reason = "no CUDA device is usable"
    try:  # only on this failure path: initialising CUDA again is cheap and names the driver's complaint
        torch.cuda.init()
    except Exception as exc:  # torch says e.g. "Found no NVIDIA driver" or "The NVIDIA driver ... is too old"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = f"{reason} ({first[:300]})"
    shown = "unset" if visible is None else repr(visible)
    return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but {reason}; "
            f"CUDA_VISIBLE_DEVICES is {shown}")


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' → cuda:<local_rank> when CUDA is available, else cpu, unless this process was given GPUs
    (``assigned_gpus``): then the CPU would be a silent mistake, and it is refused with the cause
    (``why_no_cuda``). 'cuda' without CUDA is an error; 'cpu' is the CPU whatever the environment says."""
    if preference not in ("auto", "cpu", "cuda"):
        raise UsageError(f"the device (train.device, or --device) must be auto, cpu or cuda, got {preference!r}")
    if preference == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if preference == "cuda":
            raise UsageError(f"the device is cuda (train.device, or --device) but CUDA is not available on this "
                             f"machine: {why_no_cuda()}; use cpu to train on the CPU")
        given = assigned_gpus()
        if given is None:
            return torch.device("cpu")
        raise UsageError(f"the device is auto (train.device, or --device) and {given} gives this process GPUs, "
                         f"but torch cannot use them: {why_no_cuda()}; refusing to fall back to the CPU "
                         "(set train.device=cpu, or --device cpu, to use the CPU deliberately)")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


# The first rendezvous's timeout, in minutes: long enough for every task of a SLURM step to import torch from a
# slow shared file system and reach ``init_distributed``, short enough that a wrong MASTER_ADDR, a blocked port
# or a rank that never starts fails the job in minutes rather than after ``train.dist_timeout_min``.
INIT_TIMEOUT_MIN = 5.0
NCCL_DOCS = "docs/gpu.md#9-two-node-jobs-nccl"


def _set_timeout(timeout: datetime.timedelta) -> None:
    """Raise the default group's timeout (and its store's) after the first rendezvous.

    ``torch.distributed.distributed_c10d._set_pg_timeout`` is private, but it is what torch's own
    ``torch.distributed.breakpoint`` uses to lengthen a live group's timeout; it sets the NCCL or gloo
    backend's default timeout, which every later collective takes (and NCCL's watchdog enforces). The
    env:// store was made with the short timeout too; it is raised so that a communicator NCCL sets up
    later (its unique id travels through the store) gets the long one as well.
    """
    c10d = dist.distributed_c10d
    c10d._set_pg_timeout(timeout)
    store: dist.Store | None = c10d._get_default_store()
    while store is not None:  # the PrefixStore and the TCPStore under it
        store.set_timeout(timeout)
        store = getattr(store, "underlying_store", None)


def _can_raise_timeout() -> bool:
    c10d = dist.distributed_c10d
    return callable(getattr(c10d, "_set_pg_timeout", None)) and callable(getattr(c10d, "_get_default_store", None))


def rendezvous_failure(rank: int, world: int, minutes: float, exc: BaseException) -> str:
    """The one line of a failed first rendezvous: where the ranks were to meet, who failed, and where to look."""
    addr, port = os.environ.get("MASTER_ADDR", "?"), os.environ.get("MASTER_PORT", "?")
    text = str(exc).strip()
    cause = (text.splitlines()[0][:300] if text else "") or type(exc).__name__
    return (f"rank {rank} of {world} could not join the process group at MASTER_ADDR:MASTER_PORT={addr}:{port} "
            f"within {minutes:g} min ({type(exc).__name__}: {cause}); check that every rank started, that every "
            f"node reaches that address and port, and the network variables in {NCCL_DOCS}")


def init_distributed(device_preference: str = "auto", timeout_min: float = 60.0,
                     init_timeout_min: float = INIT_TIMEOUT_MIN) -> tuple[DistInfo, bool]:
    """Join the process group described by the environment (or none) and pick the device.

    Returns the rank information and whether this call created the process group (then the caller
    destroys it at the end; a group the caller made before, e.g. a test or a notebook, is left alone).
    ``timeout_min`` bounds every collective: NCCL's default of 10 minutes is shorter than rank 0's
    in-run evaluation or a checkpoint of a large model on a slow file system, while the other ranks
    wait in a barrier. The first rendezvous (joining the store at MASTER_ADDR:MASTER_PORT, NCCL's set-up
    and a first barrier) is bounded by ``init_timeout_min`` instead (the shorter of the two), and fails
    with one ``RuntimeError`` line naming the address, the rank and the world size; then the group's
    timeout becomes ``timeout_min``. On a torch without the private setter (``_set_timeout``) the group
    has ``timeout_min`` from the start.
    """
    rank, world, local = _env_ranks()
    device = resolve_device(device_preference, local)
    info = DistInfo(rank, world, local, device)
    created = False
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        short = _can_raise_timeout() and init_timeout_min < timeout_min
        first = init_timeout_min if short else timeout_min
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                    rank=rank, world_size=world, timeout=datetime.timedelta(minutes=first),
                                    device_id=device if device.type == "cuda" else None)
            barrier(info)
        except (RuntimeError, TimeoutError) as exc:  # torch's DistError family, a gloo timeout, a socket timeout
            if dist.is_initialized() and device.type == "cpu":  # gloo: leave no half-made group behind
                with contextlib.suppress(Exception):
                    dist.destroy_process_group()
            raise RuntimeError(rendezvous_failure(rank, world, first, exc)) from exc
        if short:
            _set_timeout(datetime.timedelta(minutes=timeout_min))
        created = True
    return info, created


def agree(value: int, info: DistInfo, what: str, hint: str = "") -> None:
    """Check that every rank holds the same ``value`` (e.g. the step each restored), and raise the same
    ``RuntimeError`` on every rank when they do not, naming each rank's value, e.g. "the ranks disagree on
    the restored step: 1000 on ranks 0-7; 0 on ranks 8-15 — <hint>". Ranks that resumed from different
    checkpoints raise no error of their own: they follow different schedules and data positions from then
    on, and one reaches the end or a checkpoint's collective before the others (a wrong run, then a hang).
    One all-gather of an int64 tensor on the run's device; nothing in one process."""
    if not info.distributed:
        return
    mine = torch.tensor([int(value)], dtype=torch.int64, device=info.device)
    gathered = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine)
    values = torch.cat(gathered).tolist()
    if len(set(values)) == 1:
        return
    ranks: dict[int, list[int]] = {}
    for r, v in enumerate(values):
        ranks.setdefault(v, []).append(r)
    listed = "; ".join(f"{v} on rank{'s' if len(rs) > 1 else ''} {_ranges(rs)}" for v, rs in ranks.items())
    raise RuntimeError(f"the ranks disagree on {what}: {listed}" + (f" — {hint}" if hint else ""))


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] → '0-2, 5'."""
    spans: list[list[int]] = []
    for r in ranks:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


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


def all_reduce_max(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Elementwise maximum over ranks (identity in one process). ``values`` must live on ``info.device``."""
    check_device(values, info, "all_reduce_max")
    if info.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
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
