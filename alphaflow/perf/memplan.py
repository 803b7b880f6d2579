"""A memory plan without a GPU: the peak memory per rank of each phase of a run, from fake tensors.

``plan_memory(cfg, world_size=8)`` runs the project's real code for each phase on fake tensors
(``alphaflow.perf.memtrack.FakeRun``: shapes, dtypes, autograd and autocast run, nothing is computed or
allocated) and reports the peak of live storage bytes:

    train          the trainer's step (``alphaflow.train.step.training_step``) at the per-rank batch: fp32
                   weights, their gradients, Adam's two moments, the EMA, the objective's activations (bf16
                   autocast where the run uses it), backward, clipping, fused Adam (as on CUDA), the EMA update.
                   α-Flow: the worst of α ∈ {1, ½, 0} (the discrete target and the MeanFlow tangent differ).
    online_probe   the training state resident, plus ``probe_gradients`` on the per-rank batch
                   (``probe.chunk_size`` rows at a time); used when ``probe.every`` > 0.
    offline_probe  ``alphaflow probe`` / ``probe.final``: one network plus ``probe_gradients`` on
                   ``probe.batch_size`` rows.
    eval           the EMA network generating ``eval.batch_size`` samples (fp32, no grad, the largest NFE),
                   and for latent data the SD-VAE decoding ``eval.decode_batch_size`` of them at a time and
                   Inception-v3 on the decoded images.

What is not modelled, and added instead: the CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers
(``OVERHEAD_BYTES``) and the caching allocator's fragmentation (``MARGIN``); under DDP the gradient buckets
hold the gradients (``gradient_as_bucket_view``) and stay allocated between steps, counted as a second copy
of the gradients (an upper bound). The simulation runs on the CPU device with CPU bf16 autocast, because a
CUDA-less torch cannot build modules on fake CUDA tensors; CPU and CUDA autocast cast nearly the same ops
(CUDA also keeps softmax, exp and reductions in fp32), and fused attention saves O(N) on both.
``tests/test_memplan.py`` checks the tracker against peaks measured on the CPU at small sizes.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from alphaflow.objectives import objective_from_options
from alphaflow.config import Config
from alphaflow.data import dataset_class
from alphaflow.perf.fakestep import FakeStep, draw, drawn_samples_only, fake_sample
from alphaflow.perf.memtrack import FakeRun
from alphaflow.models import build_for_data, model_options
from alphaflow.objectives import AlphaFlow, Objective
from alphaflow.train.probes import probe_gradients
from alphaflow.core.sampling import generate
from alphaflow.core.schedules import as_schedule

PHASES = ("train", "online_probe", "offline_probe", "eval")
GIB = 2 ** 30
OVERHEAD_BYTES = int(1.5 * GIB)  # CUDA context (≈ 0.5–1 GiB), cuBLAS/cuDNN workspaces, NCCL buffers
MARGIN = 0.10                    # fragmentation of the caching allocator

# SD-VAE ft-EMA (the latents' VAE): the architecture, without its weights
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=256)


def data_shape(cfg: Config) -> tuple[tuple[int, ...], int]:
    """(sample shape, number of classes) of the run's data, without opening it: the dataset's
    ``planned_shape`` (latents are ImageNet's SD-VAE latents, 4 × res/8 × res/8 with 1000 classes; image
    folders RGB at ``data.resolution`` with 1000)."""
    return dataset_class(cfg.data.name).planned_shape(cfg.data.resolution)


@dataclass
class PhasePlan:
    """One phase: ``peak_bytes`` tracked on fake tensors, ``parts`` what was resident besides the transient."""

    name: str
    peak_bytes: int
    parts: dict[str, int] = field(default_factory=dict)
    used: bool = True  # False: the config does not run this phase (planned for information)

    @property
    def total_bytes(self) -> int:
        """The planned device memory: the tracked peak plus fragmentation and the fixed overhead."""
        return int(self.peak_bytes * (1 + MARGIN)) + OVERHEAD_BYTES


@dataclass
class MemoryPlan:
    """Peak memory per rank of each phase (``PHASES``) for one config at one world size."""

    world_size: int
    per_rank_batch: int
    precision: str
    phases: dict[str, PhasePlan]
    micro_batch: int = 0  # rows per forward (train.micro_batch; 0: the whole per-rank batch)

    def fits(self, limit_bytes: float) -> bool:
        return all(p.total_bytes <= limit_bytes for p in self.phases.values() if p.used)

    def table(self, limit_gb: float = 80.0) -> str:
        micro = f" ({self.micro_batch} per forward)" if 0 < self.micro_batch < self.per_rank_batch else ""
        lines = [f"memory plan per rank: {self.world_size} rank(s), {self.per_rank_batch} samples per rank{micro}, "
                 f"{self.precision}; limit {limit_gb:g} GB",
                 f"{'phase':<14} {'tracked':>9} {'planned':>9}  {'fits':<5} resident"]
        for p in self.phases.values():
            ok = "yes" if p.total_bytes <= limit_gb * 1e9 else "NO"
            parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in p.parts.items())
            used = "" if p.used else "  (not used by this config)"
            lines.append(f"{p.name:<14} {p.peak_bytes / GIB:>7.1f}Gi {p.total_bytes / GIB:>7.1f}Gi  {ok:<5} "
                         f"{parts}{used}")
        lines.append(f"planned = tracked × {1 + MARGIN:g} + {OVERHEAD_BYTES / GIB:g} GiB (context, workspaces, NCCL)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "per_rank_batch": self.per_rank_batch, "micro_batch": self.micro_batch,
                "precision": self.precision,
                "phases": {k: {**dataclasses.asdict(p), "total_bytes": p.total_bytes} for k, p in self.phases.items()}}


# ----------------------------------------------------------------------------- phases

def _state_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _variants(objective: Objective) -> list[Objective]:
    """The objective's distinct cost regimes: α-Flow at α = 1, ½ and 0; any other objective as it is."""
    if not isinstance(objective, AlphaFlow):
        return [objective]
    out: list[Objective] = []
    for alpha in (1.0, 0.5, 0.0):
        variant = copy.copy(objective)
        variant.alpha = as_schedule(alpha)
        out.append(variant)
    return out


