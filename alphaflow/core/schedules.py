"""Schedules for α and ratio_fm: pure functions of the training step
(docs/objectives.md#schedule-kinds; arXiv 2510.20771 Algorithm 2, §4.2).

A ``Schedule`` moves a value from ``start`` to ``end`` between steps ``k_start`` and
``k_end``; before ``k_start`` it is ``start``, after ``k_end`` it is ``end``. In between,
with progress p = (k − k_start)/(k_end − k_start) ∈ [0, 1]:

    constant     start (``end`` is ignored)
    step         start for k < k_start, end from k_start on (requires k_start == k_end)
    linear       start + (end − start)·p
    cosine       start + (end − start)·(1 − cos πp)/2
    exponential  start·(end/start)^(p^γ)                  (geometric in p^γ; start, end > 0)
    log          start + (end − start)·log₁₀(1 + 9p)
    sigmoid      start + (end − start)·σ(γ·(k − k_mid)/(k_end − k_start)),   k_mid = (k_start + k_end)/2

The paper's curriculum (arXiv 2510.20771 Algorithm 2, §4.2; docs/objectives.md#the-alpha-curriculum) is
``sigmoid`` from start = 1 to end = 0 with γ = 25 and clamp η = 5·10⁻³: α = 1 − σ(γ(k − k_mid)/(k_e − k_s)).

Clamp η (docs/objectives.md#the-alpha-curriculum) applies to every kind: a value below η becomes exactly 0 (for α: pure
MeanFlow with the JVP) and a value above 1 − η becomes exactly 1 (pure trajectory flow
matching). With ``discrete=True`` values below η become η instead, so α never reaches 0 and
training never needs the JVP (the official ``discrete_training`` flag).
"""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Callable

UNITS = ("step", "fraction")  # how a ScheduleConfig counts k_start and k_end

# Shape of the transition, as a function of progress p ∈ [0, 1] and of the step offset
# from the midpoint measured in window lengths (used by the sigmoid only).
_Shape = Callable[["Schedule", float, float], float]


def _logistic(x: float) -> float:
    # Numerically stable σ(x).
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


SHAPES: dict[str, _Shape] = {
    "constant": lambda s, p, m: s.start,
    "step": lambda s, p, m: s.end,  # only reached at k == k_start == k_end; see __call__
    "linear": lambda s, p, m: s.start + (s.end - s.start) * p,
    "cosine": lambda s, p, m: s.start + (s.end - s.start) * (1.0 - math.cos(math.pi * p)) / 2.0,
    # The official code raises the progress to γ before interpolating geometrically (γ = 1: plain geometric).
    "exponential": lambda s, p, m: s.start * (s.end / s.start) ** (p ** s.gamma),
    "log": lambda s, p, m: s.start + (s.end - s.start) * math.log10(1.0 + 9.0 * p),
    "sigmoid": lambda s, p, m: s.start + (s.end - s.start) * _logistic(s.gamma * m),
}


