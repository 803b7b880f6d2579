"""``train(cfg, out)``: the FM / MeanFlow / α-Flow trainer, from a laptop CPU to multi-GPU DDP
(docs/conventions.md#optimiser-ema-and-precision, docs/official_code.md#training-configuration).

The loop reads as paragraphs: sample a batch, compute the objective's terms, take an optimiser
step, update the EMA, then maintenance (log, checkpoint, samples). Everything random flows from
the config's seed through state that the checkpoint saves (the objective's generator, torch's
RNGs, the batch number), so a resumed run continues bit-for-bit where it stopped on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from alphaflow.run.errors import RunFailed
from alphaflow.train import distributed as D
from alphaflow.train.batches import EpochBatches
from alphaflow.objectives import Objective, objective_from_options
from alphaflow.config import Config, to_dict
from alphaflow.data import TrainData, build_dataset, dataset_options
from alphaflow.models import build_for_data, model_options
from alphaflow.train.optim import EMA, build_optimizer, warmup_factor
from alphaflow.train.step import LoopState, StepOutput, StepParts, training_step
from alphaflow.train.ticks import accumulate, log_row
from alphaflow.train.progress import Progress
from alphaflow.train.callbacks import Callback, LogContext, OnlineProbe, check_served
from alphaflow.train.callbacks import close_all
from alphaflow.train.trackers import append_row, tracker_callbacks
from alphaflow.train.split_backward import ConflictCombiner
from alphaflow.run.errors import UsageError
from alphaflow.run.folder import RunFolder
from alphaflow.train.initialise import initialise_from
from alphaflow.run.lock import run_lock
from alphaflow.train.sample_grids import write_samples
from alphaflow.train.checkpointing import AsyncCheckpointer
from alphaflow.train.startup import record_config, resume_checkpoint, resume_metrics, take_folder
from alphaflow.train.compiling import CompileCount, compile_for_training

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RunFailed):
    """Raised when the loss stays NaN/inf for ``train.max_nonfinite`` consecutive steps."""


@dataclass
class TrainResult:
    run: RunFolder
    model: torch.nn.Module | None       # the trained (unwrapped) network; None if the run was already done
    ema: torch.nn.Module | None         # its EMA, used for samples and evaluation
    step: int
    finished: bool                       # False when stopped early by ``stop_at``


def train(cfg: Config, out: str | Path, *, objective: Objective | None = None, callbacks: list[Callback] | None = None,
          stop_at: int | None = None,
          should_stop: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train the run in folder ``out``: start it, resume it from its newest checkpoint, or notice it is done.

    ``objective``: the one ``alphaflow.train.build.preflight`` built from ``cfg.objective`` (built here if None).
    ``callbacks``: work inside the run (``alphaflow.train.callbacks``); the online probe of ``probe.every``
    is added here. In-run evaluation (``eval.every``, ``eval.final``, ``probe.final``) comes from
    ``alphaflow.evaluate.in_run``; a config that asks for it without its callback is refused.
    ``stop_at``: stop after that step with a checkpoint and no DONE marker (a later call resumes).
    ``should_stop``: polled after every step (e.g. a preemption flag set by a signal handler); when any
    rank says yes, every rank stops at that same step boundary with a checkpoint.
    """
    callbacks = [OnlineProbe(cfg), *(callbacks or []), *tracker_callbacks(cfg, out)]  # trackers last: they read all
    check_served(cfg, callbacks)
    info, created = D.init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    say = (log or print) if info.is_main else (lambda _msg: None)
    lock = run_lock(out, say=say) if info.is_main else None  # the ranks of one run are one holder
    writer = AsyncCheckpointer(RunFolder(out), asynchronous=cfg.train.async_ckpt)  # rank 0 is the one that saves
    try:
        tried: list[bool] = []  # rank 0: whether a trainer took the folder before (a failed start may restart)
        D.on_main(info, lambda: tried.append(take_folder(lock, writer.run, say)))  # before anything touches ``out``
        result = _train(cfg, writer.run, info, say, stop_at, should_stop, callbacks, writer, any(tried), objective)
        if created:  # every rank done before the group goes: a rank tearing gloo down mid-exchange aborts the other
            D.barrier(info)
        return result
    finally:
        lost = writer.close(raise_error=False)  # a write in flight ends while the lock is held; an error here is
        if lost is not None:                     # one met on a way out by another exception, which wins
            say(f"warning: {lost}")
        close_all(callbacks)  # e.g. a wandb run ends with its trainer, also one that stopped early or failed
        if lock is not None:
            lock.release()
        if created:  # a process group the caller made stays theirs
            D.shutdown()