def _train_phase(cfg: Config, bf16: bool, world_size: int, shape: tuple[int, ...], classes: int, probe: bool,
                 plan_probe: bool = True) -> tuple[PhasePlan, PhasePlan | None]:
    """The trainer's step (``training_step``, after a first one, so Adam's moments exist) and, right after it,
    the online probe (``plan_probe``; planned for information when the config does not use it: ``probe``)."""
    batch = cfg.train.batch_size // world_size
    objective = objective_from_options(cfg.objective, cfg.train.steps)
    run = FakeRun()
    with run:
        fake = FakeStep(run, lambda: build_for_data(cfg.model.name, shape, classes, **model_options(cfg.model)),
                        objective, bf16=bf16, grad_clip=cfg.optim.grad_clip, halflife_steps=cfg.ema.halflife_steps,
                        micro_batch=cfg.train.micro_batch)
        net = fake.net
        weights = _state_bytes(net)
        x = run.fake((batch, *shape))
        peak, first = 0, True
        for variant in _variants(objective):
            for _ in range(2):
                if not first:
                    run.reset_peak()
                fake.step(x, variant)
                if not first:
                    peak = max(peak, run.peak)
                first = False
        buckets = weights if world_size > 1 else 0  # DDP's buckets between steps (see the module docstring)
        parts = {"weights": weights, "grads": weights, "adam": 2 * weights, "ema": weights, "ddp_buckets": buckets}
        train = PhasePlan("train", peak + buckets, parts)
        if not plan_probe:
            return train, None
        run.reset_peak()
        probe_gradients(net, x, fake_sample(run, draw(objective, batch, shape, probe_ratio_fm=cfg.probe.ratio_fm)),
                        guidance=objective.guidance,
                        training=objective if cfg.probe.loss else None, parts=cfg.probe.parts,
                        chunk_size=cfg.probe.chunk_size)
        online = PhasePlan("online_probe", run.peak + buckets, parts, used=probe)
    return train, online


