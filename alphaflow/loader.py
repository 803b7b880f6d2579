"""``alphaflow.load_model``: the network of any run folder, trained here or imported
(``alphaflow import-official``), ready to call as ``net(z, r, t, labels)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from alphaflow.runfolder import load_weights, select_checkpoints


def load_model(run_dir: str | Path, weights: str = "ema", *, checkpoint: str = "last",
               device: str | torch.device = "cpu") -> nn.Module:
    """The network of ``run_dir`` with its ``weights`` ("ema" or "net", the raw weights) at ``checkpoint`` ("last"
    or a step), in eval mode on ``device``: ``u = net(z, r, t, labels)`` with z [B, C, H, W], r, t [B] and labels
    [B] int64 (or None), u the average velocity over [r, t] (docs/conventions.md). Built from the run's config.json
    and sized by its data (an imported run's latents-meta), so the run's data must be readable here; in the
    precision its weights were saved in."""
    from alphaflow.build import open_run  # the registries: imported on use, so `import alphaflow` stays light

    if weights not in ("ema", "net"):
        raise ValueError(f"weights must be 'ema' or 'net' (the raw weights), got {weights!r}")
    run, _, _, net = open_run(run_dir, torch.device(device))
    ((_, path),) = select_checkpoints(run, str(checkpoint))
    state, _ = load_weights(path, weights)
    floating = [v.dtype for v in state.values() if v.is_floating_point()]
    if floating:  # the weights' own precision (a float64 import stays float64)
        net.to(floating[0])
    net.load_state_dict(state)
    return net.eval()