@dataclass
class _Session:
    """Everything one training run holds: the config, its folder, the process group, the network and its
    wrapper, EMA, optimiser, objective, data, the generator and the loop ``state`` that a checkpoint saves;
    ``parts``: what ``training_step`` acts on."""

    cfg: Config
    run: RunFolder
    info: D.DistInfo
    say: Callable[[str], None]
    callbacks: list[Callback]
    bf16: bool
    data: TrainData
    net: torch.nn.Module
    model: torch.nn.Module  # net, DDP-wrapped and/or compiled: the prediction pass goes through it
    ema: EMA
    objective: Objective
    opt: torch.optim.Optimizer
    gen: torch.Generator
    state: LoopState
    parts: StepParts = field(init=False)
    compiled: CompileCount | None = field(init=False)  # train.compile: graphs compiled so far

    def __post_init__(self) -> None:
        params = list(self.net.parameters())  # listed once, for the per-step norm
        conflict = (ConflictCombiner(self.cfg.conflict, self.net, params, self.info)
                    if self.cfg.conflict.mode != "none" else None)  # how g_TFM and g_TCC combine
        self.parts = StepParts(self.net, self.model, self.objective, self.opt, self.ema, self.info, self.bf16,
                               self.cfg.optim.grad_clip, conflict, params, self.cfg.train.micro_batch,
                               self.cfg.train.spike_guard)
        self.compiled = CompileCount() if self.cfg.train.compile else None

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return self.parts.params

    @property
    def device(self) -> torch.device:
        return self.info.device


def _train(cfg: Config, run: RunFolder, info: D.DistInfo, say: Callable[[str], None],
           stop_at: int | None, should_stop: Callable[[], bool] | None, callbacks: list[Callback],
           writer: AsyncCheckpointer, tried: bool = False, objective: Objective | None = None) -> TrainResult:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = build_dataset(cfg.data.name, seed=cfg.seed, **dataset_options(cfg.data))
    if len(data) < cfg.train.batch_size:  # refused before the folder holds a config the user cannot rerun
        raise UsageError(f"train.batch_size={cfg.train.batch_size} exceeds the size of dataset {cfg.data.name!r} "
                         f"({len(data)} samples); use train.batch_size <= {len(data)}")
    D.on_main(info, lambda: record_config(run, cfg, say, unless_checkpointed=True, restartable=tried))
    if run.is_done():
        say(f"{run.root} is already finished (DONE exists); nothing to do")
        return TrainResult(run, None, None, cfg.train.steps, True)
    s = _start(cfg, run, info, say, callbacks, data, objective)
    batches = EpochBatches(s.data, global_batch=cfg.train.batch_size, seed=cfg.seed, rank=info.rank,
                           world_size=info.world_size, pin_memory=s.device.type == "cuda")
    progress = Progress(cfg.train.steps, s.state.step, enabled=info.is_main, say=say)
    t_last = time.perf_counter()
    stop = cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps)
    if info.is_main:  # a failed background write stops every rank at the next step boundary, where _save raises it
        asked = should_stop
        should_stop = lambda: writer.failed() or (asked is not None and asked())  # noqa: E731
    for raw, labels in batches.iterate(s.state.step, stop, cfg.data.workers):
        x, y, lr, out = _step(s, raw, labels, should_stop)
        progress.step()
        now = time.perf_counter()
        s.state.wall += now - t_last
        stop = _maintain(s, x, y, lr, out, stop, progress, writer)
        t_last = time.perf_counter()  # maintenance time is not training time
        if s.state.step == stop:
            break
    progress.close()
    D.on_main(info, writer.wait)  # no write in flight when the run stops or is marked DONE; raises its error
    if s.state.step < cfg.train.steps:
        say(f"stopped at step {s.state.step} of {cfg.train.steps}; run the same command again to resume")
        return TrainResult(run, s.net, s.ema.model, s.state.step, False)
    _finish(s)
    return TrainResult(run, s.net, s.ema.model, s.state.step, True)


