"""The DiT size registry (DiT arXiv 2212.09748; docs/conventions.md#the-backbone): ``DiT-<size>/<patch>``."""

from __future__ import annotations

import difflib
import functools
from typing import Any

import torch

from alphaflow.models.dit import DiT, count_parameters

# name → (depth, hidden_size, num_heads); T and N are CPU sizes
SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "M": (16, 1024, 16),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
    "T": (4, 256, 4),  # "tiny": the default small DiT for CPU work
    "XT": (4, 128, 4),  # "extra tiny": a quarter of T's step cost, for many-run sweeps on a CPU
    "N": (2, 64, 2),  # "nano": unit tests
}
PATCH_SIZES = (1, 2, 4, 8)
ARCH_KEYS = frozenset({"patch_size", "hidden_size", "depth", "num_heads"})

MODELS: dict[str, functools.partial[DiT]] = {
    f"DiT-{size}/{p}": functools.partial(DiT, depth=d, hidden_size=w, num_heads=h, patch_size=p)
    for size, (d, w, h) in SIZES.items()
    for p in PATCH_SIZES
}


def build_model(name: str, **kwargs: Any) -> DiT:
    """Build a registry model, e.g. ``build_model("DiT-B/2", input_size=32, in_channels=4, num_classes=1000)``.

    kwargs: input_size, in_channels, num_classes, time_scale, mlp_ratio (the name fixes the rest).
    """
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Valid names: {', '.join(MODELS)}")
    clash = ARCH_KEYS & kwargs.keys()
    if clash:
        raise ValueError(f"{sorted(clash)} are fixed by the model name {name!r}; build DiT(...) directly to change them")
    return MODELS[name](**kwargs)


def parameter_count(name: str, **kwargs: Any) -> int:
    """Trainable parameters of ``build_model(name, **kwargs)``, built on the meta device (no memory)."""
    with torch.device("meta"):
        return count_parameters(build_model(name, **kwargs))
