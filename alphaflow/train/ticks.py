"""The metrics row of a log tick: each step's scalars summed on the device (``accumulate``), then one row of means
and maxima over the tick's steps and the ranks (``log_row``; docs/spikes.md reads the maxima)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from alphaflow.train import distributed as D
from alphaflow.train.step import LoopState, StepOutput, Tick


def accumulate(tick: Tick, out: StepOutput) -> None:
    """Sum the step's scalars on the device (no host transfer); a log row reports their means over the tick
    (EDM-style), each over the steps that had it (the conflict scalars skip reuse steps), and, as ``max_<key>``,
    the largest per-step value of the loss, its parts, the gradient norm and the objective's per-row logs
    (docs/spikes.md). The sums and maxima are float64, so a long tick loses nothing to round-off.

    A per-row log is a [B] tensor in ``Terms.logs``, NaN on the rows it does not describe (MeanFlow's
    ``dudt_rms``: ``alphaflow.core.jvp.dudt_rms``); its per-step value is the mean over the described rows. A step
    skipped by ``train.spike_guard`` is counted and its values logged (its batch was seen; only the update was
    held back); a non-finite step is only counted."""
    tick.steps += 1
    if not out.finite:
        tick.nonfinite += 1
        return
    tick.finite += 1
    tick.skipped += int(out.skipped)
    peaks = {"loss": out.loss, "grad_norm": out.grad_norm}
    peaks.update({f"loss_{name}": c.detach().float().mean() for name, c in out.terms.components.items()})
    peaks.update({key: v.detach().float().nanmean() for key, v in out.terms.logs.items()
                  if isinstance(v, Tensor) and v.ndim == 1})
    for key, value in {**peaks, **out.conflict}.items():
        value = value.detach().to(torch.float64)
        tick.sums[key] = tick.sums[key] + value if key in tick.sums else value
        tick.counts[key] = tick.counts.get(key, 0) + 1
        if key in peaks:  # torch.maximum keeps a NaN; a resumed tick holds floats
            high = tick.maxima.get(key)
            tick.maxima[key] = value if high is None else torch.maximum(
                high if isinstance(high, Tensor) else value.new_tensor(high), value)


def log_row(state: LoopState, lr: float, logs: dict[str, Tensor | float], info: D.DistInfo,
            batch_size: int) -> dict[str, Any]:
    """The metrics row of the tick that ends here (means over its steps, averaged over ranks; maxima over its
    steps and ranks); starts a new tick."""
    tick = state.tick
    keys, peaks = sorted(tick.sums), sorted(tick.maxima)
    values: list[float] = []
    if keys:  # on the run's device: one all-reduce of the means, one of the maxima, one host transfer per log tick
        means = torch.stack([on_device(tick.sums[k], info) / max(tick.counts.get(k, tick.finite), 1) for k in keys])
        reduced = [D.all_reduce_mean(means, info)]
        if peaks:
            reduced.append(D.all_reduce_max(torch.stack([on_device(tick.maxima[k], info) for k in peaks]), info))
        values = torch.cat(reduced).tolist()
    seconds = state.wall - tick.wall
    row = {"step": state.step, "images": state.images, "wall": round(state.wall, 3), "lr": lr,
           "alpha": float(logs.get("alpha", float("nan"))), "ratio_fm": float(logs.get("ratio_fm", float("nan"))),
           **{k: float(v) for k, v in logs.items() if k not in ("alpha", "ratio_fm") and isinstance(v, (int, float))},
           **dict(zip(keys + [f"max_{k}" for k in peaks], values)), "nonfinite": tick.nonfinite,
           "spike_skipped": tick.skipped, "images_per_sec": tick.steps * batch_size / max(seconds, 1e-9)}
    state.tick = Tick(wall=state.wall)
    return row


def on_device(value: Tensor | float, info: D.DistInfo) -> Tensor:
    """A tick's sum or maximum as a float64 tensor on the run's device (a resumed tick holds floats)."""
    return torch.as_tensor(value, dtype=torch.float64, device=info.device)
