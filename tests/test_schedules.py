"""Schedules as pure functions of the step, and the paper's sigmoid curriculum
(arXiv 2510.20771 Algorithm 2; docs/objectives.md#the-alpha-curriculum)."""

from __future__ import annotations

import math

import pytest

from alphaflow.core.schedules import Schedule, as_schedule, check_unit_interval, constant, sigmoid

GAMMA, ETA = 25.0, 5e-3
HALF_WIDTH = math.log((1 - ETA) / ETA) / GAMMA  # α ∈ (0, 1) only while |k − mid| < HALF_WIDTH·(k_e − k_s)

# The table of docs/objectives.md#the-alpha-curriculum: (k_s, k_e, "α = 1 until", "α = 0 from"), to the nearest 0.1K.
CURRICULUM_TABLE = [(0, 400_000, 115_300, 284_700), (0, 1_200_000, 345_900, 854_100),
                    (600_000, 1_000_000, 715_300, 884_700)]


def first_step(pred, lo: int, hi: int) -> int:
    """Smallest k in [lo, hi] with pred(k), for a predicate that is monotone (False … False True … True)."""
    assert pred(hi) and not pred(lo), f"predicate must switch inside [{lo}, {hi}]"
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pred(mid) else (mid, hi)
    return hi


def grid(k_s: int, k_e: int, n: int = 400) -> list[int]:
    """Steps covering before, inside and after the window, with both edges and their neighbours."""
    span = k_e - k_s
    inner = [k_s + (span * i) // n for i in range(n + 1)]
    edges = [max(k_s - 1, 0), k_s, k_s + 1, k_e - 1, k_e, k_e + 1, k_e + span]
    return sorted(set(inner + edges + [0]))


# ----------------------------------------------------------------------------- the sigmoid curriculum

@pytest.mark.parametrize("k_s, k_e", [(0, 400_000), (0, 1_200_000), (600_000, 1_000_000)])
def test_sigmoid_is_one_before_zero_after_and_half_at_the_midpoint(k_s, k_e):
    s = sigmoid(k_s, k_e)
    assert (s.gamma, s.clamp) == (GAMMA, ETA), f"sigmoid() defaults must be γ = 25, η = 5e-3, got {s.gamma}, {s.clamp}"
    for k in {0, k_s // 2, max(k_s - 1, 0), k_s}:
        assert s(k) == 1.0, f"α({k}) must be exactly 1 before/at k_s = {k_s}, got {s(k)!r}"
    for k in (k_e, k_e + 1, 2 * k_e):
        assert s(k) == 0.0, f"α({k}) must be exactly 0 at/after k_e = {k_e}, got {s(k)!r}"
    mid = (k_s + k_e) // 2
    assert s(mid) == 0.5, f"α at the midpoint {mid} must be exactly 0.5 (the clamp must not touch it), got {s(mid)!r}"


@pytest.mark.parametrize("k", [1_000, 123_457, 150_000, 200_001, 260_000, 399_999])
def test_sigmoid_matches_the_closed_form_inside_the_window(k):
    s = Schedule(kind="sigmoid", start=1.0, end=0.0, k_start=0, k_end=400_000, gamma=GAMMA)  # no clamp
    expected = 1.0 - 1.0 / (1.0 + math.exp(-GAMMA * (k - 200_000) / 400_000))
    assert s(k) == pytest.approx(expected, rel=1e-12, abs=1e-15), f"α({k}) must be 1 − σ(γ(k − mid)/(k_e − k_s))"


@pytest.mark.parametrize("clamp", [0.0, ETA])
def test_sigmoid_is_antisymmetric_about_the_midpoint(clamp):
    s = sigmoid(0, 400_000, clamp=clamp)
    for d in (1, 777, 50_000, 84_692, 84_693, 150_000, 199_999):
        total = s(200_000 + d) + s(200_000 - d)
        assert total == pytest.approx(1.0, abs=1e-12), f"α(mid + {d}) + α(mid − {d}) must be 1, got {total!r}"


@pytest.mark.parametrize("k_s, k_e, until, from_", CURRICULUM_TABLE)
def test_clamp_transition_points_match_curriculum_table_and_analytic_half_width(k_s, k_e, until, from_):
    s = sigmoid(k_s, k_e)
    span, mid = k_e - k_s, (k_s + k_e) / 2
    first_below_one = first_step(lambda k: s(k) < 1.0, k_s, k_e)
    first_zero = first_step(lambda k: s(k) == 0.0, k_s, k_e)
    # Values within η of 1 are clamped to 1, within η of 0 to 0: α jumps 1 → ≈1 − η and ≈η → 0.
    assert s(first_below_one - 1) == 1.0, "α must be exactly 1 before it first leaves 1"
    assert s(first_below_one) == pytest.approx(1 - ETA, abs=1e-5) and s(first_below_one) <= 1 - ETA, \
        f"α must leave 1 by jumping to just below 1 − η, got {s(first_below_one)!r}"
    assert s(first_zero - 1) == pytest.approx(ETA, abs=1e-5) and s(first_zero - 1) >= ETA, \
        f"the last nonzero α must be just above η, got {s(first_zero - 1)!r}"
    assert s(first_zero) == 0.0, "α must be exactly 0 once below η"
    # Analytic: α > 1 − η  ⇔  k < mid − w,   α < η  ⇔  k > mid + w,   w = ln((1 − η)/η)/γ · span.
    w = HALF_WIDTH * span
    assert abs(first_below_one - (mid - w)) <= 1, f"α leaves 1 at {first_below_one}, expected ≈ {mid - w:.1f}"
    assert abs(first_zero - (mid + w)) <= 1, f"α reaches 0 at {first_zero}, expected ≈ {mid + w:.1f}"
    assert abs(first_below_one - until) <= 50, f"the curriculum table says α = 1 until ≈{until}, got {first_below_one}"
    assert abs(first_zero - from_) <= 50, f"the curriculum table says α = 0 from ≈{from_}, got {first_zero}"
    share = (first_zero - first_below_one) / span
    assert share == pytest.approx(2 * 0.2117, abs=1e-4), f"α ∈ (0, 1) on 42.3 % of the window, got {share:.4%}"


def test_the_half_width_constant():
    # docs/objectives.md#the-alpha-curriculum: α ∈ (0, 1) only while |k − k_mid| < 0.2117·(k_e − k_s)
    assert round(HALF_WIDTH, 4) == 0.2117, f"ln(199)/25 must be 0.2117, got {HALF_WIDTH}"


@pytest.mark.parametrize("s", [
    sigmoid(0, 400_000), sigmoid(600_000, 1_000_000), sigmoid(0, 1000, clamp=0.0),
    Schedule(kind="linear", start=1.0, end=0.0, k_start=100, k_end=900),
    Schedule(kind="cosine", start=1.0, end=0.0, k_start=100, k_end=900),
    Schedule(kind="exponential", start=1.0, end=1e-3, k_start=100, k_end=900),
    Schedule(kind="exponential", start=1.0, end=1e-3, k_start=100, k_end=900, gamma=1.0),
    Schedule(kind="log", start=1.0, end=0.0, k_start=100, k_end=900),
], ids=["sig-400K", "sig-600K-1M", "sig-noclamp", "linear", "cosine", "exponential", "exponential-g1", "log"])
def test_decreasing_schedules_are_monotone(s):
    values = [s(k) for k in grid(s.k_start, s.k_end)]
    bad = [i for i in range(1, len(values)) if values[i] > values[i - 1]]
    assert not bad, f"{s.kind} schedule must be non-increasing; it rises at grid positions {bad[:5]}"
    assert all(0.0 <= v <= 1.0 for v in values), f"{s.kind} schedule must stay in [0, 1]"


def test_discrete_floors_at_eta_instead_of_zero():
    cont, disc = sigmoid(0, 400_000), sigmoid(0, 400_000, discrete=True)
    for k in (284_693, 300_000, 400_000, 10**7):
        assert cont(k) == 0.0, f"the continuous curriculum must be exactly 0 at {k}"
        assert disc(k) == ETA, f"discrete=True must floor α at η = {ETA} at {k}, got {disc(k)!r}"
    for k in (0, 115_307, 115_308, 200_000, 284_692):
        assert disc(k) == cont(k), f"discrete=True must only change the values below η (step {k})"
    assert min(disc(k) for k in grid(0, 400_000)) == ETA, "with discrete=True α must never reach 0"


def test_discrete_without_a_clamp_is_refused():
    with pytest.raises(ValueError, match="discrete"):
        Schedule(kind="sigmoid", start=1.0, end=0.0, k_start=0, k_end=100, discrete=True)


# ----------------------------------------------------------------------------- the other kinds

def test_constant_ignores_step_and_end():
    s = Schedule(kind="constant", start=0.75, end=0.1, k_start=5, k_end=10)
    assert {s(k) for k in (0, 5, 7, 10, 10**6)} == {0.75}, "a constant schedule must always be its start"
    assert constant(0.25)(123) == 0.25, "constant(v) must evaluate to v"


def test_step_switches_exactly_at_k_start():
    s = Schedule(kind="step", start=0.75, end=0.25, k_start=1000, k_end=1000)
    assert [s(k) for k in (0, 999, 1000, 1001, 10**6)] == [0.75, 0.75, 0.25, 0.25, 0.25], \
        "a step schedule must be start before k_start and end from k_start on"


def test_linear_values_for_a_ratio_fm_schedule():
    s = Schedule(kind="linear", start=0.75, end=0.25, k_start=100, k_end=300)
    for k, v in [(0, 0.75), (100, 0.75), (150, 0.625), (200, 0.5), (250, 0.375), (300, 0.25), (301, 0.25)]:
        assert s(k) == pytest.approx(v, abs=1e-15), f"linear 0.75 → 0.25 over [100, 300] at {k} must be {v}"


def test_cosine_endpoints_midpoint_and_symmetry():
    s = Schedule(kind="cosine", start=0.75, end=0.25, k_start=0, k_end=1000)
    assert s(0) == 0.75 and s(1000) == pytest.approx(0.25, abs=1e-15), "cosine must start at start, end at end"
    assert s(500) == pytest.approx(0.5, abs=1e-15), f"cosine midpoint must be (start + end)/2, got {s(500)}"
    assert s(250) == pytest.approx(0.75 - 0.5 * (1 - math.sqrt(0.5)) / 2, abs=1e-15), "cosine at p = ¼"
    for d in (1, 100, 333):
        assert s(d) + s(1000 - d) == pytest.approx(1.0, abs=1e-15), f"cosine must be symmetric (d = {d})"


def test_exponential_is_geometric_at_gamma_one():
    s = Schedule(kind="exponential", start=0.1, end=1e-3, k_start=0, k_end=100, gamma=1.0)
    assert s(50) == pytest.approx(math.sqrt(0.1 * 1e-3), rel=1e-12), f"value at p = ½ must be sqrt(start·end)"
    assert s(0) == 0.1 and s(100) == pytest.approx(1e-3, rel=1e-12), "exponential endpoints"
    ratios = [s(k + 1) / s(k) for k in range(0, 100, 7)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-10), "consecutive steps must have a constant ratio"
    assert ratios[0] == pytest.approx(0.01 ** (1 / 100), rel=1e-10), "step ratio must be (end/start)^(1/span)"


def test_exponential_raises_the_progress_to_gamma():
    # start·(end/start)^(p^γ): at γ = 2 the log-value at p is p² of the way, so p = ½ sits a quarter of the way.
    s = Schedule(kind="exponential", start=0.1, end=1e-3, k_start=0, k_end=100, gamma=2.0)
    for k in (0, 10, 50, 73, 100):
        p = k / 100
        assert s(k) == pytest.approx(0.1 * 0.01 ** (p ** 2), rel=1e-12), f"exponential at γ = 2, step {k}"
    assert math.log(s(50) / 0.1) / math.log(0.01) == pytest.approx(0.25, rel=1e-12), "p = ½ → a quarter of the way"
    assert s(50) != Schedule(kind="exponential", start=0.1, end=1e-3, k_start=0, k_end=100, gamma=1.0)(50)
    with pytest.raises(ValueError, match="'gamma'.*exponential"):
        Schedule(kind="exponential", start=1.0, end=0.5, k_end=10, gamma=0.0)


def test_log_schedule_values():
    # start + (end − start)·log₁₀(1 + 9p): 0 at p = 0, 1 at p = 1, log₁₀(5.5) of the way at p = ½.
    s = Schedule(kind="log", start=0.75, end=0.25, k_start=100, k_end=300)
    for k, p in [(100, 0.0), (150, 0.25), (200, 0.5), (300, 1.0)]:
        assert s(k) == pytest.approx(0.75 - 0.5 * math.log10(1 + 9 * p), abs=1e-15), f"log schedule at step {k}"
    assert s(0) == 0.75 and s(10**6) == 0.25, "log: start before k_start, end after k_end"
    assert s(200) < 0.5, "log front-loads the change: past the midpoint value at p = ½"
    with pytest.raises(ValueError, match="'log'.*k_end > k_start"):
        Schedule(kind="log", k_start=5, k_end=5)


def test_sigmoid_between_arbitrary_start_and_end():
    s = sigmoid(100, 1100, start=0.75, end=0.25, clamp=0.0)
    assert s(99) == 0.75 and s(1101) == 0.25, "sigmoid must be start before k_start and end after k_end"
    assert s(600) == 0.5, f"sigmoid midpoint must be (start + end)/2, got {s(600)}"
    expected = 0.75 - 0.5 / (1 + math.exp(-GAMMA * 0.1))
    assert s(700) == pytest.approx(expected, rel=1e-12), "sigmoid at k = mid + span/10"


def test_schedules_are_pure_functions_of_the_step():
    s = sigmoid(0, 400_000)
    steps = [300_000, 10, 200_000, 150_000, 10, 1_200_000, 115_308]
    first = [s(k) for k in steps]
    again = [s(k) for k in reversed(steps)][::-1]
    fresh = [sigmoid(0, 400_000)(k) for k in steps]
    assert first == again == fresh, "a schedule's value must not depend on call order, repetition or instance"


# ----------------------------------------------------------------------------- round trip, as_schedule

@pytest.mark.parametrize("s", [sigmoid(600_000, 1_000_000, discrete=True), constant(0.25),
                               Schedule(kind="step", start=0.5, end=0.25, k_start=7, k_end=7)])
def test_dict_round_trip(s):
    d = s.to_dict()
    assert isinstance(d, dict) and d["kind"] == s.kind, "to_dict must give plain data"
    assert Schedule(**d) == s, f"Schedule(**s.to_dict()) must equal s, got {Schedule(**d)} vs {s}"


def test_as_schedule_accepts_number_dict_and_schedule():
    s = sigmoid(0, 400_000)
    assert as_schedule(s) is s, "as_schedule must pass a Schedule through unchanged"
    assert as_schedule(s.to_dict()) == s, "as_schedule must build a Schedule from its dict form"
    assert as_schedule(0.75) == constant(0.75) and as_schedule(0.75)(10**6) == 0.75, "a float is a constant"
    one = as_schedule(1)
    assert one.kind == "constant" and one(5) == 1.0 and isinstance(one(5), float), "an int is a constant float"


@pytest.mark.parametrize("bad", ["0.5", None, [0.5], True])
def test_as_schedule_refuses_other_types(bad):
    with pytest.raises(TypeError, match="expected a number, a Schedule or a dict"):
        as_schedule(bad)


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="sigmod", k_end=10), r"unknown schedule kind 'sigmod' \(did you mean sigmoid"),
    (dict(kind="cosin", k_end=10), r"did you mean cosine"),
    (dict(kind="linear", k_start=10, k_end=5), r"k_start <= k_end.*k_start=10, k_end=5"),
    (dict(kind="linear", k_start=-1, k_end=5), r"0 <= k_start"),
    (dict(kind="step", k_start=10, k_end=20), r"'step'.*k_start == k_end"),
    (dict(kind="sigmoid", k_start=10, k_end=10), r"'sigmoid' schedule needs k_end > k_start"),
    (dict(kind="linear", k_start=10, k_end=10), r"'linear' schedule needs k_end > k_start"),
    (dict(kind="exponential", start=1.0, end=0.0, k_end=10), r"'exponential'.*start and end must be > 0"),
    (dict(kind="exponential", start=0.0, end=0.5, k_end=10), r"'exponential'.*start and end must be > 0"),
    (dict(kind="sigmoid", k_end=10, gamma=0.0), r"'gamma'"),
    (dict(kind="sigmoid", k_end=10, clamp=0.5), r"'clamp' \(η\) must lie in \[0, 0.5\)"),
    (dict(kind="sigmoid", k_end=10, clamp=-0.1), r"'clamp'"),
    (dict(start=float("nan")), r"'start' must be finite"),
    (dict(kind="linear", k_end=10, end=float("inf")), r"'end' must be finite"),
    (dict(kind="sigmoid", k_end=10, gamma=float("inf")), r"'gamma' must be finite"),
], ids=["kind-sigmod", "kind-cosin", "k_end<k_start", "k_start<0", "step-window", "sigmoid-no-window",
        "linear-no-window", "exp-end-0", "exp-start-0", "gamma-0", "clamp-0.5", "clamp-neg", "start-nan", "end-inf",
        "gamma-inf"])
def test_schedule_refuses_bad_fields_and_names_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Schedule(**kwargs)


def test_negative_step_is_refused():
    for s in (sigmoid(0, 10), constant(0.5)):
        with pytest.raises(ValueError, match=r"step must be >= 0, got -1"):
            s(-1)


def test_check_unit_interval():
    check_unit_interval(sigmoid(0, 10), "alpha")
    check_unit_interval(Schedule(kind="linear", start=0.75, end=0.25, k_end=10), "ratio_fm")
    check_unit_interval(Schedule(kind="constant", start=0.5, end=7.0), "ratio_fm")  # end is ignored by constant
    with pytest.raises(ValueError, match=r"^ratio_fm must stay in \[0, 1\]; its schedule has end=1.5"):
        check_unit_interval(Schedule(kind="linear", start=0.5, end=1.5, k_end=10), "ratio_fm")
    with pytest.raises(ValueError, match=r"^alpha must stay in \[0, 1\]; its schedule has start=-0.1"):
        check_unit_interval(Schedule(kind="linear", start=-0.1, end=0.5, k_end=10), "alpha")
    with pytest.raises(ValueError, match=r"start=1.25"):
        check_unit_interval(constant(1.25), "alpha")
