"""Gradient probes: how the objective's terms pull on the weights (docs/probes.md;
the terms: docs/objectives.md#trajectory-flow-matching-and-trajectory-consistency).

On one batch, the same (t, r, ε, labels) for every term, we differentiate

    tfm   L_TFM = ‖u_θ(z_t, r, t) − ṽ‖²                    trajectory flow matching
    fmb   L_FM′ = ‖u_θ(z_t, t, t) − ṽ‖²                    the border case r = t, same (x, ε, t)
    tcc   L_TCC = 2(t − r)·u_θ(z_t, r, t)·sg(du/dt)         trajectory consistency
    mf    L_MF  = ‖u_θ − sg(ṽ − (t − r)·du/dt)‖²            MeanFlow (unweighted), ∇mf = ∇tfm + ∇tcc
    loss  the training objective's own loss at this step (optional)
    d     with it, a third part of that loss's gradient where the objective has one (``Terms.extra``: Modular
          MeanFlow's 2λ(t − r)·⟨sg(residual), du/dt⟩, the gradient through the JVP), unweighted
    lv    ... or Decoupled MeanFlow's log-variance part, log(e^(−lv)·sg(mse) + c) + lv (its gradient reaches the
          log-variance head only)
    aux   ... or improved MeanFlow's velocity-head loss w_v·‖v̂ − sg v_g‖² (it reaches the trunk and the head)

each a batch mean of per-sample element means, and report every term's value (``loss_<term>``),
gradient norm (``gradnorm_<term>``) and every pairwise cosine (``cos_<a>_<b>``, a before b in
``TERMS`` order, e.g. ``cos_tfm_tcc``, ``cos_fmb_tcc``), and ``ratio_tfm_tcc`` = ‖∇tfm + ∇tcc‖/(‖∇tfm‖ + ‖∇tcc‖):
the cosine tends to −1 whenever the sum is small beside its parts (near a stationary point), and the ratio,
near 0 then, tells that case apart from two large gradients pulling apart. Gradients are whole-vector over the chosen
parameters, in float64. With ``parts=True`` the same numbers per part of the network
(``part.<name>.cos_tfm_tcc``): every DiT block, each embedder, the final layer.

A probe runs on the unwrapped module with ``torch.autograd.grad``: it never touches ``.grad``,
the optimiser or the training random streams, so training is unchanged. It costs the forward
passes of the terms (a MeanFlow forward with its JVP, a border-case forward, and the training
objective's if asked) plus one backward per term, except L_MF, whose gradient is taken as ∇tfm + ∇tcc.

``chunk_size=k`` runs the terms on k rows at a time and sums the chunks' gradients weighted by their
share of the batch: every term is a batch mean of per-sample values and the network treats rows
independently, so the gradients (and hence the norms and cosines) are those of the whole batch, up to
float round-off, while only one chunk's graphs are alive at a time. At DiT-XL/2 the fp32 graphs of all
terms hold ≈ 1.9 GiB per sample, so a 64-row probe needs chunks to fit an 80 GB GPU.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Any, Sequence, TypedDict, cast

import torch
from torch import Tensor, nn

from alphaflow.core.jvp import unwrap
from alphaflow.objectives import FlowMatching, Guidance, MeanFlow, Objective, Sample, draw_sample

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only

EXTRA_TERMS = ("d", "lv", "aux")  # the third parts some objectives have (Terms.extra, Terms.extra_unweighted)
TERMS = ("tfm", "fmb", "tcc", "mf", "loss", *EXTRA_TERMS)


def parameter_groups(module: nn.Module) -> dict[str, list[str]]:
    """Parts of a network by parameter name: each top-level child, and each element of a top-level
    ``ModuleList`` ("blocks.0", "blocks.1", …). Parameters directly on the module form "root"."""
    groups: dict[str, list[str]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        head, *rest = name.split(".")
        if isinstance(getattr(module, head, None), nn.ModuleList) and rest:
            head = f"{head}.{rest[0]}"
        groups.setdefault(head if rest else "root", []).append(name)
    return groups


def probe_sample(x: Tensor, labels: Tensor | None, objective: Objective, *, ratio_fm: float = 0.0,
                 generator: torch.Generator | None = None) -> Sample:
    """The probe's (t, r, ε) for the batch x [B, ...]: the training objective's time sampler, fm_time and
    guidance, the first ⌊B·ratio_fm⌋ rows at r = t (0: r < t on every row, so L_TCC is defined everywhere)."""
    return draw_sample(x, labels, ratio_fm=ratio_fm, time_sampler=objective.time_sampler,
                       guidance=objective.guidance, generator=generator, fm_time=objective.fm_time)


class TermOptions(TypedDict, total=False):
    """The keyword arguments of ``term_losses`` that ``chunked_term_gradients`` passes on."""

    guidance: Guidance | None
    training: Objective | None
    step: int


def term_losses(net: nn.Module, x: Tensor, sample: Sample, *, guidance: Guidance | None = None,
                training: Objective | None = None, step: int = 0) -> dict[str, Tensor]:
    """The differentiable batch means of every term on ``sample`` (see module docstring). x: [B, ...]."""
    mf = MeanFlow(guidance=guidance)(net, x, sample=sample)
    fm = FlowMatching(guidance=guidance)(net, x, sample=sample)
    terms = {"tfm": mf.components["tfm"].mean(), "fmb": fm.components["fmb"].mean(),
             "tcc": mf.components["tcc"].mean(), "mf": mf.components["mf"].mean()}
    if training is not None:
        own = training(net, x, sample=sample, step=step)
        terms["loss"] = own.loss.mean()
        for name in (*own.extra, *own.extra_unweighted):  # a third part of the loss's gradient (d, lv)
            terms[name] = own.components[name].mean()
    return terms


def term_gradients(terms: dict[str, Tensor], params: Sequence[tuple[str, nn.Parameter]]) -> dict[str, list[Tensor]]:
    """∇term for every term, as one tensor per parameter (zeros where a term does not reach it); one backward each."""
    grads = {}
    for i, (key, value) in enumerate(terms.items()):
        g = torch.autograd.grad(value, [p for _, p in params], retain_graph=i < len(terms) - 1, allow_unused=True)
        grads[key] = [torch.zeros_like(p) if gi is None else gi for gi, (_, p) in zip(g, params)]
    return grads


def _gradients_with_mf_as_sum(terms: dict[str, Tensor],
                              params: Sequence[tuple[str, nn.Parameter]]) -> dict[str, list[Tensor]]:
    """``term_gradients`` in the order of ``terms``, but ∇mf as ∇tfm + ∇tcc (exact: L_MF − L_TFM − L_TCC does not
    depend on θ; ``tests/test_probes.py`` checks the identity with a backward of its own), saving one backward."""
    if not {"tfm", "tcc", "mf"} <= set(terms):
        return term_gradients(terms, params)
    grads = term_gradients({k: v for k, v in terms.items() if k != "mf"}, params)
    grads["mf"] = [a + b for a, b in zip(grads["tfm"], grads["tcc"])]
    return {k: grads[k] for k in terms}


def gram_from_gradients(grads: dict[str, list[Tensor]], params: Sequence[tuple[str, nn.Parameter]],
                        groups: dict[str, list[str]] | None = None) -> dict[str, Tensor]:
    """Gram matrices G[a, b] = ⟨∇a, ∇b⟩ (float64, [T, T]) over all ``params`` ("all") and per group.

    The per-group matrices are sums over that group's parameters, so the breakdown costs no extra backward.
    """
    names = [n for n, _ in params]
    terms = list(grads)
    per_param = {}
    for j, name in enumerate(names):
        stacked = torch.stack([grads[k][j].reshape(-1).double() for k in terms])  # [T, n_j]
        per_param[name] = stacked @ stacked.T
    out = {"all": cast(Tensor, sum(per_param.values()))}  # the int 0 only when params is empty
    for group, members in (groups or {}).items():
        present = [per_param[m] for m in members if m in per_param]
        if present:
            out[group] = cast(Tensor, sum(present))  # a sum of tensors (present is not empty)
    return out


def gram_matrices(terms: dict[str, Tensor], params: Sequence[tuple[str, nn.Parameter]],
                  groups: dict[str, list[str]] | None = None) -> dict[str, Tensor]:
    """``gram_from_gradients`` of ``term_gradients``: one backward per term, then the Gram matrices."""
    return gram_from_gradients(term_gradients(terms, params), params, groups)


def sample_rows(sample: Sample, rows: slice) -> Sample:
    """The rows ``rows`` (a slice of the batch) of a sample: every [B, ...] tensor sliced, and a count of
    leading r = t rows (``num_fm``, where the sample carries one) shifted and clamped to the slice."""
    changes: dict[str, Any] = {}  # field → its rows: tensors, and num_fm an int
    for f in dataclasses.fields(sample):
        value = getattr(sample, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = value[rows]
        elif f.name == "num_fm" and value is not None:
            start, stop, _ = rows.indices(sample.t.shape[0])
            changes[f.name] = min(max(value - start, 0), stop - start)
    return dataclasses.replace(sample, **changes)


def chunked_term_gradients(module: nn.Module, x: Tensor, sample: Sample, params: Sequence[tuple[str, nn.Parameter]],
                           chunk_size: int, **term_kwargs: Unpack[TermOptions],
                           ) -> tuple[dict[str, float], dict[str, list[Tensor]]]:
    """(term values, term gradients) of the whole batch x [B, ...], computed ``chunk_size`` rows at a time.

    Chunk c of n_c rows adds (n_c/B)·∇mean_c(term) to each gradient and (n_c/B)·mean_c(term) to each value,
    so the sums are the batch means' values and gradients. With one chunk nothing is rescaled (bit-identical
    to the unchunked probe).
    """
    batch = x.shape[0]
    size = batch if chunk_size <= 0 else min(chunk_size, batch)
    values: dict[str, float] = {}
    grads: dict[str, list[Tensor]] = {}
    for start in range(0, batch, size):
        rows = slice(start, min(start + size, batch))
        terms = term_losses(module, x[rows], sample_rows(sample, rows), **term_kwargs)
        terms = {k: terms[k] for k in TERMS if k in terms}
        share = (rows.stop - rows.start) / batch
        chunk_grads = _gradients_with_mf_as_sum(terms, params)
        if size == batch:
            return {k: float(v.detach()) for k, v in terms.items()}, chunk_grads
        for key, value in terms.items():
            values[key] = values.get(key, 0.0) + share * float(value.detach())
            if key not in grads:
                grads[key] = [g.mul_(share) for g in chunk_grads[key]]
            else:
                for acc, g in zip(grads[key], chunk_grads[key]):
                    acc.add_(g, alpha=share)
        del terms, chunk_grads  # this chunk's graphs are freed before the next one is built
    return values, grads


def gram_summary(gram: Tensor, keys: Sequence[str], values: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Norms ‖∇k‖ = sqrt(G[k, k]) and cosines G[a, b]/(‖∇a‖‖∇b‖) for a before b; ``loss_<k>`` from values."""
    norms = gram.diagonal().clamp(min=0).sqrt()
    out = {f"{prefix}gradnorm_{k}": float(norms[i]) for i, k in enumerate(keys)}
    for (i, a), (j, b) in itertools.combinations(enumerate(keys), 2):
        denom = norms[i] * norms[j]
        out[f"{prefix}cos_{a}_{b}"] = float(gram[i, j] / denom) if denom > 0 else float("nan")
    if "tfm" in keys and "tcc" in keys:  # ‖∇tfm + ∇tcc‖/(‖∇tfm‖ + ‖∇tcc‖): whether the cosine's −1 is a cancellation
        i, j = keys.index("tfm"), keys.index("tcc")
        total = (gram[i, i] + gram[j, j] + 2 * gram[i, j]).clamp(min=0).sqrt()
        parts = norms[i] + norms[j]
        out[f"{prefix}ratio_tfm_tcc"] = float(total / parts) if parts > 0 else float("nan")
    if not prefix:
        out.update({f"loss_{k}": v for k, v in values.items()})
    return out