def _start(cfg: Config, run: RunFolder, info: D.DistInfo, say: Callable[[str], None],
           callbacks: list[Callback], data: TrainData, objective: Objective | None) -> _Session:
    """Build the run's objects on its device, then resume them from the newest readable checkpoint (or fit the
    data statistics of a fresh run)."""
    device = info.device
    D.set_tf32(cfg.train.tf32, device)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    net = build_for_data(cfg.model.name, data.shape, data.num_classes, **model_options(cfg.model)).to(device)
    ema = EMA(net, cfg.ema.halflife_steps, cfg.ema.rampup_ratio)
    if objective is None:
        objective = objective_from_options(cfg.objective, cfg.train.steps)
    o = cfg.optim
    opt = build_optimizer(net.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + info.rank)
    state = LoopState()
    resumed = resume_checkpoint(run, cfg, say)  # also compared with the command where config.json was deleted
    if resumed is not None:
        ckpt, path = resumed
        state = _restore(ckpt, net, ema, opt, data, gen, info, say)
        del ckpt, resumed  # its tensors were copied into the model, EMA and Adam: free the host copy
        say(f"resuming {run.root} from {path.name} (step {state.step})")
    elif cfg.train.init_from:
        record = initialise_from(cfg.train.init_from, net, ema, data, say, seed=cfg.seed, root=run.root.parent)
        D.on_main(info, lambda: run.write_init(record))
    else:
        data.fit_stats(torch.Generator().manual_seed(cfg.seed), cfg.data.stats_samples)
    D.on_main(info, lambda: record_config(run, cfg, say, unless_checkpointed=False))  # written now if it was missing
    if info.is_main and cfg.data.vae_path is not None and data.decodes_samples:
        data.attach_decoder(cfg.data.vae_path, device, batch_size=cfg.eval.decode_batch_size)  # grids are images
    D.agree(state.step, info, "the restored step", hint=f"every rank must see the checkpoints in {run.root} "
            "(a node on another file system starts at 0)")
    D.on_main(info, lambda: resume_metrics(run, state.step, say))  # rows past the checkpoint are replayed, once
    if info.is_main:  # the next two checkpoints: fp32 weights, EMA and Adam's two moments, 16 bytes per parameter
        run.warn_if_short_of_space(2 * 16 * sum(p.numel() for p in net.parameters()), "the next two checkpoints", say)
    return _Session(cfg, run, info, say, callbacks, bf16, data, net, _wrap(net, cfg, info), ema, objective, opt, gen,
                    state)


def _wrap(net: torch.nn.Module, cfg: Config, info: D.DistInfo) -> torch.nn.Module:
    """The module the prediction pass goes through: DDP across ranks, compiled with ``train.compile``."""
    # broadcast_buffers=False: the only buffer is the fixed positional embedding, identical on every rank, so
    # broadcasting it every step is wasted traffic; gradient_as_bucket_view: the gradients are views into DDP's
    # all-reduce buckets instead of a second copy (one parameter-sized buffer less per rank).
    device = info.device
    model = net if not info.distributed else DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False,
        gradient_as_bucket_view=True)
    # train.compile: the prediction and the no-grad target passes compile; the EMA, samples, probes and
    # checkpoints use ``net`` and stay eager (alphaflow.train.compiling)
    return compile_for_training(net, model) if cfg.train.compile else model


def _step(s: _Session, raw: torch.Tensor, labels: torch.Tensor,
          should_stop: Callable[[], bool] | None) -> tuple[torch.Tensor, torch.Tensor | None, float, StepOutput]:
    """Prepare the batch, take ``training_step`` on it, count the step: (x, y, lr, the step's output)."""
    cfg, state, device = s.cfg, s.state, s.device
    x = s.data.prepare(raw.to(device, non_blocking=True), s.gen)
    y = labels.to(device, non_blocking=True) if s.data.num_classes > 0 else None
    lr = cfg.optim.lr * warmup_factor(state.step, cfg.optim.warmup_steps)
    out = training_step(s.parts, state, x, y, lr=lr, generator=s.gen, should_stop=should_stop)
    if out.finite:
        state.nonfinite = 0
    else:
        state.nonfinite += 1
        if state.nonfinite >= cfg.train.max_nonfinite:
            raise NonFiniteLossError(
                f"the loss was non-finite for {state.nonfinite} consecutive steps (train.max_nonfinite="
                f"{cfg.train.max_nonfinite}), last at step {state.step + 1}; the run stopped without saving this "
                f"state. Checkpoints and metrics up to the last good tick are kept in {s.run.root}. "
                "Lower optim.lr, set optim.grad_clip, or check the data.")
    state.step += 1
    state.images += cfg.train.batch_size
    accumulate(state.tick, out)
    return x, y, lr, out


def _maintain(s: _Session, x: torch.Tensor, y: torch.Tensor | None, lr: float, out: StepOutput, stop: int,
              progress: Progress, writer: AsyncCheckpointer | None = None) -> int:
    """After a step: the metrics row (with the callbacks' keys), checkpoints, sample grids. Returns the step to
    stop at (moved to this step when a rank asked to stop)."""
    cfg, info, step = s.cfg, s.info, s.state.step
    last = step == cfg.train.steps
    if step % cfg.train.log_every == 0 or last:
        row = log_row(s.state, lr, out.terms.logs, info, cfg.train.batch_size)
        ctx = LogContext(step, x, y, s.net, s.ema.model, s.objective, info, s.data)
        for callback in s.callbacks:
            row.update(callback.on_log(ctx))
        if s.compiled is not None:
            _count_graphs(s, row)
        D.on_main(info, lambda: append_row(s.run, row, s.callbacks))
        # the adaptive weight normalises the loss to ≈ 1 per sample; the unweighted mse shows progress
        progress.tick(step, {"loss": row.get("loss", float("nan")), "mse": row.get("loss_mse", float("nan")),
                             "alpha": row["alpha"]})
    if out.stop and not last:
        stop = step  # a preemption: checkpoint here and leave the loop
    if step % cfg.train.ckpt_every == 0 or last or step == stop:
        keep = cfg.train.keep_every > 0 and step % cfg.train.keep_every == 0
        _save(s.run, cfg, s.state, s.net, s.ema, s.opt, s.data, s.gen, info, keep=keep, writer=writer)
    if (cfg.train.sample_every and step % cfg.train.sample_every == 0) or last:
        D.on_main(info, lambda: write_samples(s.run, s.ema.model, s.data, cfg, step, s.objective))
    return stop


