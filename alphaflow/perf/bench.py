"""``alphaflow bench``: the cost of one training step of each objective against flow matching.

A step here is the trainer's step, ``alphaflow.train.step.training_step``: the objective's forward (with its
target passes: α-Flow's extra forward, MeanFlow's JVP), backward (or a conflict rule's two), clipping, Adam and
the EMA, all variants sharing one Adam and one EMA (the update costs the same for every objective, so the ratios
sit a little closer to 1 than forward-plus-backward ratios would). Gradients are set to None before every step.
``--census`` counts the same step on fake tensors instead (``alphaflow.perf.census``). Variants (``VARIANTS``),
with the cost model's FLOP ratio to flow matching:

    fm             flow matching, r = t on every row                       1.00
    alpha_mid      α-Flow at constant α = 0.5, its default ratio_fm 0.5     1 + p/3 ≈ 1.17
    mf_p100        MeanFlow, the JVP on every row (ratio_fm = 0)            ≈ 1.35 ideal
    mf_p25         MeanFlow, the JVP on 25 % of rows (ratio_fm = 0.75)      ≈ 1.09 ideal
    official_p100  the official code's pattern at p = 1 (``OfficialPattern``)  ≈ 2.0 in stock eager PyTorch
    probe          the online probe alone, not a step: MeanFlow forward at p = 1, the gradients of L_TFM
                   and L_TCC, their cosine (one backward more than a MeanFlow step, no update)

and, with ``--variants conflict`` (``CONFLICT_VARIANTS``), the MeanFlow step at p = 1 with each conflict
intervention (``conflict.mode``, docs/conflict.md): the forward once, two backward passes, the rule:

    mf_pcgrad, mf_project_tcc, mf_balance, mf_cagrad    whole-vector, every step     ≈ 2.0 (two backwards)
    mf_pcgrad_groups   PCGrad per parameter group
    mf_pcgrad_k10      PCGrad with coefficients reused for 10 steps (conflict.every=10): one call runs
                       ten steps, and its time and FLOPs are reported per step

and, with ``--variants family`` (``FAMILY_VARIANTS``), the MeanFlow-family objectives on every row:

    smf_p100       SplitMeanFlow, two no-grad forwards for the target, no JVP      ≈ 1 + 2/3 ≈ 1.67
    modular_p100   Modular MeanFlow at λ = 1: a JVP that is differentiated (``torch.func.jvp`` with grad,
                   attention on the math backend) beside the prediction's forward
    imf_p100       improved MeanFlow without guidance: a no-grad pass for the head's velocity (the tangent),
                   then MeanFlow's step with the head's loss beside it (the DiT gets ``aux_head_depth=0``)

Measurements, each after ``warmup`` untimed rounds, on one fixed random batch (x ~ N(0, I), random
labels; the values do not change the cost) and a model nudged off DiT's zero init:
- time: round-robin over the variants in one process (the order rotates every round), wall clock on
  the CPU, CUDA events on the GPU; ``ms`` is the median, ``ratio`` the median of per-round ratios to fm;
- ``flops``: ``torch.utils.flop_counter.FlopCounterMode`` over one step (matrix products and attention,
  2 FLOPs per multiply-add; elementwise work is not counted);
- ``peak_mem_bytes``: the peak of memory allocated during one step above what was allocated when it
  began (activations, saved tensors, temporaries, the gradients); the parameters and the batch are
  excluded. CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats`` (``peak_mem_total_bytes``
  also counts what was allocated before). CPU: the torch profiler with ``profile_memory=True`` records
  every allocation and free of the CPU allocator; the peak of their running sum in time order.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from alphaflow.core.conventions import expand_time, interpolate, velocity
from alphaflow.models import build_for_data
from alphaflow.objectives import (AlphaFlow, FlowMatching, ImprovedMeanFlow, MeanFlow, ModularMeanFlow, Objective, Sample,
                                  SplitMeanFlow)
from alphaflow.objectives.base import Net, Terms, adaptive_loss, element_mean
from alphaflow.config.schema import ConflictConfig
from alphaflow.train.probes import gram_matrices, gram_summary
from alphaflow.train.split_backward import ConflictCombiner
from alphaflow.train.distributed import DistInfo
from alphaflow.train.optim import EMA, build_optimizer
from alphaflow.train.step import LoopState, StepParts, training_step

BASE_VARIANTS = ("fm", "alpha_mid", "mf_p100", "mf_p25", "official_p100", "probe")
CONFLICT_VARIANTS = ("mf_pcgrad", "mf_project_tcc", "mf_balance", "mf_cagrad", "mf_pcgrad_groups", "mf_pcgrad_k10")
FAMILY_VARIANTS = ("smf_p100", "modular_p100", "imf_p100")
VARIANTS = BASE_VARIANTS + CONFLICT_VARIANTS + FAMILY_VARIANTS
STEPS_PER_CALL = {"mf_pcgrad_k10": 10}  # variants whose one call runs several training steps
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM (NVIDIA's data sheet)
# The cost targets (what, variant, measure, bound); measure "ratio" is the time ratio to fm, "mem" the peak-memory
# ratio. A MeanFlow step whose JVP rides on the forward costs (4 + f)/3 ≈ 1.35 flow-matching steps in FLOPs at
# p = 1 (docs/jvp.md), so 1.4 leaves a small margin; at 25 % of the rows 1.15; the tangent mode keeps the
# activations of a flow-matching step, so the peak memory stays within 10 %.
# An exact conflict rule needs the forward with the tangent and two backward passes: 1 + 2·(2/3)·... ≈ 2.0
# flow-matching steps, so PCGrad's bound is 2.05; its second gradient set and the retained graph cost memory.
TARGETS = (("mf_p100 time", "mf_p100", "ratio", 1.4), ("mf_p25 time", "mf_p25", "ratio", 1.15),
           ("mf_p100 peak memory", "mf_p100", "mem", 1.1), ("mf_p25 peak memory", "mf_p25", "mem", 1.1),
           ("mf_pcgrad time", "mf_pcgrad", "ratio", 2.05), ("mf_pcgrad peak memory", "mf_pcgrad", "mem", 1.35))

Step = Callable[[], None]
_T = TypeVar("_T")  # what a measurement of a step gives


class OfficialPattern(MeanFlow):
    """MeanFlow trained the official code's way (docs/official_code.md#jvp-implementation,
    docs/jvp.md#how-alphaflow-bench-measures), as an objective the trainer's step can run.

    du/dt by ``torch.autograd.functional.jvp`` (the double-backward trick: no forward-mode rules, two extra
    backward-like passes, no graph kept) with attention on the MATH backend, then an ordinary forward. Same time
    sampling, target u_tgt = ṽ − (t − r)·du/dt and adaptive weight as ``MeanFlow``. x: [B, ...].
    """

    def compute(self, net: Net, x: Tensor, sample: Sample, step: int) -> Terms:
        s = sample
        z, v = interpolate(x, s.eps, s.t), velocity(x, s.eps)
        with sdpa_kernel([SDPBackend.MATH]):
            _, dudt = torch.autograd.functional.jvp(lambda z_, r_, t_: net(z_, r_, t_, s.labels), (z, s.r, s.t),
                                                    (v, torch.zeros_like(s.r), torch.ones_like(s.t)))
        target = (v - expand_time(s.t - s.r, dudt) * dudt).detach()
        pred = net(z, s.r, s.t, s.labels)
        mse = element_mean((pred.float() - target.float()) ** 2)
        loss = adaptive_loss(mse, 1.0, p=self.adaptive_p, c=self.adaptive_c)
        return Terms(loss=loss, components={"mse": mse}, pred=pred, target=target, sample=sample)


def step_objectives() -> dict[str, Objective]:
    """The variants that are a trainer's step of an objective, by name (module docstring)."""
    return {"fm": FlowMatching(), "alpha_mid": AlphaFlow(alpha=0.5), "mf_p100": MeanFlow(ratio_fm=0.0),
            "mf_p25": MeanFlow(ratio_fm=0.75), "official_p100": OfficialPattern(ratio_fm=0.0),
            "smf_p100": SplitMeanFlow(ratio_fm=0.0), "modular_p100": ModularMeanFlow(lam=1.0, ratio_fm=0.0),
            "imf_p100": ImprovedMeanFlow(ratio_fm=0.0, label_dropout=0.0)}


