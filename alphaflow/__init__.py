"""alphaflow: α-Flow, MeanFlow and flow matching for few-step generation (arXiv 2510.20771).

    from alphaflow.models import build_model
    from alphaflow.objectives import build_objective, Sample
    from alphaflow.core.sampling import generate
    from alphaflow import load_model            # net = load_model("runs/x"): any run folder's network
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing alphaflow imports nothing heavy
    from pathlib import Path
    from typing import TypedDict, Unpack

    import torch
    from torch import nn

    class _LoadOptions(TypedDict, total=False):  # the keywords of alphaflow.train.build.load_model
        checkpoint: str
        device: str | torch.device

__version__ = "0.1.0"


def load_model(run_dir: str | Path, weights: str = "ema", **kwargs: Unpack[_LoadOptions]) -> nn.Module:
    """The network of a run folder, trained or imported: ``alphaflow.train.build.load_model``."""
    from alphaflow.train.build import load_model as load

    return load(run_dir, weights, **kwargs)
