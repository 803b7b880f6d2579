"""The main job until the full trainer lands: a few hundred steps of FM, MeanFlow and α-Flow on digits.

Each objective trains a fresh small DiT on the embedded default (8×8 digits) with the same
seed, batch and optimiser, then draws 1- and 2-NFE samples. Written under ``out``:
``samples/<objective>_nfe<k>.png`` and ``summary.json``. The nearest-neighbour distance of
samples to the training digits is a rough sanity number, not a quality metric.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from alphaflow.data import load_digits
from alphaflow.images import save_grid_png
from alphaflow.models import build_model
from alphaflow.objectives import build_objective
from alphaflow.sampling import generate

# The demo's three objectives; α-Flow anneals α from 1 to 0 over the first 80 % of the steps.
def _objectives(steps: int) -> dict[str, dict]:
    return {
        "fm": dict(name="fm"),
        "meanflow": dict(name="meanflow", ratio_fm=0.75),
        "alphaflow": dict(name="alphaflow", ratio_fm=0.5,
                          alpha=dict(kind="sigmoid", k_start=0, k_end=max(1, int(0.8 * steps)), clamp=5e-3)),
    }


def train_one(spec: dict, x: torch.Tensor, y: torch.Tensor, *, model: str, steps: int, batch: int, lr: float,
              seed: int, log: Callable[[str], None], log_every: int) -> tuple[torch.nn.Module, list[float]]:
    """Plain Adam loop (β = 0.9, 0.95) on one objective; returns the model and the loss per step."""
    torch.manual_seed(seed)
    net = build_model(model, input_size=x.shape[-1], in_channels=x.shape[1], num_classes=10)
    objective = build_objective(**spec)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        terms = objective(net, x[idx], y[idx], step=step, generator=gen)
        loss = terms.loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 16.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            mse = float(terms.components["mse"].detach().mean())
            log(f"  [{spec['name']:>9}] step {step:4d}  loss {losses[-1]:.4f}  mse {mse:.4f}  alpha {terms.logs['alpha']:.3f}")
    return net, losses


def run_demo(out: str | Path = "runs/demo", *, steps: int = 200, batch: int = 32, model: str = "DiT-T/2",
             lr: float = 1e-3, seed: int = 0, num_samples: int = 64, log: Callable[[str], None] = print,
             log_every: int = 50) -> dict[str, dict[str, float]]:
    """Train each demo objective for ``steps`` steps, save sample grids, return and write a summary."""
    out = Path(out)
    x, y = load_digits()
    summary: dict[str, dict[str, float]] = {}
    noise = torch.randn(num_samples, *x.shape[1:], generator=torch.Generator().manual_seed(seed + 1))
    labels = torch.arange(num_samples) % 10
    for key, spec in _objectives(steps).items():
        start = time.perf_counter()
        net, losses = train_one(spec, x, y, model=model, steps=steps, batch=batch, lr=lr, seed=seed, log=log,
                                log_every=log_every)
        seconds = time.perf_counter() - start
        net.eval()
        row = {"final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": seconds}
        sampler = "euler" if key == "fm" else "ode"
        for nfe in (1, 2):
            images = generate(net, noise, labels, nfe=nfe, sampler=sampler).clamp(-1, 1)
            save_grid_png(images, out / "samples" / f"{key}_nfe{nfe}.png", nrow=8, upscale=4)
            nearest = torch.cdist(images.flatten(1), x.flatten(1)).min(dim=1).values
            row[f"nn_dist_nfe{nfe}"] = float(nearest.mean())
        summary[key] = row
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"\n{'objective':>10} {'loss':>8} {'NN-dist 1-NFE':>14} {'NN-dist 2-NFE':>14} {'seconds':>8}")
    for key, row in summary.items():
        log(f"{key:>10} {row['final_loss']:8.4f} {row['nn_dist_nfe1']:14.3f} {row['nn_dist_nfe2']:14.3f} {row['seconds']:8.1f}")
    log(f"\nsample grids in {out / 'samples'}; summary in {out / 'summary.json'}")
    return summary
