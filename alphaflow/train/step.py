"""One training step, written once: the trainer, ``alphaflow plan``, ``alphaflow bench`` and the GPU check call it.

    training_step(parts, state, x, y, lr=..., generator=...) -> StepOutput

in paragraphs (each under ``torch.profiler.record_function``, so a GPU trace and ``alphaflow bench --census``
name them): set the learning rate; the objective's terms under bf16 autocast (its target passes, α-Flow's jump,
MeanFlow's tangent, guidance, ride inside); zero the gradients and backward (or the conflict rule's two backward
passes, without DDP's all-reduce, reduced by hand), ``micro_batch`` rows at a time when set (gradient
accumulation: the sample drawn once for the whole batch and split by rows, DDP's all-reduce on the last); one
all-reduce of four flags (loss finite? gradients finite? did any rank ask to stop? is the gradient norm a spike,
``train.spike_guard``?), the step's only host sync; then, on a finite step that is no spike, gradient hygiene and
clipping, Adam and the EMA. A non-finite or skipped step changes nothing but the counters the caller keeps (and
the spike guard's window of norms).

The loop's state is typed (``LoopState``, ``Tick``): what a checkpoint saves of the loop besides the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from alphaflow.objectives import Objective, Sample
from alphaflow.objectives.base import Terms
from alphaflow.train import distributed as D
from alphaflow.train.split_backward import Coefficients, ConflictCombiner, no_sync
from alphaflow.train.optim import EMA, gradient_norm, sanitize_and_clip
from alphaflow.train.spikes import remember_norm, spike_flag

__all__ = ["Tick", "LoopState", "StepParts", "StepOutput", "training_step"]


@dataclass
class Tick:
    """Sums of the step scalars since the last metrics row (device float64 tensors; floats after a resume)."""

    steps: int = 0
    finite: int = 0   # steps whose loss was finite on every rank (skipped ones included: their values are logged)
    nonfinite: int = 0
    sums: dict[str, Tensor | float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # steps that had each key (conflict scalars skip some)
    wall: float = 0.0  # LoopState.wall when the tick began
    skipped: int = 0  # finite steps whose update train.spike_guard held back
    maxima: dict[str, Tensor | float] = field(default_factory=dict)  # the largest per-step value of some sums' keys


@dataclass
class LoopState:
    """The loop's counters, saved in every checkpoint (``to_checkpoint``/``from_checkpoint``)."""

    step: int = 0
    images: int = 0
    wall: float = 0.0  # seconds of training (maintenance excluded)
    nonfinite: int = 0  # consecutive non-finite steps
    tick: Tick = field(default_factory=Tick)
    conflict_coef: Coefficients | None = None  # conflict.every > 1: the reused coefficients, [K, 2]
    grad_norms: Tensor | list[float] | None = None  # train.spike_guard: the window of recent norms, [n ≤ 100], oldest first

    def to_checkpoint(self) -> dict[str, Any]:
        """Host values only (the tick's device sums and maxima as floats: float64 → float is exact; the norms'
        window as floats, exact for float32 and float64)."""
        tick = self.tick
        coef = self.conflict_coef.tolist() if isinstance(self.conflict_coef, Tensor) else self.conflict_coef
        norms = self.grad_norms.tolist() if isinstance(self.grad_norms, Tensor) else self.grad_norms
        return {"step": self.step, "images": self.images, "wall": self.wall, "nonfinite": self.nonfinite,
                "tick": {"steps": tick.steps, "finite": tick.finite, "nonfinite": tick.nonfinite, "wall": tick.wall,
                         "sums": {k: float(v) for k, v in tick.sums.items()}, "counts": dict(tick.counts),
                         "skipped": tick.skipped, "maxima": {k: float(v) for k, v in tick.maxima.items()}},
                **({"conflict_coef": coef} if coef is not None else {}),
                **({"grad_norms": norms} if norms is not None else {})}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> "LoopState":
        """The inverse of ``to_checkpoint``. A checkpoint of an earlier version may lack the tick counts (every
        key was then counted on every finite step), the maxima (the first row after the resume then reports the
        largest values of the steps since the resume) and the spike guard's window (it refills)."""
        t = saved.get("tick", {})
        counts = t.get("counts") or {k: t.get("finite", 0) for k in t.get("sums", {})}
        tick = Tick(t.get("steps", 0), t.get("finite", 0), t.get("nonfinite", 0), dict(t.get("sums", {})),
                    dict(counts), t.get("wall", 0.0), t.get("skipped", 0), dict(t.get("maxima", {})))
        return cls(saved["step"], saved["images"], saved["wall"], saved.get("nonfinite", 0), tick,
                   saved.get("conflict_coef"), saved.get("grad_norms"))


