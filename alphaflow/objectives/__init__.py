"""Objectives: flow matching, trajectory flow matching, MeanFlow, Shortcut and α-Flow.

Objectives never import models: they take any ``net(z, r, t, labels) -> u``.

    from alphaflow.objectives import build_objective
    obj = build_objective("alphaflow", alpha={"kind": "sigmoid", "k_end": 4000}, ratio_fm=0.5)
    terms = obj(net, x, labels, step=k)          # terms.loss [B], terms.components["tfm"] [B], ...

A new objective is one module here (the class, with its ``Options`` config section) and one entry
in ``REGISTRY`` below; ``objective.name=<its name>`` then trains it, with its options as config keys.
"""

from __future__ import annotations

import difflib

from alphaflow.objectives.alpha import AlphaFlow
from alphaflow.objectives.base import Objective, Sample, Terms, draw_sample
from alphaflow.objectives.flow_matching import FlowMatching, TrajectoryFlowMatching
from alphaflow.objectives.guidance import Guidance
from alphaflow.objectives.meanflow import MeanFlow
from alphaflow.objectives.options import ObjectiveOptions, constructor_kwargs
from alphaflow.objectives.shortcut import Shortcut

REGISTRY: tuple[type[Objective], ...] = (FlowMatching, TrajectoryFlowMatching, MeanFlow, Shortcut, AlphaFlow)

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in REGISTRY}
OPTIONS: dict[str, type[ObjectiveOptions]] = {cls.name: cls.Options for cls in REGISTRY}


def _check_name(name: str, key: str = "objective") -> None:
    if name not in OBJECTIVES:
        near = difflib.get_close_matches(str(name), OBJECTIVES, n=2)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"unknown {key} {name!r}{hint}; expected one of {sorted(OBJECTIVES)}")


def build_objective(name: str, **kwargs) -> Objective:
    """Build an objective by registry name; keyword arguments go to its constructor.

    ``guidance`` may be a ``Guidance`` or a dict of its fields.
    """
    _check_name(name)
    return OBJECTIVES[name](**kwargs)


def objective_from_options(options: ObjectiveOptions, total_steps: int) -> Objective:
    """The objective a config's ``objective`` section names, its schedules resolved against ``total_steps``."""
    _check_name(options.name, "objective.name")
    if type(options) is not OPTIONS[options.name]:
        raise ValueError(f"objective.name={options.name!r} needs {OPTIONS[options.name].__name__}, "
                         f"got {type(options).__name__}")
    return OBJECTIVES[options.name](**constructor_kwargs(options, total_steps))


__all__ = ["OBJECTIVES", "OPTIONS", "REGISTRY", "build_objective", "objective_from_options", "draw_sample",
           "Objective", "ObjectiveOptions", "Sample", "Terms", "Guidance", "FlowMatching", "TrajectoryFlowMatching",
           "MeanFlow", "Shortcut", "AlphaFlow"]
