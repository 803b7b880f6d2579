"""Objective options: the config section of an objective, one dataclass per objective.

The run config's ``objective`` section is a tagged union on ``name``: each objective module defines
its ``Options`` (a subclass of ``ObjectiveOptions``) beside the objective, with that objective's
defaults, and the registry in ``alphaflow.objectives`` maps the name to both. Adding a field to an
objective's ``Options`` adds the config key ``objective.<field>`` for that objective only.

A field of type ``ScheduleConfig`` is resolved against the run's length, ``time`` becomes the
``time_sampler`` and ``fm_time``; every other field is passed to the objective's constructor under its own name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from alphaflow.objectives.guidance import Guidance
from alphaflow.core.schedules import ScheduleConfig
from alphaflow.core.timesteps import TimeConfig


@dataclass
class ObjectiveOptions:
    """What every objective takes: the r = t share, the time sampler, guidance and the adaptive weight
    w·‖Δ‖²/(sg(‖Δ‖²) + c)^p (arXiv 2510.20771 §4.2, Table 5b; p = 0 is the plain MSE), with ‖Δ‖² the mean
    (``adaptive_reduce="mean"``, α-Flow's official code) or the sum (``"sum"``, MeanFlow's JAX code) over a sample's
    elements (``alphaflow.objectives.base.adaptive_loss``)."""

    name: str = "objective"
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig.constant(0.0))
    time: TimeConfig = field(default_factory=TimeConfig)
    guidance: Guidance = field(default_factory=Guidance)
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3
    adaptive_reduce: str = "mean"


def constructor_kwargs(options: ObjectiveOptions, total_steps: int) -> dict[str, Any]:
    """The keyword arguments of the objective's constructor for a run of ``total_steps``."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.name == "name":
            continue
        if f.name == "time":
            kwargs["time_sampler"] = value.build()
            kwargs["fm_time"] = value.fm_time
        elif isinstance(value, ScheduleConfig):
            kwargs[f.name] = value.resolve(total_steps)
        else:
            kwargs[f.name] = value
    return kwargs
