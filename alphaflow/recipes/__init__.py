"""Named recipes: YAML files that ``alphaflow.config.load_config`` accepts by name.

    load_config("imagenet-b2", ["data.path=/data/imagenet-latents"])

Each file is a partial config over the defaults of ``alphaflow/config.py`` and says in its header
where its values come from. A recipe name is the file's stem (``alphaflow.config`` resolves names
from this folder itself, so that config imports nothing above it; a test keeps the two in step).
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent

RECIPES: dict[str, Path] = {
    "digits": _HERE / "digits.yaml",  # the embedded default: 8x8 digits, DiT-T/2, CPU-sized
    "cifar10": _HERE / "cifar10.yaml",  # project adaptation of the B/2 recipe to CIFAR-10 pixels
    "imagenet-b2": _HERE / "imagenet-b2.yaml",  # α-Flow-B/2 non-cfg, 400K (docs/objectives.md#released-schedules)
    "imagenet-b2-cfg": _HERE / "imagenet-b2-cfg.yaml",  # α-Flow-B/2-cfg, 1.2M
    "imagenet-xl2-cfg": _HERE / "imagenet-xl2-cfg.yaml",  # α-Flow-XL/2-cfg, 1.2M
    "imagenet-meanflow-b2": _HERE / "imagenet-meanflow-b2.yaml",  # MeanFlow-B/2 non-cfg baseline
    "imagenet-fm-b2": _HERE / "imagenet-fm-b2.yaml",  # flow-matching B/2 baseline
}

__all__ = ["RECIPES"]
