"""Objectives: flow matching, trajectory flow matching, MeanFlow, Shortcut, α-Flow, SplitMeanFlow, Modular MeanFlow,
improved MeanFlow and Decoupled MeanFlow.

Objectives never import models: they take any ``net(z, r, t, labels) -> u``.

    from alphaflow.objectives import build_objective
    obj = build_objective("alphaflow", alpha={"kind": "sigmoid", "k_end": 4000}, ratio_fm=0.5)
    terms = obj(net, x, labels, step=k)          # terms.loss [B], terms.components["tfm"] [B], ...

A new objective is one module here (the class, with its ``Options`` config section) and one entry
in ``REGISTRY`` below; ``objective.name=<its name>`` then trains it, with its options as config keys.
"""

from __future__ import annotations

import difflib
from typing import Any

from alphaflow.objectives.alpha import AlphaFlow
from alphaflow.objectives.base import Objective, Sample, Terms, draw_sample
from alphaflow.objectives.decoupled import DecoupledMeanFlow
from alphaflow.objectives.flow_matching import FlowMatching, TrajectoryFlowMatching
from alphaflow.objectives.guidance import Guidance
from alphaflow.objectives.imf import ImprovedMeanFlow
from alphaflow.objectives.meanflow import MeanFlow
from alphaflow.objectives.modular import ModularMeanFlow
from alphaflow.objectives.options import ObjectiveOptions, constructor_kwargs
from alphaflow.objectives.shortcut import Shortcut
from alphaflow.objectives.splitmeanflow import SplitMeanFlow

REGISTRY: tuple[type[Objective], ...] = (FlowMatching, TrajectoryFlowMatching, MeanFlow, Shortcut, AlphaFlow,
                                         SplitMeanFlow, ModularMeanFlow, ImprovedMeanFlow, DecoupledMeanFlow)

OBJECTIVES: dict[str, type[Objective]] = {}
OPTIONS: dict[str, type[ObjectiveOptions]] = {}  # the config's objective section: a tagged union on its name


def register(cls: type[Objective]) -> type[Objective]:
    """Add an objective to the registry (the entries of ``REGISTRY`` at import; a plugin or a test may add
    more). Its ``Options`` must be tagged with its name; a name already taken is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"register takes an Objective subclass, got {cls!r}")
    if cls.name in OBJECTIVES and OBJECTIVES[cls.name] is not cls:
        raise ValueError(f"objective name {cls.name!r} is taken by {OBJECTIVES[cls.name].__name__}")
    if not issubclass(cls.Options, ObjectiveOptions) or cls.Options().name != cls.name:
        raise ValueError(f"{cls.__name__}.Options must subclass ObjectiveOptions with name = {cls.name!r}")
    OBJECTIVES[cls.name], OPTIONS[cls.name] = cls, cls.Options
    return cls


for _cls in REGISTRY:
    register(_cls)


def _check_name(name: str, key: str = "objective") -> None:
    if name not in OBJECTIVES:
        near = difflib.get_close_matches(str(name), OBJECTIVES, n=2)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"unknown {key} {name!r}{hint}; expected one of {sorted(OBJECTIVES)}")


def build_objective(name: str, **kwargs: Any) -> Objective:  # the keywords of the named objective's constructor
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


__all__ = ["OBJECTIVES", "OPTIONS", "REGISTRY", "register", "build_objective", "objective_from_options", "draw_sample",
           "Objective", "ObjectiveOptions", "Sample", "Terms", "Guidance", "FlowMatching", "TrajectoryFlowMatching",
           "MeanFlow", "Shortcut", "AlphaFlow", "SplitMeanFlow",
           "ModularMeanFlow", "ImprovedMeanFlow", "DecoupledMeanFlow"]
