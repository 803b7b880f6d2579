"""EMA sample grids for a run folder: fixed noise and balanced labels, one PNG per NFE."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from alphaflow.config import Config
from alphaflow.run.files import save_torch_atomic
from alphaflow.run.images import save_grid_png, save_scatter_png
from alphaflow.objectives import Objective
from alphaflow.run.folder import RunFolder
from alphaflow.core.sampling import generate
from alphaflow.data.base import TrainData


def sampler_for(objective: Objective, sampler: str) -> str:
    """``sampler``, or for 'auto' the objective's own ``default_sampler`` (Euler for flow matching, whose network
    never saw r < t; the ODE sampler otherwise)."""
    return objective.default_sampler if sampler == "auto" else sampler


@torch.no_grad()
def write_samples(run: RunFolder, model: nn.Module, data: TrainData, cfg: Config, step: int,
                  objective: Objective) -> list[Path]:
    """Draw cfg.sample.num samples with ``model`` (the EMA) at each cfg.sample.nfe; returns the files written."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.sample.seed)
    noise = torch.randn(cfg.sample.num, *data.shape, generator=gen).to(device)
    labels = (torch.arange(cfg.sample.num) % data.num_classes).to(device) if data.num_classes > 0 else None
    sampler = sampler_for(objective, cfg.sample.sampler)
    written: list[Path] = []
    for nfe in cfg.sample.nfe:
        out = generate(model, noise, labels, nfe=nfe, sampler=sampler, t_mid=cfg.sample.t_mid,
                       generator=torch.Generator(device=device).manual_seed(cfg.sample.seed + 1))
        images = data.to_images(out)
        path = run.sample_path(step, nfe)
        if images is not None:
            written.append(save_grid_png(images, path, upscale=max(1, 64 // images.shape[-1])))
        elif out.ndim == 2 and out.shape[1] == 2:
            written.append(save_scatter_png(out, path))
        else:  # e.g. latents without data.vae_path: keep the raw samples rather than nothing
            save_torch_atomic(out.cpu(), path.with_suffix(".pt"), what=f"raw samples {path.with_suffix('.pt').name}")
            written.append(path.with_suffix(".pt"))
    return written
