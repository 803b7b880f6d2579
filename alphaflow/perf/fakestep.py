"""The trainer's step on fake tensors: what ``alphaflow plan`` (memory) and ``alphaflow bench --census`` (FLOPs,
bytes, kernels) measure without a GPU.

``FakeStep`` builds the network, Adam (fused, as on CUDA) and the EMA inside a ``FakeRun`` (shapes, dtypes,
autograd and autocast run; nothing is computed or allocated) and runs ``alphaflow.train.step.training_step``,
the function the trainer calls, with a sample drawn for real outside the fake mode and then faked (its values
are not needed: the r < t rows of a drawn sample are a slice, whose size is known on the host).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from alphaflow.train.probes import probe_sample
from alphaflow.objectives import Objective, Sample
from alphaflow.perf.memtrack import FakeRun
from alphaflow.train.distributed import DistInfo
from alphaflow.train.optim import EMA, build_optimizer
from alphaflow.train.step import LoopState, StepOutput, StepParts, training_step

__all__ = ["drawn_samples_only", "fake_sample", "draw", "FakeStep"]


@contextlib.contextmanager
def drawn_samples_only() -> Iterator[None]:
    """Skip ``Sample.validate`` while measuring: its value checks cannot run on fake tensors, and the samples
    here come from ``Objective.draw``, which needs no checking."""
    validate = Sample.validate
    setattr(Sample, "validate", lambda self, x: None)  # a method swapped for the block (setattr: mypy allows it)
    try:
        yield
    finally:
        setattr(Sample, "validate", validate)


def fake_sample(run: FakeRun, sample: Sample) -> Sample:
    """A drawn sample with its tensors made fake (their values are not needed: row selections are slices)."""
    changes: dict[str, Any] = {}  # field → its fake tensor (Any: replace checks ** against every field)
    for f in dataclasses.fields(sample):
        value = getattr(sample, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = run.real(value)
    return dataclasses.replace(sample, **changes)


def draw(objective: Objective, batch: int, shape: tuple[int, ...], seed: int = 0, *, step: int = 0,
         probe_ratio_fm: float | None = None) -> Sample:
    """A real sample for ``batch`` rows, drawn outside the fake mode (its tensors become fake ones later).

    Without labels: the network then embeds the null label, which costs what a class label costs and skips the
    label range check (a value check that fake tensors cannot answer)."""
    gen, x = torch.Generator().manual_seed(seed), torch.zeros(batch, *shape)
    if probe_ratio_fm is not None:  # a probe's sample
        return probe_sample(x, None, objective, ratio_fm=probe_ratio_fm, generator=gen)
    return objective.draw(x, None, step=step, generator=gen)


class FakeStep:
    """``with FakeRun() as run: fs = FakeStep(run, build, objective, ...); fs.step(x)``: the trainer's step.

    build: () → the network (called inside the fake mode); bf16: autocast as a GPU run has it; the optimiser is
    fused Adam with the recipe's defaults (the update's cost does not depend on the values); ``ema=False``
    leaves the EMA out."""

    def __init__(self, run: FakeRun, build: Callable[[], nn.Module], objective: Objective, *, bf16: bool,
                 grad_clip: float | None = 16.0, ema: bool = True, halflife_steps: float = 500.0,
                 micro_batch: int = 0) -> None:
        self.run = run
        self.net = build()
        opt = build_optimizer(self.net.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                              fused=True)
        self.ema = EMA(self.net, halflife_steps, None) if ema else None
        self.parts = StepParts(self.net, self.net, objective, opt, self.ema, DistInfo(), bf16, grad_clip,
                               micro_batch=micro_batch)

    def sample(self, x: Tensor, objective: Objective | None = None, *, step: int = 1, seed: int = 0) -> Sample:
        """A fake sample of ``objective`` (default: the step's) for the fake batch x: [B, ...]."""
        objective = objective or self.parts.objective
        return fake_sample(self.run, draw(objective, x.shape[0], tuple(x.shape[1:]), seed, step=step))

    def step(self, x: Tensor, objective: Objective | None = None, *, step: int = 1, seed: int = 0,
             sample: Sample | None = None) -> StepOutput:
        """One ``training_step`` on the fake batch x: [B, ...] with ``objective`` (default: the one given)."""
        if objective is not None:
            self.parts.objective = objective
        if sample is None:
            sample = self.sample(x, step=step, seed=seed)
        with drawn_samples_only():
            return training_step(self.parts, LoopState(step=step), x, None, lr=1e-4, sample=sample)