@dataclass(frozen=True)
class Schedule:
    """A value as a pure function of the training step: ``value = schedule(step)``.

    Fields are plain data so a schedule round-trips through a config file
    (``Schedule(**d)`` / ``schedule.to_dict()``). Validation happens at construction and
    raises ``ValueError`` naming the field.
    """

    kind: str = "constant"
    start: float = 1.0
    end: float = 0.0
    k_start: int = 0
    k_end: int = 0
    gamma: float = 25.0
    clamp: float = 0.0
    discrete: bool = False

    def __post_init__(self) -> None:
        if self.kind not in SHAPES:
            near = difflib.get_close_matches(str(self.kind), SHAPES, n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ValueError(f"unknown schedule kind {self.kind!r}{hint}; expected one of {sorted(SHAPES)}")
        for name in ("start", "end", "gamma", "clamp"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"schedule field {name!r} must be finite, got {getattr(self, name)!r}")
        if self.k_start < 0 or self.k_end < self.k_start:
            raise ValueError(f"schedule needs 0 <= k_start <= k_end, got k_start={self.k_start}, k_end={self.k_end}")
        if self.kind == "step" and self.k_start != self.k_end:
            raise ValueError(f"a 'step' schedule switches at one step: set k_start == k_end (got {self.k_start}, {self.k_end})")
        if self.kind in ("linear", "cosine", "exponential", "log", "sigmoid") and self.k_end == self.k_start:
            raise ValueError(f"a {self.kind!r} schedule needs k_end > k_start (got both {self.k_start}); use kind='step' for a jump")
        if self.kind == "exponential" and (self.start <= 0 or self.end <= 0):
            raise ValueError(f"an 'exponential' schedule interpolates geometrically: start and end must be > 0, got {self.start}, {self.end}")
        if self.kind in ("sigmoid", "exponential") and self.gamma <= 0:
            raise ValueError(f"schedule field 'gamma' (the {self.kind} schedule's {'temperature' if self.kind == 'sigmoid' else 'progress exponent'}) "
                             f"must be > 0, got {self.gamma}")
        if not 0.0 <= self.clamp < 0.5:
            raise ValueError(f"schedule field 'clamp' (η) must lie in [0, 0.5), got {self.clamp}")
        if self.discrete and self.clamp == 0.0:
            raise ValueError("schedule field 'discrete' floors values at the clamp η, so it needs clamp > 0")

    def raw(self, step: int) -> float:
        """The value before clamping."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.kind == "constant":
            return self.start
        if step < self.k_start:
            return self.start
        if step > self.k_end or (self.kind == "step" and step >= self.k_end):
            return self.end
        span = self.k_end - self.k_start
        progress = (step - self.k_start) / span
        from_mid = (step - (self.k_start + self.k_end) / 2.0) / span
        return SHAPES[self.kind](self, progress, from_mid)

    def __call__(self, step: int) -> float:
        """The clamped value at ``step``: below η → 0 (or η if ``discrete``), above 1 − η → 1."""
        value = self.raw(step)
        if self.clamp > 0.0:
            if value < self.clamp:
                return self.clamp if self.discrete else 0.0
            if value > 1.0 - self.clamp:
                return 1.0
        return value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def constant(value: float) -> Schedule:
    """A constant schedule, e.g. ``constant(0.75)`` for MeanFlow's r = t share."""
    return Schedule(kind="constant", start=value, end=value)


def sigmoid(k_start: int, k_end: int, *, gamma: float = 25.0, clamp: float = 5e-3,
            start: float = 1.0, end: float = 0.0, discrete: bool = False) -> Schedule:
    """The paper's α curriculum (arXiv 2510.20771 Algorithm 2): 1 before k_start, 0 after k_end, sigmoid between."""
    return Schedule(kind="sigmoid", start=start, end=end, k_start=k_start, k_end=k_end,
                    gamma=gamma, clamp=clamp, discrete=discrete)


def as_schedule(value: float | Schedule | dict[str, Any]) -> Schedule:
    """Accept a number (constant), a ``Schedule`` or its dict form."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, dict):
        return Schedule(**value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return constant(float(value))
    raise TypeError(f"expected a number, a Schedule or a dict of Schedule fields, got {type(value).__name__}")


def check_unit_interval(schedule: Schedule, name: str) -> None:
    """Refuse a schedule that can leave [0, 1] (α and ratio_fm are both fractions).

    Every shape here is monotone between ``start`` and ``end``, so checking both ends suffices.
    """
    for field in ("start",) if schedule.kind == "constant" else ("start", "end"):
        v = getattr(schedule, field)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must stay in [0, 1]; its schedule has {field}={v}")


@dataclass
class ScheduleConfig:
    """A ``Schedule`` as a config section: its window may be given as fractions of the run.

    unit "step": k_start/k_end are steps; "fraction": they are fractions of ``train.steps``.
    In a config a plain number where a schedule is expected means a constant: ``ratio_fm: 0.75``.
    """

    kind: str = "constant"
    start: float = 1.0
    end: float = 0.0
    k_start: float = 0.0
    k_end: float = 0.0
    unit: str = "step"
    gamma: float = 25.0
    clamp: float = 0.0
    discrete: bool = False

    @classmethod
    def constant(cls, value: float) -> "ScheduleConfig":
        return cls(kind="constant", start=value, end=value)

    def resolve(self, total_steps: int) -> Schedule:
        """The ``Schedule`` for a run of ``total_steps``: k_* become whole steps (nearest).

        Raises ``ValueError`` (from ``Schedule`` or for a bad unit) naming the field.
        """
        if self.unit not in UNITS:
            near = difflib.get_close_matches(str(self.unit), UNITS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"unknown schedule unit {self.unit!r}{hint}; expected one of {list(UNITS)}")
        scale = total_steps if self.unit == "fraction" else 1
        k_start, k_end = self.k_start * scale, self.k_end * scale
        if self.unit == "step" and not (float(k_start).is_integer() and float(k_end).is_integer()):
            raise ValueError(f"with unit 'step' k_start and k_end count whole steps, got {self.k_start}, {self.k_end}"
                             " (use unit 'fraction' for fractions of train.steps)")
        return Schedule(kind=self.kind, start=float(self.start), end=float(self.end), k_start=round(k_start),
                        k_end=round(k_end), gamma=float(self.gamma), clamp=float(self.clamp),
                        discrete=self.discrete)
