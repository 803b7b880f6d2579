"""Sections probe, compile, memory and ddp of ``alphaflow doctor``."""

from __future__ import annotations


import importlib
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from alphaflow.perf.bench import peak_memory, time_step
from alphaflow.objectives import objective_from_options
from alphaflow.config import load_config
from alphaflow.perf.gpucheck.settings import Settings, Skip
from alphaflow.models import build_for_data, model_options
from alphaflow.train.optim import build_optimizer, sanitize_and_clip
from alphaflow.instrument.probes import probe_gradients, probe_sample

from alphaflow.perf.gpucheck.helpers import (TOLERANCE, TRAIN_RUNS, autocast, batch, check_finite, cleanup, device_of,
                                            model, objective_for, sync, tf32, train_steps)


def probe(s: Settings, out: dict) -> None:
    """One gradient probe (``alphaflow.instrument.probes.probe_gradients``) as ``alphaflow probe`` draws it (MeanFlow
    drawer, r < t on every row, the run's α-Flow objective as the ``loss`` term) at the mode's model and probe
    batch, in fp32 with TF32 as the trainer sets it: the cosines and gradient norms, the time of one probe
    after a warm-up and its peak memory. Fails on a non-finite value."""
    dev = device_of(s)
    net = model(s).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x, y = batch(s, dev, s.probe_batch, g)
    objective = objective_for([], 1000)
    sample = probe_sample(x, y, objective, generator=g)
    values: dict[str, float] = {}

    def call() -> None:
        values.update(probe_gradients(net, x, sample, guidance=objective.guidance, training=objective, step=0))

    with tf32(True):
        call()  # warm-up: kernel selection, allocator growth
        out["ms"] = time_step(call, dev)
        out["peak_mem_bytes"], out["peak_mem_total_bytes"] = peak_memory(call, dev)
    out["cosines"] = {k: v for k, v in values.items() if k.startswith("cos_")}
    out["gradnorms"] = {k: v for k, v in values.items() if k.startswith("gradnorm_")}
    out["losses"] = {k: v for k, v in values.items() if k.startswith("loss_")}
    out["batch"], out["model"] = s.probe_batch, s.model
    check_finite("probe", values)


# ----------------------------------------------------------------------------- 6. compile

def compile_check(s: Settings, out: dict) -> None:
    """``torch.compile`` of the model as the trainer does it (``torch.compiler.reset()`` then
    ``torch.compile(model)``; the objective calls the prediction, with its tangent mode, through it) for
    ``compile_steps`` MeanFlow steps against the same steps eager, same initial weights and seeds: losses and
    mse of both and their max relative difference, the compile time (first compiled step less an eager step),
    the compiled and eager step times over the second half of the steps, and how many graphs dynamo built."""
    dev = device_of(s)
    from torch._dynamo.utils import counters  # after the device check: importing dynamo takes seconds

    init = model(s).to(dev).state_dict()
    objective = objective_for(TRAIN_RUNS["meanflow"], s.compile_steps)
    kw = dict(bf16=s.bf16, steps=s.compile_steps, size=s.compile_batch)
    with tf32(True):
        eager = train_steps(s, dev, init, objective, **kw)
        eager.pop("net")
        torch.compiler.reset()
        counters.clear()
        try:
            compiled = train_steps(s, dev, init, objective, **kw,
                                   net_wrapper=lambda n: torch.compile(n, backend=s.compile_backend))
            compiled.pop("net")
        finally:
            out["unique_graphs"] = int(counters["stats"]["unique_graphs"])
            torch.compiler.reset()
    half = s.compile_steps // 2
    eager_ms, compiled_ms = statistics.median(eager["ms"][half:]), statistics.median(compiled["ms"][half:])
    out.update(backend=s.compile_backend, steps=s.compile_steps, precision="bf16" if s.bf16 else "fp32",
               eager_loss=eager["loss"], compiled_loss=compiled["loss"], eager_mse=eager["mse"],
               compiled_mse=compiled["mse"], compile_seconds=(compiled["ms"][0] - eager_ms) / 1e3,
               eager_step_ms=eager_ms, compiled_step_ms=compiled_ms, speedup=eager_ms / compiled_ms,
               grads_finite=compiled["grads_finite"])
    for key in ("loss", "mse"):
        out[f"max_rel_diff_{key}"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(compiled[key], eager[key]))
    out["within_tolerance"] = out["max_rel_diff_mse"] <= TOLERANCE[out["precision"]]
    if not all(math.isfinite(v) for v in compiled["loss"]) or not compiled["grads_finite"]:
        raise FloatingPointError("the compiled steps gave a non-finite loss or gradient")


# ----------------------------------------------------------------------------- 7. memory and 8. ddp

PLAN_ATTRIBUTES = ("peak_bytes", "peak", "total_bytes", "total", "bytes")  # tried in order on a phase entry


