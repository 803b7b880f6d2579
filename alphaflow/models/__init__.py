"""Backbones: the DiT (adaLN-Zero) average-velocity network and its size registry
(docs/conventions.md#the-backbone), and an MLP for vector data. ``build_for_data`` picks the constructor
arguments from a dataset's sample shape."""

from __future__ import annotations

import difflib
import functools
from typing import Any, Callable

from torch import nn

from alphaflow.models.dit import DiT, count_parameters
from alphaflow.models.registry import MODELS, build_model, parameter_count
from alphaflow.models.mlp import MLP

MLPS: dict[str, Callable[..., MLP]] = {
    "MLP-S": functools.partial(MLP, hidden=128, depth=3),
    "MLP-B": functools.partial(MLP, hidden=256, depth=4),
    "MLP-L": functools.partial(MLP, hidden=512, depth=6),
}


def check_model_name(name: str) -> None:
    """Refuse a ``model.name`` that is in neither registry, with close matches."""
    if name not in MLPS and name not in MODELS:
        near = difflib.get_close_matches(name, [*MODELS, *MLPS], n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"unknown model.name {name!r}{hint}; DiTs are DiT-{{S,B,M,L,XL,T,N}}/{{1,2,4,8}}, "
                         f"MLPs are {', '.join(MLPS)} (see `alphaflow models`)")


def build_for_data(name: str, shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """A registry model sized for samples of ``shape``: (C, H, W) for a DiT, (D,) for an MLP."""
    check_model_name(name)
    if name in MLPS:
        if len(shape) != 1:
            raise ValueError(f"model.name={name!r} takes vector data [D], but the data has samples of shape {shape}")
        return MLPS[name](dim=shape[0], num_classes=num_classes, **kwargs)
    if len(shape) != 3:
        raise ValueError(f"model.name={name!r} takes images [C, H, W], but the data has samples of shape {shape}; "
                         f"for vector data use one of {sorted(MLPS)}")
    return build_model(name, input_size=(shape[1], shape[2]), in_channels=shape[0], num_classes=num_classes, **kwargs)


def model_options(model_cfg: Any) -> dict[str, Any]:
    """The build keywords a config's ``model`` section adds to the name: ``time_scale``, and ``decouple_at``,
    ``logvar``, ``aux_head_depth``, ``guidance_embed``, ``pos_embed``, ``attention`` and ``time_cond`` where they are
    set (the DiT only)."""
    options: dict[str, Any] = {"time_scale": model_cfg.time_scale}
    for name in ("decouple_at", "aux_head_depth"):
        if getattr(model_cfg, name, None) is not None:
            options[name] = getattr(model_cfg, name)
    for name in ("logvar", "guidance_embed"):
        if getattr(model_cfg, name, False):
            options[name] = True
    if getattr(model_cfg, "pos_embed", "sincos") != "sincos":
        options["pos_embed"] = model_cfg.pos_embed
    if getattr(model_cfg, "attention", "auto") != "auto":
        options["attention"] = model_cfg.attention
    if getattr(model_cfg, "time_cond", "t_and_h") != "t_and_h":
        options["time_cond"] = model_cfg.time_cond
    return options


__all__ = ["model_options", "DiT", "MLP", "MODELS", "MLPS", "build_model", "build_for_data", "check_model_name", "count_parameters", "parameter_count"]
