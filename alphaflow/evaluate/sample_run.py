"""``alphaflow sample``: sample grids of any run folder, trained here or imported (``alphaflow import-official``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from alphaflow.train.build import open_run
from alphaflow.evaluate.quality import per_nfe_paths
from alphaflow.run.images import save_grid_png
from alphaflow.objectives import objective_from_options
from alphaflow.run.checkpoints import check_weights, load_weights, select_checkpoints
from alphaflow.core.sampling import generate
from alphaflow.train.distributed import resolve_device
from alphaflow.train.sample_grids import sampler_for


@torch.no_grad()
def sample_run(run_dir: str | Path, out: str | Path, *, nfe: Sequence[int] = (1, 2), num: int = 64,
               weights: str = "ema", sampler: str = "auto", t_mid: float | None = None, seed: int = 0,
               checkpoint: str = "last", device: str = "auto", log: Callable[[str], None] = print) -> list[Path]:
    """Draw ``num`` samples per NFE from one checkpoint (the same noise and labels, balanced over the classes, for
    every NFE) and write each NFE's grid; returns the files. A latent run decodes with its data.vae_path."""
    if num < 1 or any(k < 1 for k in nfe):
        raise ValueError(f"--num and --nfe must be positive, got num={num}, nfe={list(nfe)}")
    check_weights(weights)
    paths = per_nfe_paths(out, nfe, ".png", "--out")
    dev = resolve_device(device)
    run, cfg, data, net = open_run(run_dir, dev)
    ((step, path),) = select_checkpoints(run, str(checkpoint), "sample")
    state, stats = load_weights(path, weights)
    net.load_state_dict(state)
    data.load_state_dict(stats)
    net.eval()
    if data.decodes_samples:
        if cfg.data.vae_path is None:
            raise ValueError(f"{run.root} holds latents: its samples need the VAE to decode them; pass "
                             "--vae-path FOLDER (a local diffusers AutoencoderKL) or set data.vae_path")
        data.attach_decoder(cfg.data.vae_path, dev)
    chosen = sampler_for(objective_from_options(cfg.objective, cfg.train.steps), sampler)
    t_mid = cfg.sample.t_mid if t_mid is None else t_mid
    noise = torch.randn(num, *data.shape, generator=torch.Generator().manual_seed(seed)).to(dev)
    labels = (torch.arange(num) % data.num_classes).to(dev) if data.num_classes > 0 else None
    written = []
    for k in nfe:
        x = generate(net, noise, labels, nfe=k, sampler=chosen, t_mid=t_mid,
                     generator=torch.Generator(device=dev).manual_seed(seed + 1))
        images = data.to_images(x)
        if images is None:
            raise ValueError(f"{type(data).__name__} samples are not images; `alphaflow sample` writes image grids")
        written.append(save_grid_png(images.clamp(-1, 1), paths[k]))
        log(f"step {step}  {k}-NFE {chosen}: {num} samples → {paths[k]}")
    return written