def make_steps(net: nn.Module, x: Tensor, labels: Tensor | None, *, bf16: bool = False,
               generator: torch.Generator | None = None) -> dict[str, Step]:
    """The variants' steps, each a no-argument callable: the trainer's ``training_step`` (objective, backward or
    the conflict rule, clipping, Adam, EMA) on the fixed batch, all variants sharing one Adam and one EMA; the
    probe variant is the online probe alone (MeanFlow forward, two term gradients, their cosine)."""
    autocast = functools.partial(torch.autocast, x.device.type, dtype=torch.bfloat16, enabled=bf16)
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    opt = build_optimizer([p for _, p in params], lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    ema = EMA(net, 500.0, None)
    info = DistInfo(device=x.device)

    def trainer_step(objective: Objective, conflict: ConflictConfig | None = None, calls: int = 1) -> Step:
        combiner = ConflictCombiner(conflict, net, [p for _, p in params], info) if conflict else None
        parts = StepParts(net, net, objective, opt, ema, info, bf16, 16.0, combiner)
        state = LoopState()

        def step() -> None:
            for _ in range(calls):
                training_step(parts, state, x, labels, lr=1e-5, generator=generator)
                state.step += 1
        return step

    def probe() -> None:  # the trainer's online probe, two terms (alphaflow.train.probes)
        with autocast():
            mf = MeanFlow(ratio_fm=0.0)(net, x, labels, generator=generator)
        terms = {"tfm": mf.components["tfm"].float().mean(), "tcc": mf.components["tcc"].float().mean()}
        gram = gram_matrices(terms, params)["all"]
        gram_summary(gram, list(terms), {k: float(v.detach()) for k, v in terms.items()})

    mf = MeanFlow(ratio_fm=0.0)
    return {**{name: trainer_step(objective) for name, objective in step_objectives().items()}, "probe": probe,
            **{f"mf_{mode}": trainer_step(mf, ConflictConfig(mode=mode))
               for mode in ("pcgrad", "project_tcc", "balance", "cagrad")},
            "mf_pcgrad_groups": trainer_step(mf, ConflictConfig(mode="pcgrad", per_group=True)),
            "mf_pcgrad_k10": trainer_step(mf, ConflictConfig(mode="pcgrad", every=10),
                                          calls=STEPS_PER_CALL["mf_pcgrad_k10"])}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step: Step, device: torch.device) -> float:
    """Milliseconds of one call: CUDA events on the GPU, ``perf_counter`` on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _sync(device)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    step()
    return (time.perf_counter() - t0) * 1e3


class _TotalOnly:
    """Stands in for ``FlopCounterMode``'s per-module tracker: we need the total only, and the
    tracker's gradient hooks make ``autograd.grad`` over a leaf fail (the double-backward JVP)."""

    parents = ("Global",)

    def __enter__(self) -> "_TotalOnly":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def count_flops(step: Step) -> int:
    """FLOPs of one call (``FlopCounterMode``: matrix products, convolutions, attention)."""
    counter = FlopCounterMode(display=False)
    setattr(counter, "mod_tracker", _TotalOnly())  # a stand-in for its ModuleTracker (setattr: mypy allows it)
    with counter:
        step()
    return int(counter.get_total_flops())