def _finish(s: _Session) -> None:
    """The callbacks' end-of-run work (before DONE: a crash there reruns only that part on resume), then DONE."""
    if s.cfg.eval.final or s.cfg.probe.final:
        s.opt.state.clear()  # Adam's moments (2× the weights) are saved: free them for the evaluation's network
        for p in s.params:
            p.grad = None
    for callback in s.callbacks:
        callback.on_end(s.run.root, s.device, s.info, s.say)
    D.barrier(s.info)

    def mark_done() -> None:
        rows = s.run.read_metrics()
        s.run.mark_done({"step": s.state.step, "images": s.state.images, "wall": s.state.wall,
                         "final_loss": rows[-1]["loss"] if rows else None,  # the run's totals of the rows' counts:
                         **{key: sum(r.get(key, 0) for r in rows) for key in ("nonfinite", "spike_skipped")}})
    D.on_main(s.info, mark_done)
    s.say(f"finished {s.run.root} at step {s.state.step}")


# -------------------------------------------------------------------- per-tick metrics

def _count_graphs(s: _Session, row: dict[str, Any]) -> None:
    """train.compile: the row's ``compiled_graphs`` (since the run's start in this process), and a line when a tick
    after the first compiled more (a recompile: a new shape, grad mode or call pattern)."""
    assert s.compiled is not None
    first = s.compiled.graphs == 0
    new = s.compiled.update()
    row["compiled_graphs"] = s.compiled.graphs
    if new and not first:
        s.say(f"train.compile: {new} more graph(s) compiled by step {s.state.step} ({s.compiled.graphs} in all); "
              "TORCH_LOGS=recompiles prints why")


# -------------------------------------------------------------------- checkpoints

def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    return {"generator": gen.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _save(run: RunFolder, cfg: Config, state: LoopState, net: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer,
          data: TrainData, gen: torch.Generator, info: D.DistInfo, *, keep: bool,
          writer: AsyncCheckpointer | None = None) -> None:
    """Rank 0 checkpoints the run: through ``writer`` (a snapshot, written in the background; it first raises
    the error of the write before, if any), else synchronously. The RNG gather across ranks stays synchronous."""
    rngs = D.gather_objects(_rng_state(gen, info.device), info)  # every rank's RNGs, for an exact resume
    save = writer.save if writer is not None else run.save_checkpoint
    D.on_main(info, lambda: save(
        {"format": CHECKPOINT_FORMAT, "step": state.step, "config": to_dict(cfg), "net": net.state_dict(),
         "ema": ema.state_dict(), "opt": opt.state_dict(), "data_stats": data.state_dict(),
         "state": state.to_checkpoint(), "rng": rngs}, state.step, keep=keep))


def _restore(ckpt: dict[str, Any], net: torch.nn.Module, ema: EMA, opt: torch.optim.Optimizer, data: TrainData,
             gen: torch.Generator, info: D.DistInfo, say: Callable[[str], None]) -> LoopState:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {ckpt.get('format')!r} is not {CHECKPOINT_FORMAT}; cannot resume")
    net.load_state_dict(ckpt["net"])
    ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["opt"])
    for moments in opt.state.values():  # on the CPU Adam keeps the loaded tensors, which map the file (mmap=True):
        for key, value in moments.items():  # own them, or the file's space stays taken after rotation deletes it
            if isinstance(value, torch.Tensor) and value.device.type == "cpu":
                moments[key] = value.clone()
    data.load_state_dict(ckpt["data_stats"])
    rngs = ckpt["rng"]
    if len(rngs) == info.world_size:
        rng = rngs[info.rank]
        gen.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and info.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], info.device)
    else:
        say(f"warning: the checkpoint was written by {len(rngs)} processes, this run has {info.world_size}; "
            "random streams restart from the seed (the run continues, but not bit-for-bit)")
    return LoopState.from_checkpoint(ckpt["state"])
