"""Per-layer activation and gradient statistics through module hooks, attached for one scope.

    with LayerStats(net, select=(nn.Linear,)) as stats:
        objective(net, x, labels).loss.mean().backward()
    stats.summary()   # {"blocks.0.attn.qkv.act_norm": 0.71, "blocks.0.attn.qkv.grad_norm": 3e-4, ...}

The statistic is the RMS norm of one tensor, ‖y‖₂ / √numel(y), so layers of different widths and
batch sizes compare: for activations y is the module's output (the first tensor of a tuple output),
for gradients y is ∂loss/∂output, one record per gradient that reaches it (each ``backward`` or
``autograd.grad`` call). ``summary`` averages the per-call values.

Which forwards count. An objective runs several forwards per step: no-grad target passes (CFG,
α-Flow's second forward) and, for a network without a tangent mode, the MeanFlow JVP
(``alphaflow.jvp``: ``torch.func.jvp`` under no-grad), then ONE forward with grad, the prediction.
(The DiT's tangent mode computes the JVP inside that prediction forward by hand, through no
module call, so the hooks see only the prediction.) Only ordinary autograd forwards are recorded
by default, so the statistics describe the prediction alone. ``record_no_grad=True`` also records
no-grad forwards and forwards inside ``torch.func`` transforms (activations only: their gradients
belong to the transform, not to ``backward``).

Inside ``torch.func.jvp`` a module's output is a functorch wrapper around the primal. Reading it
with the public ``torch.func.debug_unwrap`` gives the primal itself (under ``vmap``, the batched
tensor, so the RMS runs over all mapped samples), and ``debug_unwrap(y) is not y`` tells that a transform is active. Its docstring warns
against feeding the unwrapped tensor back into the transformed computation; we never do, we only
read one Python float from it, so the JVP's result is unchanged (tests/test_hooks.py checks this).

Cost: one host sync per selected module per recorded call, and nothing once the scope is left.
Meant for a short scope (a probe step): the tensor-hook handles of each grad forward are kept until
exit. Eager mode only: the float read in each hook would break a ``torch.compile`` graph.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from alphaflow.jvp import unwrap

Select = Callable[[str, nn.Module], bool] | tuple[type, ...] | type


def rms(x: Tensor) -> float:
    """‖x‖₂ / √numel(x) of a plain tensor, computed in at least fp32 (bf16 activations would round)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return float(torch.linalg.vector_norm(x.detach(), dtype=dtype)) / math.sqrt(x.numel())


def first_tensor(output: object) -> Tensor | None:
    """The module output itself, or the first tensor of a tuple/list output; None if there is none."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, Tensor)), None)
    return None


class LayerStats:
    """Forward (and output-gradient) hooks on the selected modules of ``model`` for one ``with`` scope.

    Args:
        model: the network; DDP / compile wrappers are unwrapped so names are the plain module's.
        select: module types, or a predicate on (qualified name, module). The root's name is "<root>".
        activations, gradients: which statistics to record.
        record_no_grad: also record forwards run without autograd (no-grad passes, torch.func transforms).

    ``records["<name>.act_norm"]`` and ``records["<name>.grad_norm"]`` hold one float per call.
    Leaving the scope, normally or by an exception, removes every hook, including the tensor hooks
    of forwards whose backward has not run yet: the model is left exactly as it was.
    """

    def __init__(self, model: nn.Module, *, select: Select = (nn.Linear,), activations: bool = True,
                 gradients: bool = True, record_no_grad: bool = False) -> None:
        self.model = unwrap(model)
        if isinstance(select, type):  # a lone class is callable too: do not mistake it for a predicate
            select = (select,)
        self.select = (lambda _name, m: isinstance(m, select)) if isinstance(select, tuple) else select
        self.activations, self.gradients, self.record_no_grad = activations, gradients, record_no_grad
        self.records: dict[str, list[float]] = {}
        self._handles: list[RemovableHandle] = []
        self._open = False

    def __enter__(self) -> "LayerStats":
        if self._open:
            raise RuntimeError("LayerStats is already attached; use a fresh instance to nest scopes")
        self._open = True
        try:  # a predicate that raises half-way must not leave the first hooks behind
            for name, module in self.model.named_modules():
                if self.select(name, module):
                    self._handles.append(module.register_forward_hook(self._forward_hook(name or "<root>")))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._open = False
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def summary(self) -> dict[str, float]:
        """Mean over recorded calls of each statistic, e.g. {"blocks.0.mlp.0.act_norm": 0.52, ...}."""
        return {key: sum(values) / len(values) for key, values in self.records.items() if values}

    def _record(self, key: str, value: float) -> None:
        self.records.setdefault(key, []).append(value)

    def _forward_hook(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            y = first_tensor(output)
            if y is None or y.numel() == 0:
                return
            primal = torch.func.debug_unwrap(y)  # y itself unless a torch.func transform is active
            ordinary = torch.is_grad_enabled() and primal is y
            if not (ordinary or self.record_no_grad):
                return  # a no-grad target pass or the JVP: stay silent
            if self.activations:
                self._record(f"{name}.act_norm", rms(primal))
            if self.gradients and ordinary and y.requires_grad:
                self._handles.append(y.register_hook(self._gradient_hook(name)))
            # returning None leaves the output untouched

        return hook

    def _gradient_hook(self, name: str) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            self._record(f"{name}.grad_norm", rms(grad))  # returning None leaves the gradient untouched

        return hook
