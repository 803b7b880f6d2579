"""``train.compile=true``: what the trainer compiles, and a count of what TorchDynamo compiled.

Two compiled callables share the network's weights:

* ``model``: ``torch.compile(DDP(net))`` across ranks (DDP's optimizer splits the graph at its buckets, so the
  all-reduce still overlaps the backward), ``torch.compile(net)`` on one. The prediction pass goes through it:
  forward and backward, with the DiT's tangent-mode JVP riding along the forward.
* the **target module**: the same ``torch.compile(net)`` on one rank, a second ``torch.compile(net)`` (no DDP)
  across ranks. The objectives' no-grad target passes call it through ``alphaflow.core.jvp.target_module``:
  α-Flow's jump, Shortcut's and SplitMeanFlow's half jumps, the guidance passes (35–45 % of an XL/2-cfg step).
  They compile as inference graphs of their own (no-grad, their own row counts).

The EMA, sample grids, probes and checkpoints use ``net`` and stay eager; so do passes through ``torch.func``
(``jvp.unwrap``). α and ratio_fm never enter a compiled region, so a schedule that changes every step does not
recompile. A row count that changes between calls (the guided rows of a batch) recompiles once, after which
TorchDynamo treats that size as dynamic. ``CompileCount`` reads TorchDynamo's counters for the log: the
trainer puts ``compiled_graphs`` in each metrics row and says when a tick compiled anything after the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from alphaflow.core.jvp import route_target_passes

__all__ = ["compile_for_training", "CompileCount"]


def compile_for_training(net: nn.Module, model: nn.Module) -> nn.Module:
    """The compiled ``model`` (``net`` or ``DDP(net)``), with the no-grad target passes routed to a compiled
    ``net`` (module docstring). Graphs of an earlier run in this process (an inline sweep) are dropped first:
    they share ``DiT.forward``'s cache, whose recompile limit they would use up, and torch 2.13 fails to
    re-check a tangent-mode graph against an r = t call (flow matching after MeanFlow). The on-disk cache
    still serves them."""
    torch.compiler.reset()
    from torch._dynamo.utils import counters
    counters.clear()  # CompileCount counts this run's graphs
    compiled = cast(nn.Module, torch.compile(model))  # a module compiles to a module (OptimizedModule)
    route_target_passes(compiled, compiled if model is net else cast(nn.Module, torch.compile(net)))
    return compiled


@dataclass
class CompileCount:
    """TorchDynamo's graph count since ``compile_for_training``; ``update()`` returns the graphs compiled since
    the previous call (the first call: the warm-up's)."""

    graphs: int = 0

    @staticmethod
    def total() -> int:
        """Graphs TorchDynamo compiled since its counters were cleared (a graph break adds a graph; so does each
        of DDP's buckets)."""
        from torch._dynamo.utils import counters
        return int(counters["stats"].get("unique_graphs", 0))

    def update(self) -> int:
        now = self.total()
        new, self.graphs = now - self.graphs, now
        return new