def _planned_peak(entry: Any) -> tuple[int, str]:
    """(bytes, where they came from) of one ``MemoryPlan.phases`` entry: a number, or its first
    ``PLAN_ATTRIBUTES`` attribute / key."""
    if isinstance(entry, (int, float)):
        return int(entry), "value"
    for attr in PLAN_ATTRIBUTES:
        value = entry.get(attr) if isinstance(entry, dict) else getattr(entry, attr, None)
        if isinstance(value, (int, float)):
            return int(value), attr
    raise TypeError(f"a memory-plan phase entry {type(entry).__name__} has none of {PLAN_ATTRIBUTES}")


def write_latents(folder: Path, s: Settings, num: int = 64) -> Path:
    """A small random latents folder in the format ``extract_latents`` writes (float16 mean / log-variance)."""
    from alphaflow.data.latents import FORMAT, LABELS, LOGVAR, MEAN, META, VERSION

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    np.save(folder / MEAN, rng.standard_normal((num, *s.shape)).astype(np.float16))
    np.save(folder / LOGVAR, (rng.standard_normal((num, *s.shape)) * 0.1 - 2).astype(np.float16))
    np.save(folder / LABELS, rng.integers(0, s.classes, num).astype(np.int64))
    (folder / META).write_text(json.dumps({"format": FORMAT, "version": VERSION, "num": num, "shape": list(s.shape),
                                           "num_classes": s.classes, "classes": [], "dtype": "float16"}))
    return folder


def _measure(fn: Callable[[], Any], dev: torch.device) -> tuple[int, Any]:
    """(peak bytes allocated while ``fn`` ran, its result). CUDA: ``max_memory_allocated`` after a reset, so
    whatever was resident when it began counts too; CPU: the bench's allocator trace (above the start)."""
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        result = fn()
        sync(dev)
        return torch.cuda.max_memory_allocated(dev), result
    box: list = []
    peak, _ = peak_memory(lambda: box.append(fn()), dev)
    return peak, box[0]


def _resident_bytes(*objects: Any) -> int:
    """Bytes of the tensors of modules, optimisers and tensors (the CPU's stand-in for memory_allocated)."""
    total = 0
    for obj in objects:
        if isinstance(obj, nn.Module):
            tensors = [*obj.parameters(), *obj.buffers(), *(p.grad for p in obj.parameters() if p.grad is not None)]
        elif isinstance(obj, torch.optim.Optimizer):
            tensors = [v for st in obj.state.values() for v in st.values() if isinstance(v, Tensor)]
        else:
            tensors = [obj]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _train_phase(cfg, dev: torch.device, steps: int = 2) -> dict[str, Any]:
    """The trainer's set-up and ``steps`` steps (dataset, model, EMA, Adam, autocast objective, hygiene, EMA
    update), keeping everything a run keeps resident; the second step runs with Adam's moments allocated."""
    from alphaflow.data import build_dataset
    from alphaflow.train.optim import EMA

    data = build_dataset(cfg.data.name, path=cfg.data.path, resolution=cfg.data.resolution, seed=cfg.seed)
    data.fit_stats(torch.Generator().manual_seed(cfg.seed), cfg.data.stats_samples)
    torch.manual_seed(cfg.seed)
    net = build_for_data(cfg.model.name, data.shape, data.num_classes, **model_options(cfg.model)).to(dev)
    ema = EMA(net, cfg.ema.halflife_steps, cfg.ema.rampup_ratio)
    objective = objective_from_options(cfg.objective, cfg.train.steps)
    o = cfg.optim
    opt = build_optimizer(net.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and dev.type == "cuda")
    params = list(net.parameters())
    for step in range(steps):
        raw, labels = data.get(torch.arange(cfg.train.batch_size) % len(data))
        x, y = data.prepare(raw.to(dev), gen), labels.to(dev)
        with autocast(dev, bf16):
            terms = objective(net, x, y, step=step, generator=gen)
        loss = terms.loss.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sanitize_and_clip(params, o.grad_clip)
        opt.step()
        ema.update(net, step + 1)
        del terms, loss
    return {"data": data, "net": net, "ema": ema, "opt": opt, "objective": objective, "x": x, "y": y}


def _probe_call(cfg, state: dict[str, Any], x: Tensor, y: Tensor, step: int) -> dict[str, float]:
    objective = state["objective"]
    sample = probe_sample(x, y, objective, generator=torch.Generator(device=x.device).manual_seed(0))
    return probe_gradients(state["net"], x, sample, guidance=objective.guidance, training=objective if cfg.probe.loss else None,
                           step=step, parts=cfg.probe.parts)