@dataclass
class StepParts:
    """What one step acts on. ``net``: the plain network (EMA, norms); ``model``: what the prediction pass goes
    through (``net`` itself, DDP-wrapped and/or compiled); ``ema`` None: no EMA (a measurement)."""

    net: nn.Module
    model: nn.Module
    objective: Objective
    opt: torch.optim.Optimizer
    ema: EMA | None
    info: D.DistInfo
    bf16: bool
    grad_clip: float | None
    conflict: ConflictCombiner | None = None
    params: list[nn.Parameter] = field(default_factory=list)
    micro_batch: int = 0  # rows per forward (gradient accumulation); 0: the whole batch at once
    spike_guard: float = 0.0  # k: skip a step whose gradient norm is not <= k · its running median (0: off)

    def __post_init__(self) -> None:
        if not self.params:
            self.params = list(self.net.parameters())


@dataclass
class StepOutput:
    terms: Terms                   # the objective's per-sample terms (their graph freed by backward)
    loss: Tensor                   # 0-d, the optimised mean (at least fp32)
    grad_norm: Tensor              # 0-d, before clipping; NaN on a non-finite step
    finite: bool                   # the loss was finite on every rank (the update ran unless ``skipped``)
    stop: bool                     # some rank's ``should_stop`` said yes
    conflict: dict[str, Tensor] = field(default_factory=dict)  # the conflict rule's scalars (exact steps)
    skipped: bool = False          # finite, but train.spike_guard held the update back (no Adam step, no EMA)


def training_step(parts: StepParts, state: LoopState, x: Tensor, y: Tensor | None, *, lr: float,
                  generator: torch.Generator | None = None, sample: Sample | None = None,
                  should_stop: Callable[[], bool] | None = None) -> StepOutput:
    """One optimiser step on the batch x: [B, ...] (prepared data), y: [B] int64 or None.

    ``state.step`` is the step being taken (0-based: schedules read it, the EMA is updated to step + 1); the
    caller advances the counters, the step keeps what its rules remember (``state.conflict_coef``, and with
    ``parts.spike_guard`` > 0 the window of gradient norms ``state.grad_norms``: ``alphaflow.train.spikes``).
    ``sample``: the objective's (t, r, ε, ...) given instead of drawn from ``generator`` (the memory plan and the
    census, on fake tensors). Returns what the caller logs.
    """
    p, step = parts, state.step
    for group in p.opt.param_groups:
        group["lr"] = lr
    p.opt.zero_grad(set_to_none=True)
    conflict: dict[str, Tensor] = {}
    if 0 < p.micro_batch < x.shape[0]:
        terms, loss, conflict = _accumulate_micro_batches(p, state, x, y, generator, sample)
    else:
        exact = p.conflict is not None and p.conflict.exact(step, state)  # two backward passes, reduced by hand
        with record_function("alphaflow.forward"), (no_sync(p.model) if exact else contextlib.nullcontext()), \
                _autocast(x, p.bf16):
            if sample is None:
                terms = p.objective(p.model, x, y, step=step, generator=generator)
            else:
                terms = p.objective(p.model, x, step=step, sample=sample)
        loss = _at_least_fp32(terms.loss).mean()
        with record_function("alphaflow.backward"):
            if p.conflict is None:
                loss.backward()
            else:
                conflict = p.conflict.backward(terms, step, state)
    # One reduction carries the cross-rank decisions and its host transfer is the step's only device sync. The
    # gradient norm is the same on every rank: DDP has averaged the gradients in backward.
    norm = gradient_norm(p.params)
    flags = torch.stack([torch.isfinite(loss.detach()).float(), torch.isfinite(norm).float(),
                         loss.new_full((), float(should_stop is not None and should_stop())),
                         spike_flag(norm, state.grad_norms, p.spike_guard)])
    all_finite, grads_finite, any_stop, any_spike = D.all_reduce_mean(flags, p.info).tolist()
    finite = all_finite == 1.0
    skipped = finite and any_spike > 0
    if p.spike_guard > 0 and finite and grads_finite == 1.0:  # the guard's window: finite norms, spikes included
        state.grad_norms = remember_norm(state.grad_norms, norm)
    if finite and not skipped:
        if p.conflict is not None:
            p.conflict.commit(state)
        with record_function("alphaflow.optimizer"):
            grad_norm = sanitize_and_clip(p.params, p.grad_clip, norm=norm, finite=grads_finite == 1.0)
            p.opt.step()
        if p.ema is not None:
            with record_function("alphaflow.ema"):
                p.ema.update(p.net, step + 1)
    else:  # a skipped step logs the norm that tripped the guard
        grad_norm = norm if skipped else loss.new_full((), float("nan"))
    return StepOutput(terms, loss.detach(), grad_norm, finite, any_stop > 0, conflict, skipped)


