"""Objectives: flow matching, trajectory flow matching, MeanFlow, Shortcut and α-Flow.

Objectives never import models: they take any ``net(z, r, t, labels) -> u``.

    from alphaflow.objectives import build_objective
    obj = build_objective("alphaflow", alpha={"kind": "sigmoid", "k_end": 4000}, ratio_fm=0.5)
    terms = obj(net, x, labels, step=k)          # terms.loss [B], terms.components["tfm"] [B], ...
"""

from __future__ import annotations

import difflib

from alphaflow.objectives.alpha import AlphaFlow
from alphaflow.objectives.base import CFG, Objective, Sample, Terms
from alphaflow.objectives.flow_matching import FlowMatching, TrajectoryFlowMatching
from alphaflow.objectives.meanflow import MeanFlow
from alphaflow.objectives.shortcut import Shortcut

OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (FlowMatching, TrajectoryFlowMatching, MeanFlow, Shortcut, AlphaFlow)
}


def build_objective(name: str, **kwargs) -> Objective:
    """Build an objective by registry name; keyword arguments go to its constructor.

    ``cfg`` may be a ``CFG`` or a dict of its fields.
    """
    if name not in OBJECTIVES:
        near = difflib.get_close_matches(name, OBJECTIVES, n=2)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"unknown objective {name!r}{hint}; expected one of {sorted(OBJECTIVES)}")
    if isinstance(kwargs.get("cfg"), dict):
        kwargs["cfg"] = CFG(**kwargs["cfg"])
    return OBJECTIVES[name](**kwargs)


__all__ = ["OBJECTIVES", "build_objective", "Objective", "Sample", "Terms", "CFG", "FlowMatching",
           "TrajectoryFlowMatching", "MeanFlow", "Shortcut", "AlphaFlow"]