def _offline_probe_phase(cfg: Config, shape: tuple[int, ...], classes: int) -> PhasePlan:
    objective = objective_from_options(cfg.objective, cfg.train.steps)
    batch = cfg.probe.batch_size
    run = FakeRun()
    with run:
        net = build_for_data(cfg.model.name, shape, classes, **model_options(cfg.model))
        sample = fake_sample(run, draw(objective, batch, shape, probe_ratio_fm=0.0))
        probe_gradients(net, run.fake((batch, *shape)), sample, guidance=objective.guidance, training=objective,
                        parts=cfg.probe.parts, chunk_size=cfg.probe.chunk_size)
        return PhasePlan("offline_probe", run.peak, {"weights": _state_bytes(net)})


def _eval_phase(cfg: Config, shape: tuple[int, ...], classes: int) -> PhasePlan:
    from alphaflow.metrics.inception import FIDInceptionV3, InceptionFeatures
    from alphaflow.train.sample_grids import sampler_for

    objective = objective_from_options(cfg.objective, cfg.train.steps)
    sampler = sampler_for(objective, cfg.sample.sampler)
    batch = cfg.eval.batch_size
    run = FakeRun()
    with run, torch.no_grad():
        net = build_for_data(cfg.model.name, shape, classes, **model_options(cfg.model)).eval()
        parts = {"weights": _state_bytes(net)}
        out = generate(net, run.fake((batch, *shape)), None, nfe=max(cfg.eval.nfe), sampler=sampler,
                       t_mid=cfg.sample.t_mid)
        if dataset_class(cfg.data.name).decodes_samples:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL(**{**SD_VAE, "sample_size": cfg.data.resolution}).eval()
            inception = InceptionFeatures(FIDInceptionV3().eval())
            parts.update(vae=_state_bytes(vae), inception=_state_bytes(inception.model))
            images = torch.cat([vae.decode(z).sample.float().clamp(-1, 1)
                                for z in out.split(cfg.eval.decode_batch_size)])
            inception(images)
        return PhasePlan("eval", run.peak, parts)


def plan_memory(cfg: Config, *, world_size: int = 1, device: str = "cuda") -> MemoryPlan:
    """Peak memory per rank of every phase of ``cfg`` on ``world_size`` ranks of ``device`` (see the module
    docstring). ``device`` decides what ``train.precision=auto`` means (bf16 on cuda)."""
    if world_size < 1 or cfg.train.batch_size % world_size:
        raise ValueError(f"world_size must divide train.batch_size={cfg.train.batch_size}, got {world_size}")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, got {device!r}")
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device == "cuda")
    shape, classes = data_shape(cfg)
    with drawn_samples_only():
        train, online = _train_phase(cfg, bf16, world_size, shape, classes, probe=cfg.probe.every > 0)
        assert online is not None  # planned: plan_probe is left on
        phases = {"train": train, "online_probe": online,
                  "offline_probe": _offline_probe_phase(cfg, shape, classes), "eval": _eval_phase(cfg, shape, classes)}
    return MemoryPlan(world_size, cfg.train.batch_size // world_size, "bf16" if bf16 else "fp32", phases,
                      cfg.train.micro_batch)



def plan_training(cfg: Config, *, world_size: int = 1, device: str = "cuda") -> PhasePlan:
    """The train phase of ``plan_memory`` alone (the worst α for α-Flow, at ``train.micro_batch``): no probe, no
    evaluation (which would build the SD-VAE from ``diffusers`` for latent data)."""
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device == "cuda")
    shape, classes = data_shape(cfg)
    with drawn_samples_only():
        return _train_phase(cfg, bf16, world_size, shape, classes, probe=False, plan_probe=False)[0]


def propose_micro_batch(cfg: Config, *, world_size: int, limit_bytes: float, device: str = "cuda") -> int | None:
    """The largest ``train.micro_batch`` (the per-rank batch halved, and halved again) whose training step fits
    ``limit_bytes``, planned on fake tensors; None when not even one row at a time fits. Only the train phase is
    planned: the probes and the evaluation have knobs of their own (``probe.chunk_size``, ``eval.batch_size``)."""
    micro = cfg.train.batch_size // world_size // 2
    while micro >= 1:
        trial = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch=micro))
        if plan_training(trial, world_size=world_size, device=device).total_bytes <= limit_bytes:
            return micro
        micro //= 2
    return None