def _at_least_fp32(loss: Tensor) -> Tensor:
    """The per-row loss in fp32 under bf16 autocast, and as it is in an fp32 or float64 run."""
    return loss.to(torch.promote_types(loss.dtype, torch.float32))


def _autocast(x: Tensor, bf16: bool) -> torch.autocast:
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)


def _accumulate_micro_batches(p: StepParts, state: LoopState, x: Tensor, y: Tensor | None,
                              generator: torch.Generator | None,
                              sample: Sample | None) -> tuple[Terms, Tensor, dict[str, Tensor]]:
    """Forward and backward ``p.micro_batch`` rows at a time; returns the whole batch's terms (detached), loss and
    conflict scalars.

    The sample (t, r, ε, labels after dropout) is drawn once for the whole batch and split by rows, so every row
    sees what it would in one pass: the per-row terms are the same, and the gradients of the micro-batches'
    means, weighted by their share m/B, sum to the gradient of the whole batch's mean. DDP all-reduces only on
    the last micro-batch (``no_sync`` before), and not at all on a conflict rule's exact step, which sums g_TFM
    and g_TCC over the micro-batches and reduces them by hand (``ConflictCombiner.add`` / ``finish``)."""
    B, step = x.shape[0], state.step
    if sample is None:
        sample = p.objective.draw(x, y, step=step, generator=generator)
    exact = p.conflict is not None and p.conflict.exact(step, state)
    if p.conflict is not None:
        p.conflict.begin(step, state)
    parts: list[Terms] = []
    loss = x.new_zeros((), dtype=torch.promote_types(x.dtype, torch.float32))
    starts = range(0, B, p.micro_batch)
    for start in starts:
        rows = slice(start, min(start + p.micro_batch, B))
        share = (rows.stop - rows.start) / B
        with no_sync(p.model) if exact or start != starts[-1] else contextlib.nullcontext():
            with record_function("alphaflow.forward"), _autocast(x, p.bf16):
                terms = p.objective.evaluate(p.model, x[rows], sample.rows(rows), step)
            part = _at_least_fp32(terms.loss).mean() * share
            with record_function("alphaflow.backward"):
                if p.conflict is None:
                    part.backward()
                else:
                    p.conflict.add(terms, share)
        loss = loss + part.detach()
        parts.append(_detached(terms))
    conflict = p.conflict.finish() if p.conflict is not None else {}
    return _concatenated(parts, sample), loss, conflict


def _detached(terms: Terms) -> Terms:
    """The terms with their graph let go (what logging and the metrics rows read)."""
    weight = terms.weight.detach() if isinstance(terms.weight, Tensor) else terms.weight
    return dataclasses.replace(terms, loss=terms.loss.detach(), pred=terms.pred.detach(),
                               target=terms.target.detach(), weight=weight,
                               components={k: v.detach() for k, v in terms.components.items()})


def _concatenated(parts: list[Terms], sample: Sample) -> Terms:
    """One ``Terms`` for the whole batch from the micro-batches' (per-row fields concatenated)."""
    first = parts[0]
    weight = (torch.cat([cast(Tensor, t.weight) for t in parts])  # one objective: a tensor in every part, then
              if isinstance(first.weight, Tensor) else first.weight)
    return dataclasses.replace(first, loss=torch.cat([t.loss for t in parts]), pred=torch.cat([t.pred for t in parts]),
                               target=torch.cat([t.target for t in parts]), sample=sample, weight=weight,
                               components={k: torch.cat([t.components[k] for t in parts]) for k in first.components},
                               logs=_concatenated_logs(parts))


def _concatenated_logs(parts: list[Terms]) -> dict[str, Tensor | float]:
    """The last micro-batch's scalar logs, and every per-row log ([m] tensors, ``Terms.logs``) over the whole
    batch: concatenated, NaN on the rows of a micro-batch that did not log it (e.g. one without r < t rows)."""
    logs = dict(parts[-1].logs)
    for key in sorted({k for t in parts for k, v in t.logs.items() if isinstance(v, Tensor) and v.ndim == 1}):
        logs[key] = torch.cat([cast(Tensor, t.logs[key]) if key in t.logs  # a per-row log: a tensor where logged
                               else t.loss.new_full(t.loss.shape, float("nan"), dtype=torch.float32) for t in parts])
    return logs