def peak_memory(step: Step, device: torch.device) -> tuple[int, int]:
    """(peak above the start, peak in total) in bytes over one call; see the module docstring.

    On the CPU the total is not known (the allocator keeps no statistics) and is returned as -1.
    """
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak - base, peak
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # the raw allocator records (bytes > 0 allocated, < 0 freed), in time order
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak, -1


def resolve_variants(spec: str) -> tuple[str, ...]:
    """A comma list of variant names and groups (base; conflict: fm, mf_p100 and ``CONFLICT_VARIANTS``; family: fm,
    mf_p100 and ``FAMILY_VARIANTS``; all)
    → the variants, fm first (the reference of every ratio); an unknown name is refused by ``run_bench``."""
    groups = {"base": BASE_VARIANTS, "conflict": ("fm", "mf_p100", *CONFLICT_VARIANTS),
              "family": ("fm", "mf_p100", *FAMILY_VARIANTS), "all": VARIANTS}
    chosen = [v for item in spec.split(",") if item.strip() for v in groups.get(item.strip(), (item.strip(),))]
    return tuple(dict.fromkeys(["fm", *chosen]))


def resolve_device(device: str) -> torch.device:
    """"auto" → cuda when available, else cpu; cuda without CUDA is a ValueError."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available to this torch "
                         f"({torch.__version__}); use --device cpu")
    return torch.device(device)


def run_bench(model: str = "DiT-T/2", *, batch: int = 48, shape: tuple[int, ...] = (1, 8, 8), classes: int = 10,
              device: str = "auto", precision: str = "auto", rounds: int = 10, warmup: int = 2,
              threads: int | None = None, peak_flops: float = H100_BF16_PEAK, seed: int = 0,
              variants: tuple[str, ...] = BASE_VARIANTS) -> dict[str, Any]:
    """Bench ``variants`` of one step (module docstring); raises ValueError on bad inputs.

    Defaults: the embedded recipe (DiT-T/2 on the digits' 1×8×8 with 10 classes, batch 48).
    Returns {variant: {ms, ratio, flops, flops_ratio, peak_mem_bytes, images_per_s, [mfu,
    peak_mem_total_bytes on cuda]}, "meta": {...}}; fm must be among ``variants`` (the reference).
    """
    _check_inputs(batch=batch, rounds=rounds, warmup=warmup, threads=threads, classes=classes, shape=shape,
                  peak_flops=peak_flops, precision=precision, variants=variants)
    dev = resolve_device(device)
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench(model, batch, tuple(shape), classes, dev, bf16, rounds, warmup, peak_flops, seed, variants)
    finally:
        torch.set_num_threads(previous_threads)  # a library call leaves the process as it found it


def _check_inputs(*, batch: int, rounds: int, warmup: int, threads: int | None, classes: int,
                  shape: tuple[int, ...], peak_flops: float, precision: str, variants: tuple[str, ...]) -> None:
    for name, value, low in (("--batch", batch, 1), ("--rounds", rounds, 1), ("--warmup", warmup, 0),
                             ("--threads", 1 if threads is None else threads, 1), ("--classes", classes, 0)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not peak_flops > 0:
        raise ValueError(f"--peak-flops must be > 0, got {peak_flops}")
    if any(n < 1 for n in shape):
        raise ValueError(f"--shape entries must be >= 1, got {list(shape)}")
    if any(v not in VARIANTS for v in variants) or "fm" not in variants:
        raise ValueError(f"variants must include fm and come from {list(VARIANTS)}, got {list(variants)}")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision must be auto, fp32 or bf16, got {precision!r}")


def _bench(model: str, batch: int, shape: tuple[int, ...], classes: int, dev: torch.device, bf16: bool,
           rounds: int, warmup: int, peak_flops: float, seed: int, variants: tuple[str, ...]) -> dict[str, Any]:
    torch.manual_seed(seed)
    head = {"aux_head_depth": 0} if "imf_p100" in variants else {}  # iMF's velocity head: unused by the others
    if head and not model.startswith("DiT-"):
        raise ValueError(f"the variant imf_p100 needs a DiT (its velocity head), got --model {model}")
    net = build_for_data(model, shape, classes, **head).to(dev)  # ValueError with close matches
    with torch.no_grad():  # off the zero init, so every term and gradient is non-zero
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(batch, *shape, generator=gen, device=dev)
    labels = torch.randint(0, classes, (batch,), generator=gen, device=dev) if classes else None
    steps = {k: v for k, v in make_steps(net, x, labels, bf16=bf16, generator=gen).items() if k in variants}

    def measure(how: Callable[[Step], _T], name: str) -> _T:  # grads to None first, outside the measurement
        net.zero_grad(set_to_none=True)
        return how(steps[name])

    for _ in range(warmup):
        for name in steps:
            measure(lambda step: step(), name)
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(rounds):  # round-robin, the order rotating every round
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(measure(lambda step: time_step(step, dev), name))
    out: dict[str, Any] = {}
    for name in steps:
        per = STEPS_PER_CALL.get(name, 1)
        flops = measure(count_flops, name) // per
        peak, total = measure(lambda step: peak_memory(step, dev), name)
        ms = statistics.median(times[name]) / per
        out[name] = {"ms": ms, "ratio": statistics.median(t / per / f for t, f in zip(times[name], times["fm"])),
                     "flops": flops, "peak_mem_bytes": peak, "images_per_s": batch / (ms / 1e3)}
        if dev.type == "cuda":
            out[name].update(peak_mem_total_bytes=total, mfu=flops / (ms / 1e3) / peak_flops)
    for row in out.values():
        row["flops_ratio"] = row["flops"] / out["fm"]["flops"]
    out["meta"] = {"model": model, "batch": batch, "shape": list(shape), "classes": classes, "device": str(dev),
                   "precision": "bf16" if bf16 else "fp32", "threads": torch.get_num_threads(), "rounds": rounds,
                   "warmup": warmup, "optimizer_step": True, "peak_flops": peak_flops, "torch": torch.__version__,
                   "targets": check_targets(out)}
    return out


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The cost targets (``TARGETS``) on the variants present: value, bound and pass/fail."""
    checks = []
    for what, name, measure, bound in TARGETS:
        if name not in results:
            continue
        value = (results[name]["ratio"] if measure == "ratio"
                 else results[name]["peak_mem_bytes"] / max(results["fm"]["peak_mem_bytes"], 1))
        checks.append({"target": what, "value": value, "bound": bound, "ok": value <= bound})
    return checks


def format_table(results: dict[str, Any]) -> str:
    """The human output: one line of conditions, an aligned table, one line of target checks."""
    meta = results["meta"]
    cuda = meta["device"].startswith("cuda")
    lines = [f"threads {meta['threads']}, device {meta['device']} ({meta['precision']}), model {meta['model']}, "
             f"batch {meta['batch']} of {'x'.join(map(str, meta['shape']))}, {meta['rounds']} rounds after "
             f"{meta['warmup']} warm-up; a step = the trainer's step (forward, backward, clipping, Adam, EMA)"]
    head = f"{'variant':<14} {'ms':>9} {'ratio':>6} {'GFLOP':>9} {'flops×':>6} {'peak MiB':>9} {'img/s':>9}"
    lines += [head + (f" {'MFU':>6}" if cuda else ""), "-" * (len(head) + (7 if cuda else 0))]
    for name, r in results.items():
        if name == "meta":
            continue
        line = (f"{name:<14} {r['ms']:>9.2f} {r['ratio']:>6.2f} {r['flops'] / 1e9:>9.3f} {r['flops_ratio']:>6.2f} "
                f"{r['peak_mem_bytes'] / 2**20:>9.2f} {r['images_per_s']:>9.0f}")
        lines.append(line + (f" {r['mfu']:>6.1%}" if cuda else ""))
    checks = meta["targets"]
    if checks:
        verdict = "PASS" if all(c["ok"] for c in checks) else "FAIL"
        parts = [f"{c['target']} {c['value']:.2f} ≤ {c['bound']:.2f} {'ok' if c['ok'] else 'FAIL'}" for c in checks]
        lines.append(f"cost targets: {verdict} ({'; '.join(parts)})")
    return "\n".join(lines)
