"""What every objective shares: the sample, the returned terms, the rows and the adaptive weight.

An objective is a small callable (EDM-style): ``terms = objective(net, x, labels, step=k)``.
It draws (t, r, ε, labels) unless the caller passes ``sample=``, builds z_t, forms the
stop-gradient target and returns per-sample values. It never steps an optimiser or logs.

Terms carry the per-sample ``loss`` (what is optimised) and named per-sample
``components`` (what gradient probes differentiate). The names follow docs/objectives.md#logged-components
(arXiv 2510.20771 Eq. 6–7):

    mse   ‖u_θ(z_t, r, t) − sg(u_tgt)‖²          the unweighted regression of this objective
    tfm   ‖u_θ(z_t, r, t) − ṽ‖²                   trajectory flow matching, L_TFM
    tcc   2·(ṽ − sg(u_tgt))·u_θ(z_t, r, t)        trajectory consistency, L_TCC
    fmb   ‖u_θ(z_t, t, t) − ṽ‖²                   border-case flow matching, L_FM′
    mf    ‖u_θ − sg(ṽ − (t − r)·du/dt)‖²          MeanFlow, L_MF

‖·‖² and the dot product are means over the elements of a sample (docs/objectives.md#the-adaptive-weight), so each
component is a [B] tensor (``objective.adaptive_reduce=sum`` changes what the adaptive weight reads, not
these). Since ‖u − u_tgt‖² = ‖u − ṽ‖² + 2(ṽ − u_tgt)·u + (‖u_tgt‖² − ‖ṽ‖²)
and the last bracket does not depend on θ, mse = tfm + tcc + const and ∇mse = ∇tfm + ∇tcc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypedDict

import torch
from torch import Tensor

from alphaflow.core.conventions import check_times, interpolate, velocity
from alphaflow.core.jvp import target_module
from alphaflow.objectives.guidance import Guidance
from alphaflow.objectives.options import ObjectiveOptions
from alphaflow.core.schedules import Schedule, as_schedule, check_unit_interval
from alphaflow.core.timesteps import TimeSampler, check_fm_time, num_fm_rows, sample_time_pairs

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only (the package runs on 3.10)

Net = Callable[..., Tensor]  # net(z [B,...], r [B], t [B], labels [B] | None) -> u [B,...]


@dataclass
class Sample:
    """Everything random in one evaluation of an objective.

    t, r: [B] with 0 ≤ r ≤ t ≤ 1; eps: [B, ...] like the data; labels: [B] int64 class
    indices with ``NULL_LABEL`` for unconditional rows (after guidance label dropout), or None.

    split: [B] or [B, k] uniforms in [0, 1] that an objective draws for itself (SplitMeanFlow's λ, iMF's guidance
    draws), or None.

    num_fm: the sample's structure, where known: its first ``num_fm`` rows were drawn with r = t and
    the rest by the min–max rule (``Objective.draw`` sets it; None for a caller-given sample). With
    it the objectives pick the r < t rows as the slice ``num_fm:``, read on the host without
    looking at r and t, so a training step needs no host sync (``pair_rows``).
    """

    t: Tensor
    r: Tensor
    eps: Tensor
    labels: Tensor | None = None
    num_fm: int | None = None
    split: Tensor | None = None  # [B] or [B, k] in [0, 1]: an objective's own per-row uniforms (SplitMeanFlow's λ)

    def validate(self, x: Tensor) -> None:
        """Refuse a sample that does not fit the batch ``x`` [B, ...]; errors name the field."""
        batch = x.shape[0]
        check_times(self.t, self.r, batch=batch)
        if self.eps.shape != x.shape:
            raise ValueError(f"sample.eps must have the data's shape {tuple(x.shape)}, got {tuple(self.eps.shape)}")
        check_labels(self.labels, batch, name="sample.labels")
        split = self.split
        if split is not None and (split.shape[:1] != (batch,) or split.ndim > 2
                                  or not bool(((split >= 0) & (split <= 1)).all())):
            raise ValueError(f"sample.split must be a [{batch}] or [{batch}, k] tensor of values in [0, 1], got shape "
                             f"{tuple(split.shape)}")
        if self.num_fm is not None:
            if not 0 <= self.num_fm <= batch:
                raise ValueError(f"sample.num_fm (leading r = t rows) must lie in [0, {batch}], got {self.num_fm}")
            if not torch.equal(self.r[: self.num_fm], self.t[: self.num_fm]):
                raise ValueError(f"sample.num_fm = {self.num_fm} says the first {self.num_fm} rows have r = t, "
                                 "but some of them have r < t; set num_fm=None when r was changed")

    def rows(self, part: slice) -> "Sample":
        """The sample of the rows ``part`` (a slice with step 1): views of every [B, ...] field; ``num_fm`` (the
        leading r = t rows) counted within the part. Gradient accumulation splits a drawn sample this way, so the
        micro-batches see exactly the rows the whole batch would."""
        start, stop, step = part.indices(self.t.shape[0])
        if step != 1:
            raise ValueError(f"Sample.rows takes a contiguous slice, got step {step}")

        def cut(a: Tensor | None) -> Tensor | None:
            return None if a is None else a[start:stop]

        num_fm = None if self.num_fm is None else min(max(self.num_fm - start, 0), stop - start)
        return Sample(self.t[start:stop], self.r[start:stop], self.eps[start:stop], cut(self.labels), num_fm,
                      cut(self.split))


Rows = Tensor | slice  # [P] int64 strictly increasing row indices, or a slice of the batch


def pair_rows(sample: Sample) -> Rows:
    """The rows that take an objective's r < t branch: ``slice(num_fm, B)`` when the sample knows its
    structure (no host sync), else the indices of r < t ([P] int64: one ``nonzero``, one host sync).

    A min–max row can tie (a = b, so r = t) with tiny probability; the slice then hands it to the
    r < t branch. Each objective keeps such a row on its r = t value (``torch.where(r < t, ...)`` on
    the branch rows, no sync), so the values are those of the mask r < t (up to round-off: the target
    passes then see one row more). The where is
    needed: Δ = t − r = 0 makes MeanFlow's target ṽ − 0·du/dt = ṽ exactly, but α-Flow's discrete
    target would be α·ṽ + (1 − α)·sg(u_θ(z_t, t, t)) (the r → t limit of Definition 1, not ṽ; s is
    also t only up to round-off) and Shortcut's (u₁ + u₂)/2 = sg(u_θ(z_t, t, t)), a zero-gradient row.
    """
    if sample.num_fm is not None:
        return slice(sample.num_fm, sample.t.shape[0])
    return (sample.r < sample.t).nonzero().squeeze(1)


def row_count(rows: Rows, batch: int) -> int:
    """P, the number of rows in ``rows``, read on the host (no sync)."""
    return len(range(*rows.indices(batch))) if isinstance(rows, slice) else rows.shape[0]


def take_rows(a: Tensor, rows: Rows) -> Tensor:
    """a[rows] along the batch dimension: [B, ...] → [P, ...]; a view for a slice, no mask gather."""
    return a[rows] if isinstance(rows, slice) else a.index_select(0, rows)


def put_rows(out: Tensor, rows: Rows, values: Tensor) -> Tensor:
    """out[rows] = values in place ([P, ...] into [B, ...], cast to out's dtype); returns out."""
    values = values.to(out.dtype)
    if isinstance(rows, slice):
        out[rows] = values
    else:
        out.index_copy_(0, rows, values)
    return out


def keep_equal_time_rows(r: Tensor, t: Tensor, branch: Tensor, fallback: Tensor) -> Tensor:
    """``branch`` where r < t, ``fallback`` where r = t (ties among the branch rows, see ``pair_rows``).

    r, t: [P]; branch, fallback: [P, ...] → [P, ...] in the promoted dtype. A device-side select, no sync.
    """
    below = (r < t).reshape(r.shape[0], *([1] * (branch.ndim - 1)))
    return torch.where(below, branch, fallback)


@dataclass
class Terms:
    """What an objective returns. ``loss.mean()`` is the training loss."""

    loss: Tensor                       # [B] per-sample weighted loss, differentiable
    components: dict[str, Tensor]      # name -> [B], differentiable (see module docstring)
    pred: Tensor                       # [B, ...] u_θ(z_t, r, t), differentiable
    target: Tensor                     # [B, ...] sg(u_tgt)
    sample: Sample
    logs: dict[str, Tensor | float] = field(default_factory=dict)  # detached scalars
    weight: Tensor | float = 1.0       # [B] detached w with loss = w·mse + const per sample, so that
    #                                    ∇loss.mean() = ∇mean(w·tfm) + ∇mean(w·tcc) (alphaflow.train.split_backward)
    extra: tuple[str, ...] = ()        # components whose gradient completes that sum when the loss has a third
    #                                    part (Modular MeanFlow's "d"): ∇loss.mean() = ∇(w·tfm + w·tcc + w·Σ extra)
    extra_unweighted: tuple[str, ...] = ()  # ... and ones that enter without w (Decoupled MeanFlow's log-variance)


def own_uniforms(sample: Sample, x: Tensor, k: int | None = None) -> Tensor:
    """``sample.split``, the objective's own uniforms: [B] (k None) or [B, k]. A caller's sample without them (the
    probes') gets them from a generator of its own with seed 0: reproducible, and training's streams stay untouched."""
    if sample.split is not None:
        want = (x.shape[0],) if k is None else (x.shape[0], k)
        if tuple(sample.split.shape) != want:
            raise ValueError(f"sample.split must have shape {list(want)} for this objective, got "
                             f"{tuple(sample.split.shape)}")
        return sample.split
    shape = (x.shape[0],) if k is None else (x.shape[0], k)
    return torch.rand(shape, generator=torch.Generator(x.device).manual_seed(0), device=x.device, dtype=x.dtype)


def check_labels(labels: Tensor | None, batch: int, *, name: str = "labels") -> None:
    if labels is None:
        return
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape [{batch}] (one class index per row), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of class indices, got dtype {labels.dtype}")


def element_mean(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: [B, ...] -> [B]."""
    return x.flatten(1).mean(dim=1)


# What the adaptive weight reads as a sample's squared error: its element mean (α-Flow's official code) or its
# element sum (MeanFlow's official JAX code); ``objective.adaptive_reduce``.
ADAPTIVE_REDUCTIONS = ("mean", "sum")


def adaptive_loss(mse: Tensor, numerator: Tensor | float, *, p: float, c: float, elements: int = 1) -> Tensor:
    """Per-sample adaptive loss w·E / (sg(E) + c)^p with E = elements·mse (docs/objectives.md#the-adaptive-weight;
    arXiv 2510.20771 §4.2, Table 5b). mse: [B] element means → [B].

    elements = 1: E is the element mean, α-Flow's official weighting (p = 1, c = 10⁻³); elements = n, the number of
    elements of a sample: E is the element sum, MeanFlow's official JAX weighting (p = 1, c = 0.01). p = 0 gives the
    plain (numerator-weighted) mean or sum. At p = 1, E/(sg(E) + c) = mse/(sg(mse) + c/n): the sum with c is the
    mean with c/n.
    """
    if elements < 1:
        raise ValueError(f"elements (per-sample element count of the sum, 1 for the mean) must be >= 1, got {elements}")
    error = mse if elements == 1 else elements * mse
    if p == 0.0:
        return numerator * error
    return numerator * error / (error.detach() + c) ** p


def adaptive_weight(mse: Tensor, numerator: Tensor | float, *, p: float, c: float,
                    elements: int = 1) -> Tensor | float:
    """The detached per-sample factor w = numerator·n/(sg(n·mse) + c)^p of ``adaptive_loss`` (n = ``elements``):
    [B] → [B] (or numerator·n itself when p = 0), so that adaptive_loss = w·mse and ∇adaptive_loss = w·∇mse row by
    row."""
    if p == 0.0:
        weight = numerator * elements if elements != 1 else numerator
        return weight.detach() if isinstance(weight, Tensor) else weight
    error = mse.detach() if elements == 1 else elements * mse.detach()
    weight = (numerator if elements == 1 else numerator * elements) / (error + c) ** p
    return weight.detach()


def regression_components(pred: Tensor, target: Tensor, v_tilde: Tensor) -> dict[str, Tensor]:
    """mse, tfm and tcc per sample (module docstring); pred carries grad, target and ṽ do not."""
    target, v_tilde = target.detach(), v_tilde.detach()
    return {
        "mse": element_mean((pred - target) ** 2),
        "tfm": element_mean((pred - v_tilde) ** 2),
        "tcc": 2.0 * element_mean((v_tilde - target) * pred),
    }


def draw_sample(x: Tensor, labels: Tensor | None, *, ratio_fm: float, time_sampler: TimeSampler,
                guidance: Guidance | None = None, generator: torch.Generator | None = None,
                fm_time: str = "single") -> Sample:
    """Draw everything random in one objective evaluation for the batch x [B, ...].

    (t, r) [B] by the min–max rule with the first ⌊B·ratio_fm⌋ rows at r = t, their t drawn as ``fm_time`` says
    (``sample_time_pairs``), ε ~ N(0, I) like x, and, with ``guidance``, its label dropout (``Guidance.drop_labels``).
    The sample records ``num_fm`` so the objectives select the r < t rows without a host sync.
    """
    t, r = sample_time_pairs(x.shape[0], ratio_fm, time_sampler, fm_time=fm_time, generator=generator,
                             device=x.device, dtype=x.dtype)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if guidance is not None:
        labels = guidance.drop_labels(labels, t, generator)
    return Sample(t, r, eps, labels, num_fm=num_fm_rows(x.shape[0], ratio_fm))


class ObjectiveArgs(TypedDict, total=False):
    """The keyword arguments of ``Objective.__init__``, which every objective passes on (``**kwargs``)."""

    ratio_fm: float | Schedule | dict[str, Any] | None
    time_sampler: TimeSampler | None
    guidance: Guidance | dict[str, Any] | None
    adaptive_p: float | None
    adaptive_c: float | None
    adaptive_reduce: str | None
    fm_time: str | None


class Objective:
    """Base class: owns the r = t share schedule, the time sampler, guidance and the weighting.

    Subclasses set ``name`` and ``Options`` (their config section, ``alphaflow.objectives.options``;
    its field defaults are the constructor's defaults) and implement
    ``compute(net, x, sample, step) -> Terms``. Calling the objective draws a sample (or validates
    the caller's) and delegates::

        terms = objective(net, x, labels, step=k)               # draws (t, r, ε), drops labels
        terms = objective(net, x, sample=Sample(t, r, eps, y))  # caller-given sample

    x: [B, ...] data; labels: [B] int64 or None. ``net`` may be wrapped (DDP, compiled): the
    prediction goes through it so gradients synchronise, the no-grad target passes use
    ``alphaflow.core.jvp.target_module(net)`` (the unwrapped net, compiled under
    ``train.compile``) under ``alphaflow.core.amp.target_pass``. A drawn sample carries ``num_fm``, so a
    step reads nothing back from the device (one ``nonzero`` when guiding: ``Guidance.guided_velocity``).
    """

    name = "objective"
    Options: type[ObjectiveOptions] = ObjectiveOptions
    default_sampler = "ode"  # what sample.sampler=auto means for this objective's networks
    conflict_parts = True    # its terms carry tfm and tcc, whose gradients sum to the loss's (conflict.mode)
    needs_logvar = False     # its loss reads the network's learned log-variance (model.logvar=true)
    needs_velocity_head = False  # its loss reads the network's velocity head (model.aux_head_depth=K)

    def __init__(self, *, ratio_fm: float | Schedule | dict[str, Any] | None = None,
                 time_sampler: TimeSampler | None = None,
                 guidance: Guidance | dict[str, Any] | None = None, adaptive_p: float | None = None,
                 adaptive_c: float | None = None, adaptive_reduce: str | None = None,
                 fm_time: str | None = None) -> None:
        defaults = self.Options()
        self.ratio_fm = defaults.ratio_fm.resolve(1) if ratio_fm is None else as_schedule(ratio_fm)
        check_unit_interval(self.ratio_fm, "ratio_fm")
        self.time_sampler = defaults.time.build() if time_sampler is None else time_sampler
        self.fm_time = defaults.time.fm_time if fm_time is None else fm_time
        check_fm_time(self.fm_time)
        self.guidance = Guidance(**guidance) if isinstance(guidance, dict) else (guidance or defaults.guidance)
        adaptive_p = defaults.adaptive_p if adaptive_p is None else adaptive_p
        adaptive_c = defaults.adaptive_c if adaptive_c is None else adaptive_c
        if not (math.isfinite(adaptive_p) and adaptive_p >= 0):
            raise ValueError(f"adaptive_p (power of the adaptive weight) must be >= 0, got {adaptive_p}")
        if not (math.isfinite(adaptive_c) and adaptive_c > 0):
            raise ValueError(f"adaptive_c (the c in 1/(‖Δ‖² + c)^p) must be > 0, got {adaptive_c}")
        self.adaptive_p, self.adaptive_c = float(adaptive_p), float(adaptive_c)
        self.adaptive_reduce = defaults.adaptive_reduce if adaptive_reduce is None else adaptive_reduce
        if self.adaptive_reduce not in ADAPTIVE_REDUCTIONS:
            raise ValueError(f"objective.adaptive_reduce (what the adaptive weight reads: the element mean or sum of a "
                             f"sample's squared error) must be one of {list(ADAPTIVE_REDUCTIONS)}, "
                             f"got {self.adaptive_reduce!r}")
        self._elements: int | None = None  # a sample's element count, set by ``evaluate`` for the duration of a call

    def draw(self, x: Tensor, labels: Tensor | None = None, *, step: int = 0,
             generator: torch.Generator | None = None) -> Sample:
        """``draw_sample`` with this objective's ratio_fm(step), time sampler (and ``fm_time``) and guidance."""
        return draw_sample(x, labels, ratio_fm=self.ratio_fm(step), time_sampler=self.time_sampler,
                           guidance=self.guidance, generator=generator, fm_time=self.fm_time)

    def __call__(self, net: Net, x: Tensor, labels: Tensor | None = None, *, step: int = 0,
                 sample: Sample | None = None, generator: torch.Generator | None = None) -> Terms:
        if x.ndim < 2 or not x.dtype.is_floating_point:
            raise ValueError(f"x must be a floating-point batch [B, ...], got shape {tuple(x.shape)} and dtype {x.dtype}")
        if sample is None:
            check_labels(labels, x.shape[0])
            sample = self.draw(x, labels, step=step, generator=generator)
        else:
            if labels is not None:
                raise ValueError("labels were passed both directly and in sample=; pass them only as sample.labels")
            sample.validate(x)
        return self.evaluate(net, x, sample, step)

    def evaluate(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        """The terms on x: [B, ...] for a sample known to fit it (drawn by ``draw``, or checked by ``__call__``):
        ``compute`` plus the logged ratio_fm. The trainer's micro-batches come here with rows of a drawn sample.
        During the call ``weighted`` and ``loss_weight`` know a sample's element count (x[0].numel()), which
        ``adaptive_reduce="sum"`` needs."""
        self._elements = math.prod(x.shape[1:])
        try:
            terms = self.compute(net, x, sample, step)
        finally:
            self._elements = None
        terms.logs["ratio_fm"] = self.ratio_fm(step)
        return terms

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        raise NotImplementedError

    def guided(self, net: Net, x: Tensor, sample: Sample) -> tuple[Tensor, Tensor]:
        """z_t and the (guided) velocity ṽ, both [B, ...]; guidance passes use ``target_module(net)``."""
        z = interpolate(x, sample.eps, sample.t)
        v = velocity(x, sample.eps)
        return z, self.guidance.guided_velocity(target_module(net), z, sample.t, v, sample.labels)

    def adaptive_elements(self) -> int:
        """n in ``adaptive_loss``: 1 for ``adaptive_reduce="mean"``, a sample's element count for ``"sum"`` (known
        inside ``evaluate`` only)."""
        if self.adaptive_reduce == "mean":
            return 1
        if self._elements is None:
            raise RuntimeError("adaptive_reduce='sum' weights by a sample's element count, which an objective knows "
                               "only while it evaluates (call the objective, or Objective.evaluate)")
        return self._elements

    def weighted(self, mse: Tensor, numerator: Tensor | float = 1.0) -> Tensor:
        """The adaptive loss of element means mse [B] (``adaptive_loss``, with this objective's p, c and reduction)."""
        return adaptive_loss(mse, numerator, p=self.adaptive_p, c=self.adaptive_c, elements=self.adaptive_elements())

    def loss_weight(self, mse: Tensor, numerator: Tensor | float = 1.0) -> Tensor | float:
        """``Terms.weight`` for a loss ``weighted(mse, numerator)``: see ``adaptive_weight``."""
        return adaptive_weight(mse, numerator, p=self.adaptive_p, c=self.adaptive_c, elements=self.adaptive_elements())
