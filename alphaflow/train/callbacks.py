"""Callbacks: work that runs inside a training run without the loop knowing what it is.

The loop calls ``on_log`` at every metrics row (on every rank, so a callback may average over ranks; keys it
returns land in that row), ``on_row`` with the finished row once it is in metrics.jsonl (main rank; the
trackers of ``alphaflow.train.trackers``) and ``on_end`` once the last step is saved, before DONE (a crash there reruns
only the end-of-run work on resume). A callback names the config keys it serves in ``serves``; ``train``
refuses a config that turns on a key no callback serves (``eval.every`` without the evaluation callbacks,
say) instead of silently skipping it. The online gradient probe (``probe.every``) is the loop's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from alphaflow.config import Config
from alphaflow.data.base import TrainData
from alphaflow.objectives import Objective
from alphaflow.train.probes import probe_gradients, probe_sample
from alphaflow.train import distributed as D


@dataclass
class LogContext:
    """What a callback sees at a metrics row: the step just taken, its batch (x [B, ...], y [B] or None),
    the unwrapped network, its EMA copy, the objective, the process group and the training data."""

    step: int
    x: torch.Tensor
    y: torch.Tensor | None
    net: nn.Module
    ema: nn.Module
    objective: Objective
    info: D.DistInfo
    data: TrainData | None = None  # the run's training data


class Callback:
    """Base class; override what you need."""

    serves: tuple[str, ...] = ()  # config keys this callback implements, e.g. ("eval.every",)

    def on_log(self, ctx: LogContext) -> dict[str, Any]:
        """Keys to add to this step's metrics row (every rank; a callback may average over ranks)."""
        return {}

    def on_row(self, row: dict[str, Any]) -> None:
        """The finished metrics row, just after it was appended to metrics.jsonl (main rank only)."""

    def on_end(self, run_dir: Path, device: torch.device, info: D.DistInfo, log: Callable[[str], None]) -> None:
        """End-of-run work, after the last checkpoint and before DONE (every rank)."""

    def close(self) -> None:
        """Release what the callback holds open (a file, a tracker's run); ``train`` calls it on every exit,
        finished, stopped or failed, and a second call does nothing."""


def close_all(callbacks: list[Callback]) -> None:
    """``close`` every callback (``train``'s last step, whatever ended the run)."""
    for callback in callbacks:
        callback.close()


# config keys that ask for work a callback does: key → whether this config turns it on
def requested(cfg: Config) -> list[str]:
    wanted = {"probe.every": bool(cfg.probe.every), "eval.every": bool(cfg.eval.every),
              "eval.final": cfg.eval.final, "probe.final": cfg.probe.final}
    return [key for key, on in wanted.items() if on]


def check_served(cfg: Config, callbacks: list[Callback]) -> None:
    """Refuse a config that turns on work no callback does."""
    served = {key for cb in callbacks for key in cb.serves}
    missing = [key for key in requested(cfg) if key not in served]
    if missing:
        raise ValueError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} set but no callback serves "
                         f"{'it' if len(missing) == 1 else 'them'}: train with "
                         "alphaflow.launch.training.train_run(cfg, out), or pass "
                         "callbacks=alphaflow.evaluate.in_run.in_run_callbacks(cfg)")


class OnlineProbe(Callback):
    """``probe.every``: the terms' gradients on this step's batch with a fresh (t, r, ε) from a generator of
    its own (so training's random streams are untouched), plus ``probe.online_batches`` − 1 further batches of
    the same size drawn from the training data by that generator; each batch is probed on its own and the
    values are averaged over the batches (the paper's protocol: per-batch cosines, then their mean), then over
    ranks; keys prefixed ``probe_``."""

    serves = ("probe.every",)

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def on_log(self, ctx: LogContext) -> dict[str, Any]:
        p = self.cfg.probe
        if not p.every or ctx.step % p.every:
            return {}
        seed = p.seed * 1_000_003 + ctx.step * 1_009 + ctx.info.rank
        gen = torch.Generator(device=ctx.x.device).manual_seed(seed)
        rows = [self._probe(ctx, ctx.x, ctx.y, gen)]
        if p.online_batches > 1:
            assert ctx.data is not None  # the trainer's contexts carry its data
            picks = torch.Generator().manual_seed(seed)
            for _ in range(p.online_batches - 1):
                raw, labels = ctx.data.get(torch.randint(len(ctx.data), (ctx.x.shape[0],), generator=picks))
                x = ctx.data.prepare(raw.to(ctx.x.device), gen)
                rows.append(self._probe(ctx, x, labels.to(ctx.x.device) if ctx.y is not None else None, gen))
        keys = sorted(rows[0])
        means = [sum(row[k] for row in rows) / len(rows) for k in keys]
        return {f"probe_{k}": v for k, v in zip(keys, D.mean_over_ranks(means, ctx.info))}

    def _probe(self, ctx: LogContext, x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator) -> dict[str, float]:
        p = self.cfg.probe
        sample = probe_sample(x, y, ctx.objective, ratio_fm=p.ratio_fm, generator=gen)
        return probe_gradients(ctx.net, x, sample, guidance=ctx.objective.guidance,
                               training=ctx.objective if p.loss else None,
                               step=ctx.step - 1, parts=p.parts,  # step − 1: the update just taken
                               chunk_size=p.chunk_size)
