"""``alphaflow sweep FILE --smoke``: rehearse every run of a sweep file for a few steps on this machine's CPU.

A cluster sweep fails late in the expensive way: a wrong data path, a schedule that does not parse, an
objective option the model lacks, a ``train.init_from`` pattern that matches nothing, all found after the
job has waited in the queue. The rehearsal trains every run of the file, in this process and in the file's
order, with everything that decides *what* is trained kept as the file says: objective, α and ratio
schedules, guidance, conflict rule, data pipeline (path, resolution, workers, VAE), warm-up and EMA. Only
*how big and how long* is shrunk (``shrink_config``):

    model.name                a DiT larger than the CPU sizes (T, XT, N) becomes DiT-XT with the same patch;
                              model.decouple_at / aux_head_depth keep their share of the depth
    batch sizes               train, probe and evaluation batches at most ``SMOKE_BATCH``
    steps and intervals       ``steps`` steps, a row every step, a checkpoint, probe and evaluation at
                              half-way, grids and permanent snapshots at the end
    sample counts             grids, evaluation samples and probe batches capped
    data.workers              at most this machine's CPUs (the file's suit a cluster task)
    train.device              cpu;  log.wandb online → offline (a rehearsal creates no wandb runs)

The step-unit schedules are not rescaled, so a 4-step rehearsal of "sigmoid 0 → 400K" trains at α ≈ 1:
the point is that every code path of the real run starts, checkpoints, resumes and ends, not its numbers.
The file's ``resources`` are checked (``alphaflow.launch.resources``) and its SLURM batch script built exactly as
the real submission would (``executors.sbatch_script``, no SLURM needed); they are shown, not used
(``alphaflow.cli.sweep``). A latents run without ``data.path`` trains on made-up latents of its recipe's
shape (``alphaflow.launch.smoke_data``). The runs go to their own root (``runs/<sweep>-smoke`` by default),
named by the hash of the shrunk config, so they never mix with real runs; a second ``--smoke`` skips the runs
that finished and retries the others.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from alphaflow.config import Config, apply_overrides, config_hash, validate
from alphaflow.launch.sweeps import Sweep, SweepRun
from alphaflow.models import MODELS
from alphaflow.models.registry import SIZES
from alphaflow.run.folder import RunFolder, State, run_status

SMOKE_STEPS = 4
SMOKE_BATCH = 8
SMOKE_SAMPLES = 16  # sample grids, evaluation samples per NFE, evaluation batch
SMOKE_PROBE_BATCHES = 2
SMOKE_SIZE = "XT"
CPU_SIZES = ("T", "XT", "N")  # registry sizes a CPU trains a step of in well under a second


def _get(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _model_changes(cfg: Config) -> dict[str, Any]:
    """DiT-<size>/<p> beyond the CPU sizes → DiT-XT/<p>; block counts scaled to the same share of the depth."""
    name = cfg.model.name
    size, _, patch = name[4:].partition("/")
    if name not in MODELS or size in CPU_SIZES:
        return {}
    out: dict[str, Any] = {"model.name": f"DiT-{SMOKE_SIZE}/{patch}"}
    old, new = SIZES[size][0], SIZES[SMOKE_SIZE][0]
    for key in ("decouple_at", "aux_head_depth"):
        blocks = getattr(cfg.model, key)
        if blocks is not None:
            out[f"model.{key}"] = min(new, max(1 if blocks else 0, round(blocks * new / old)))
    return out


def shrink_changes(cfg: Config, steps: int = SMOKE_STEPS) -> dict[str, Any]:
    """The dotted keys of ``cfg`` a rehearsal of ``steps`` steps changes, with their new values (see the module
    docstring); keys already small enough are left out."""
    if steps < 2:
        raise ValueError(f"--smoke-steps must be >= 2 (a checkpoint at half-way, then the end), got {steps}")
    half = steps // 2
    out = _model_changes(cfg)

    def cap(key: str, limit: int) -> None:  # 0 (off) is below every limit and stays off
        if _get(cfg, key) > limit:
            out[key] = limit

    cap("train.batch_size", SMOKE_BATCH)
    cap("train.steps", steps)
    cap("train.log_every", 1)
    cap("train.ckpt_every", half)
    for key in ("train.keep_every", "train.sample_every"):
        cap(key, steps)
    for key in ("probe.every", "eval.every"):
        cap(key, half)
    cap("probe.batches", SMOKE_PROBE_BATCHES)
    old_probe = cfg.probe.batch_size
    cap("probe.batch_size", SMOKE_BATCH)
    chunk = cfg.probe.chunk_size
    if 0 < chunk < old_probe and old_probe > SMOKE_BATCH:  # keep the chunked path chunked
        out["probe.chunk_size"] = max(1, chunk * SMOKE_BATCH // old_probe)
    for key in ("sample.num", "eval.num_samples", "eval.final_samples", "eval.batch_size"):
        cap(key, SMOKE_SAMPLES)
    cap("eval.decode_batch_size", SMOKE_BATCH)
    cap("data.workers", len(os.sched_getaffinity(0)))  # the file's are sized for a cluster task's CPUs
    if cfg.train.device != "cpu":
        out["train.device"] = "cpu"
    if cfg.log.wandb == "online":
        out["log.wandb"] = "offline"
    return out


def shrink_config(cfg: Config, steps: int = SMOKE_STEPS) -> tuple[Config, dict[str, Any]]:
    """``cfg`` shrunk for a rehearsal, and the changes made (``shrink_changes``); the result is validated."""
    changes = shrink_changes(cfg, steps)
    small = apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in changes.items()])
    validate(small)
    return small, changes


@dataclass
class Shrunk:
    """A dotted key the rehearsal changed: the file's values (over the runs) and the rehearsal's."""

    key: str
    before: list[Any]
    after: list[Any]
    runs: int


def smoke_sweep(sweep: Sweep, steps: int = SMOKE_STEPS) -> tuple[Sweep, list[Shrunk]]:
    """The rehearsal of ``sweep``: every run shrunk (``shrink_config``) and renamed by its new hash (same readable
    description), the sweep named ``<name>-smoke``; and what was shrunk, over all runs."""
    runs: list[SweepRun] = []
    table: dict[str, Shrunk] = {}
    for r in sweep.runs:
        small, changes = shrink_config(r.config, steps)
        desc = r.name.rsplit("-", 1)[0]
        runs.append(SweepRun(f"{desc}-{config_hash(small)}", small,
                             r.overrides + [f"{k}={json.dumps(v)}" for k, v in changes.items()], r.variant,
                             f"{sweep.name}-smoke"))
        for key, value in changes.items():
            row = table.setdefault(key, Shrunk(key, [], [], 0))
            row.runs += 1
            for side, v in ((row.before, _get(r.config, key)), (row.after, value)):
                if v not in side:
                    side.append(v)
    return Sweep(f"{sweep.name}-smoke", runs, sweep.resources), list(table.values())


def describe(file: str | Path, sweep: Sweep, shrunk: list[Shrunk], root: Path, steps: int) -> str:
    """The rehearsal's header: what it runs where, and the table of what it shrank."""
    lines = [f"smoke rehearsal of {file}: {len(sweep.runs)} runs, {steps} steps each on this CPU, in this process, "
             f"into {root}",
             "shrunk to fit this machine (everything else as in the file: objective, schedules, guidance, conflict, "
             "data, optimiser, EMA):"]
    width = max((len(s.key) for s in shrunk), default=0)
    for s in shrunk:
        show: Callable[[list[Any]], str] = lambda values: ", ".join(str(v) for v in values)  # noqa: E731
        count = "" if s.runs == len(sweep.runs) else f"   ({s.runs} of {len(sweep.runs)} runs)"
        lines.append(f"  {s.key:<{width}}  {show(s.before)} -> {show(s.after)}{count}")
    if not shrunk:
        lines.append("  (nothing)")
    return "\n".join(lines)


