"""Backbones: the DiT (adaLN-Zero) average-velocity network and its size registry (SPEC §6)."""

from alphaflow.models.dit import MODELS, DiT, build_model, count_parameters, parameter_count

__all__ = ["DiT", "MODELS", "build_model", "count_parameters", "parameter_count"]
