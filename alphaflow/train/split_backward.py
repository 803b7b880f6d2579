"""The conflict interventions inside a training step (``conflict.*``; the rules: ``alphaflow.core.conflict``;
docs/conflict.md).

On an exact step the two weighted parts of the loss are differentiated separately,

    L_TFM^w = mean_i(w_i · tfm_i),   L_TCC^w = mean_i(w_i · tcc_i),

with w the objective's detached per-sample weight (``Terms.weight``: the adaptive weight and α-Flow's α), so
that ∇L_TFM^w + ∇L_TCC^w = ∇loss exactly (mse = tfm + tcc + a θ-free constant per sample). The forward runs
once, under DDP's ``no_sync``; two ``autograd.grad`` calls give g_TFM and g_TCC; under DDP both are averaged
over ranks in one all-reduce, so the rule sees the global gradients and every rank computes the same update.
The rule's (a, b) per parameter group then give ``p.grad = a·g_TFM + b·g_TCC`` (plus, unchanged, the gradient
of a loss's third part where its terms name one: ``Terms.extra``, one more pass), and the trainer's clipping,
NaN handling and optimiser step follow unchanged.

With ``conflict.every = k > 1`` (whole-vector only) the coefficients of an exact step are reused for the next
k − 1 steps, each of which is one ordinary backward of a·L_TFM^w + b·L_TCC^w (DDP reduces it as usual). This is
an approximation: the coefficients lag the gradients by up to k − 1 steps.

With ``train.micro_batch`` each micro-batch's parts are differentiated apart and summed, weighted by its share
of the rows (``begin`` / ``add`` / ``finish``), so the rule and the ``conflict_*`` scalars see the whole batch's
g_TFM and g_TCC, as without micro-batches.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from alphaflow.config.schema import ConflictConfig
from alphaflow.core.conflict import coefficients, conflict_stats
from alphaflow.objectives.base import Terms
from alphaflow.train.probes import parameter_groups
from alphaflow.train import distributed as D

Coefficients = Tensor | list[list[float]]  # [K, 2]: on the device, or as a checkpoint holds them


class CoefficientState(Protocol):
    """Where the reused coefficients live: the trainer's ``alphaflow.train.step.LoopState`` (which imports this
    module, so it is named by what it holds)."""

    conflict_coef: Coefficients | None


def _mean(terms: Terms, name: str, *, weighted: bool = True) -> Tensor:
    """mean_i(w_i·c_i) of component ``name`` (mean_i(c_i) unweighted), 0-dim, at least fp32 (bf16 parts are
    promoted, as the trainer's loss is)."""
    part = terms.components[name]
    part = part.to(torch.promote_types(part.dtype, torch.float32))
    w = terms.weight if weighted else 1.0
    return ((w.to(part.dtype) if isinstance(w, Tensor) else w) * part).mean()


def weighted_parts(terms: Terms) -> tuple[Tensor, Tensor]:
    """(L_TFM^w, L_TCC^w): their gradients sum to that of ``terms.loss.mean()`` (with ``weighted_extra``'s)."""
    if "tfm" not in terms.components or "tcc" not in terms.components:
        raise ValueError("conflict.mode needs an objective whose terms carry the tfm and tcc components "
                         f"(got {sorted(terms.components)})")
    return _mean(terms, "tfm"), _mean(terms, "tcc")


def weighted_extra(terms: Terms) -> Tensor | None:
    """mean_i(w_i · Σ_e e_i + Σ_f f_i) over ``terms.extra`` (e) and ``terms.extra_unweighted`` (f): a loss's
    third part (Modular MeanFlow's L_D; Decoupled MeanFlow's log-variance), or None. Its gradient completes
    ∇L_TFM^w + ∇L_TCC^w to the loss's, and the rules leave it unchanged."""
    parts = [_mean(terms, n) for n in getattr(terms, "extra", ())]
    parts += [_mean(terms, n, weighted=False) for n in getattr(terms, "extra_unweighted", ())]
    return sum(parts[1:], parts[0]) if parts else None


def no_sync(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """DDP's ``no_sync()`` for ``model`` (plain, DDP, or a compiled DDP); a null context without DDP."""
    inner = getattr(model, "_orig_mod", model)
    return inner.no_sync() if isinstance(inner, DistributedDataParallel) else contextlib.nullcontext()


class ConflictCombiner:
    """Combines g_TFM and g_TCC by ``cfg.mode`` at every step (module docstring).

    ``net``: the unwrapped network, whose parameters are ``params`` (the trainer's list, in its order).
    ``state``: the trainer's checkpointed loop state (``alphaflow.train.step.LoopState``); the reused coefficients
    live in ``state.conflict_coef``.
    """

    def __init__(self, cfg: ConflictConfig, net: nn.Module, params: list[nn.Parameter], info: D.DistInfo) -> None:
        self.cfg, self.params, self.info = cfg, params, info
        self._pending: Tensor | None = None
        self._coef: Coefficients | None = None  # a reuse step's coefficients (begin); None on an exact step
        self._sums: list[list[Tensor]] = []  # an exact step's summed g_TFM, g_TCC (and third part's) so far
        index = {id(p): i for i, p in enumerate(params)}
        named = dict(net.named_parameters())
        groups = parameter_groups(net) if cfg.per_group else {"all": [n for n, p in named.items() if p.requires_grad]}
        self.groups = [[index[id(named[n])] for n in members if id(named[n]) in index] for members in groups.values()]
        group_of = torch.empty(len(params), dtype=torch.long)  # parameter → its group, for the Gram sums
        for k, members in enumerate(self.groups):
            group_of[members] = k
        self.group_of = group_of.to(params[0].device if params else "cpu")

    def exact(self, step: int, state: CoefficientState) -> bool:
        """Whether ``step`` computes both gradients (else it reuses ``state.conflict_coef``)."""
        return self.cfg.every == 1 or step % self.cfg.every == 0 or state.conflict_coef is None

    def backward(self, terms: Terms, step: int, state: CoefficientState) -> dict[str, Tensor]:
        """Fill every ``p.grad`` with the combined gradient of one whole batch's terms; returns this step's
        ``conflict_*`` scalars (0-dim device tensors; none on a reuse step)."""
        self.begin(step, state)
        self.add(terms, 1.0)
        return self.finish()

    def begin(self, step: int, state: CoefficientState) -> None:
        """Start a step whose batch comes in ``add``-ed parts (micro-batches) and ends with ``finish``."""
        self._coef = None if self.exact(step, state) else state.conflict_coef
        self._sums = []

    def add(self, terms: Terms, share: float) -> None:
        """The gradients of one micro-batch's parts, weighted by ``share`` (its rows / the batch's): on an exact
        step g_TFM, g_TCC (and the third part's) are summed apart; on a reuse step one backward of
        a·L_TFM^w + b·L_TCC^w accumulates into ``p.grad`` (DDP reduces it unless the caller holds ``no_sync``)."""
        part_tfm, part_tcc = weighted_parts(terms)
        part_extra = weighted_extra(terms)
        if self._coef is not None:
            coef = torch.as_tensor(self._coef, dtype=part_tfm.dtype, device=part_tfm.device)
            total = coef[0, 0] * part_tfm + coef[0, 1] * part_tcc
            ((total if part_extra is None else total + part_extra) * share).backward()
            return
        grads = [self._grads(part_tfm * share, retain=True),
                 self._grads(part_tcc * share, retain=part_extra is not None)]
        if part_extra is not None:
            grads.append(self._grads(part_extra * share, retain=False))
        if not self._sums:
            self._sums = grads
        else:
            for summed, part in zip(self._sums, grads):
                torch._foreach_add_(summed, part)

    def finish(self) -> dict[str, Tensor]:
        """Combine the summed gradients by the rule into every ``p.grad`` (exact steps); the step's scalars."""
        if self._coef is not None:
            return {}
        g_tfm, g_tcc, *third = self._sums
        g_extra = third[0] if third else []
        self._sums = []
        if self.info.distributed:
            g_tfm, g_tcc, g_extra = self._average_over_ranks(g_tfm, g_tcc, g_extra)
        gram = self._gram(g_tfm, g_tcc)
        coef = coefficients(gram, self.cfg.mode, self.cfg.c)  # [K, 2]
        scale = coef.to(g_tfm[0].dtype)
        for k, members in enumerate(self.groups):  # a·g_TFM + b·g_TCC into g_TFM: two fused passes per group
            ones, twos = [g_tfm[j] for j in members], [g_tcc[j] for j in members]
            torch._foreach_mul_(ones, scale[k, 0])
            torch._foreach_addcmul_(ones, twos, [scale[k, 1]] * len(twos))  # b stays on the device: no host sync
        if g_extra:  # the third part passes unchanged
            torch._foreach_add_(g_tfm, g_extra)
        for p, g in zip(self.params, g_tfm):
            p.grad = g
        self._pending = coef.detach() if self.cfg.every > 1 else None
        return {f"conflict_{name}": value for name, value in conflict_stats(gram, coef).items()}

    def commit(self, state: CoefficientState) -> None:
        """After a finite step: keep its coefficients for the reuse steps (a skipped step's are dropped)."""
        if self._pending is not None:
            state.conflict_coef = self._pending
            self._pending = None

    def _grads(self, value: Tensor, *, retain: bool) -> list[Tensor]:
        grads = torch.autograd.grad(value, self.params, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]

    def _average_over_ranks(self, *grads: list[Tensor]) -> tuple[list[Tensor], ...]:
        """Each gradient list averaged over ranks, all in one all-reduce of one flat buffer; returned as views of it."""
        flat = torch.cat([g.reshape(-1) for part in grads for g in part])
        flat = D.all_reduce_mean(flat, self.info)
        out, offset = [], 0
        for part in grads:
            views = []
            for g in part:
                views.append(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            out.append(views)
        return tuple(out)

    def _gram(self, g_tfm: list[Tensor], g_tcc: list[Tensor]) -> Tensor:
        """[K, 2, 2] float64: per group, the Gram matrix of (g_TFM, g_TCC) summed over its parameters."""
        norm1 = torch.stack(torch._foreach_norm(g_tfm)).double()
        norm2 = torch.stack(torch._foreach_norm(g_tcc)).double()
        cross = torch.stack([torch.dot(g1.reshape(-1), g2.reshape(-1)) for g1, g2 in zip(g_tfm, g_tcc)]).double()
        dots = torch.stack([norm1 * norm1, norm2 * norm2, cross], dim=1)  # [n_params, 3]
        per_group = torch.zeros(len(self.groups), 3, dtype=torch.float64, device=dots.device)
        per_group.index_add_(0, self.group_of, dots)
        g11, g22, g12 = per_group.unbind(1)
        return torch.stack([torch.stack([g11, g12], 1), torch.stack([g12, g22], 1)], 1)