def rehearse(sweep: Sweep, root: Path, *, log: Callable[[str], None] = print) -> int:
    """Train every run of ``sweep`` (a ``smoke_sweep``) under ``root`` in the file's order: to half-way, then
    again from that checkpoint to the end, as a job requeued at its time limit would. One failure does not stop
    the rest; its traceback goes to the run's error.txt. Logs a table of the runs; returns how many did not finish.
    """
    from alphaflow.launch.training import train_run as train  # the trainer: heavy, imported here
    from alphaflow.launch.prepare import prepare_run
    from alphaflow.run.lock import RunLocked

    results = []
    for r in sweep.runs:
        start, error, folder = time.monotonic(), "", RunFolder(root / r.name)
        if run_status(folder).state == State.DONE:
            log(f"--- {r.name}: done by an earlier rehearsal")
            results.append((r, 0.0, ""))
            continue
        half = r.config.train.steps // 2
        log(f"--- {r.name}: to step {half}, then on from its checkpoint to {r.config.train.steps} (a requeue)")
        try:
            prepare_run(root, r)
            if folder.last_step() < half:
                train(r.config, folder.root, log=log, stop_at=half)
            train(r.config, folder.root, log=log)
        except RunLocked as exc:  # another rehearsal of this file trains it now
            error = f"skipped: {exc}"
        except Exception as exc:  # the rehearsal's point is to see every run's failure, not only the first
            folder.write_error(traceback.format_exc()[-4000:])
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            log(f"run {r.name} failed: {error}")
        results.append((r, time.monotonic() - start, error))
    return _summary(results, root, log)


def _summary(results: list[tuple[SweepRun, float, str]], root: Path, log: Callable[[str], None]) -> int:
    width = max(len(r.name) for r, _, _ in results)
    log(f"\n{'state':<11} {'step':>5} {'mse':>9} {'s':>6}  {'run':<{width}}")
    failed = 0
    for r, seconds, error in results:
        run = RunFolder(root / r.name)
        state = run_status(run).state
        rows = [row for row in run.read_metrics() if "loss" in row]  # the unweighted MSE where there is one:
        loss = f"{rows[-1].get('loss_mse', rows[-1]['loss']):.4g}" if rows else "-"  # adaptive weights give ≈ 1
        failed += state != State.DONE
        log(f"{state:<11} {run.last_step():>5} {loss:>9} {seconds:>6.1f}  {r.name}" + (f"   {error}" if error else ""))
    log(f"smoke: {len(results) - failed}/{len(results)} runs finished under {root}"
        + (f"; {failed} did not: see error.txt in their folders" if failed else ""))
    return failed