def memory(s: Settings, out: dict) -> None:
    """``alphaflow.perf.memplan.plan_memory(cfg, world_size=1)`` for a DiT-B/2 latents run against the peaks measured
    when those phases run for real (peak statistics reset between phases): "train" (the trainer's set-up and two
    steps from an empty device), "online_probe" (a probe with the training state resident) and "offline_probe"
    (``alphaflow probe``: a fresh model and one probe batch). Reports planned, measured and planned/measured."""
    dev = device_of(s)
    try:
        memplan = importlib.import_module("alphaflow.perf.memplan")
    except ModuleNotFoundError as exc:
        if exc.name != "alphaflow.perf.memplan":
            raise
        raise Skip("alphaflow/perf/memplan.py (plan_memory) is not in this tree yet") from None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"model.name={s.model}", "data.name=latents",
                                 f"data.path={write_latents(Path(tmp) / 'latents', s)}", "data.stats_samples=64",
                                 f"data.resolution={8 * s.shape[-1]}",  # the plan's latent grid is resolution/8
                                 f"train.batch_size={s.memory_batch}", f"probe.batch_size={s.memory_batch}",
                                 f"train.device={s.device}", "train.steps=1000", "probe.every=100",
                                 "train.log_every=100"])
        plan = memplan.plan_memory(cfg, world_size=1, device=s.device)
        planned, source = {}, {}
        for phase, entry in plan.phases.items():
            planned[phase], source[phase] = _planned_peak(entry)
        out["planned_bytes"], out["plan_attribute"] = planned, source
        cleanup(s)
        measured: dict[str, int] = {}
        with tf32(True):
            measured["train"], state = _measure(lambda: _train_phase(cfg, dev), dev)
            peak, _ = _measure(lambda: _probe_call(cfg, state, state["x"], state["y"], 2), dev)
            # CUDA's peak already counts the resident training state; the CPU trace starts above it
            measured["online_probe"] = peak if dev.type == "cuda" else peak + _resident_bytes(
                state["net"], state["ema"].model, state["opt"], state["x"])
            weights = {k: v.detach().cpu() for k, v in state["net"].state_dict().items()}
            data, objective = state["data"], state["objective"]
            del state
            cleanup(s)
            out["base_bytes_before_offline"] = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0

            def offline() -> None:  # probe_run: a fresh net with the checkpoint's weights, one batch
                net = build_for_data(cfg.model.name, data.shape, data.num_classes).to(dev)
                net.load_state_dict(weights)
                raw, labels = data.get(torch.arange(cfg.probe.batch_size) % len(data))
                x = data.prepare(raw.to(dev), torch.Generator(device=dev).manual_seed(0))
                _probe_call(cfg, {"net": net, "objective": objective}, x, labels.to(dev), 2)

            measured["offline_probe"], _ = _measure(offline, dev)
    out["measured_bytes"] = measured
    out["planned_over_measured"] = {k: planned[k] / measured[k] for k in measured if k in planned and measured[k]}
    out["batch"], out["model"] = s.memory_batch, s.model
    missing = [k for k in ("train", "offline_probe") if k not in planned]
    if missing:
        raise KeyError(f"the memory plan has no phase {missing}; it has {sorted(planned)}")


def ddp(s: Settings, out: dict) -> None:
    """A 2-rank NCCL DDP run of the project's trainer (``alphaflow.train.loop.train``) on the embedded digits:
    ``ddp_steps`` steps, a log tick and an online probe every half; the run's metrics rows (loss, images/s,
    the probe's cosines averaged over ranks), its wall time and its DONE marker. Needs ≥ 2 GPUs."""
    if s.device != "cuda":
        raise Skip("NCCL DDP needs >= 2 CUDA GPUs; the CPU rehearsal has none (tests/test_gpucheck.py runs the same "
                   "2-rank launch with gloo on the CPU)")
    device_of(s)
    n = torch.cuda.device_count()
    if n < 2:
        raise Skip(f"a 2-rank NCCL run needs >= 2 GPUs; this machine has {n}")
    with tempfile.TemporaryDirectory() as tmp:
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
    from alphaflow.runfolder import RunFolder

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
    result = {"world_size": world, "steps": steps, "wall_seconds": wall, "done": run.is_done(),
              "rows": [{k: v for k, v in row.items() if k in ("step", "loss", "loss_mse", "grad_norm", "images_per_sec")
                        or k in ("probe_cos_tfm_tcc", "probe_cos_fmb_tcc", "probe_gradnorm_mf")} for row in rows]}
    probe_rows = [row for row in rows if any(k.startswith("probe_") for k in row)]
    if not result["done"] or [row["step"] for row in rows] != list(range(half, steps + 1, half)) or not probe_rows:
        raise RuntimeError(f"the DDP run is incomplete: done={result['done']}, metrics rows at steps "
                           f"{[row['step'] for row in rows]}, {len(probe_rows)} with a probe")
    for row in rows:
        check_finite(f"ddp metrics at step {row['step']}",
                     {k: v for k, v in row.items() if k.startswith(("loss", "probe_cos"))})
    return result