def probe_gradients(net: nn.Module, x: Tensor, sample: Sample, *, guidance: Guidance | None = None,
                    training: Objective | None = None, step: int = 0,
                    params: Sequence[tuple[str, nn.Parameter]] | None = None, parts: bool = False,
                    chunk_size: int = 0) -> dict[str, float]:
    """Values, gradient norms and pairwise cosines of the terms on one batch.

    net: the network (unwrapped here); x: [B, ...]; sample: shared by every term; guidance: the run's
    training-time guidance (ṽ); training: the run's objective, to add the ``loss`` term; params:
    (name, parameter) pairs to differentiate (default: every trainable parameter); chunk_size: rows per
    forward/backward chunk (0: the whole batch at once; see the module docstring).
    Returns a flat dict of floats with the stable names of the module docstring. A cosine with a
    zero gradient (e.g. L_TCC on a batch with r = t everywhere) is NaN.
    """
    module = unwrap(net)
    params = list(params) if params is not None else [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0: the whole batch), got {chunk_size}")
    values, grads = chunked_term_gradients(module, x, sample, params, chunk_size, guidance=guidance, training=training,
                                           step=step)
    keys = list(values)
    grams = gram_from_gradients(grads, params, parameter_groups(module) if parts else None)
    out = gram_summary(grams.pop("all"), keys, values)
    for group, gram in grams.items():
        out.update(gram_summary(gram, keys, values, prefix=f"part.{group}."))
    return out
