"""The run config's schema: a tree of dataclasses whose defaults are the embedded recipe (digits, DiT-T/2, α-Flow).

``objective`` is a tagged union on ``objective.name``: its section is the named objective's ``Options``
(``alphaflow.objectives``), so ``objective.alpha`` exists for α-Flow only. Loading, merging and the
semantic rules live in the sibling modules; ``alphaflow.config`` re-exports what callers use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alphaflow.objectives import OPTIONS, ObjectiveOptions
from alphaflow.objectives.alpha import AlphaFlowOptions

# Closed sets checked by ``validate``. SAMPLERS is ``alphaflow.core.sampling.SAMPLERS`` plus "auto" (the
# trainer's choice: euler for fm, ode otherwise); a test keeps them equal.
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
WANDB_MODES = ("disabled", "offline", "online")
SAMPLERS = ("auto", "ode", "consistency", "euler")

# Sections that are tagged unions: base class → (tag field, tag → variant class).
TAGGED: dict[type, tuple[str, dict[str, type]]] = {ObjectiveOptions: ("name", OPTIONS)}


@dataclass
class ModelConfig:
    name: str = "DiT-T/2"  # a key of alphaflow.models.MODELS
    time_scale: float = 1.0
    decouple_at: int | None = None  # DiT: the first K blocks see t, the rest and the final layer r (Decoupled MeanFlow)
    logvar: bool = False  # DiT: a learned log-variance head lv(r, t) (Decoupled MeanFlow's loss weighting)
    aux_head_depth: int | None = None  # DiT: iMF's velocity head (0: a second final layer; k: its own last k blocks)
    guidance_embed: bool = False  # DiT: iMF's guidance conditioning on (ω, t_min, t_max)
    pos_embed: str = "sincos"  # DiT: "stored" keeps the positional embedding in checkpoints (imported networks)
    attention: str = "auto"  # DiT: the attention tangent by the fused Triton kernel (triton), in math form (math),
    #                          or the kernel on CUDA when Triton is importable (auto): docs/jvp.md
    time_cond: str = "t_and_h"  # DiT: conditioned on t and h = t − r (t_and_h), or on h alone (h, iMF's official net)


@dataclass
class DataConfig:
    name: str = "digits"
    path: str | None = None
    resolution: int = 256
    toy: str = "moons"
    toy_size: int = 8192
    stats_samples: int = 2048  # samples for the latent mean/std (docs/conventions.md#latent-data-and-normalisation)
    workers: int = 0
    vae_path: str | None = None


@dataclass
class OptimConfig:
    """Adam; lr is constant after a linear warm-up of ``warmup_steps``
    (docs/conventions.md#optimiser-ema-and-precision)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 16.0


@dataclass
class EMAConfig:
    """EMA with half-life in steps and ramp-up min(halflife, rampup_ratio·step)
    (docs/conventions.md#optimiser-ema-and-precision; EDM, arXiv 2206.00364)."""

    halflife_steps: float = 500.0
    rampup_ratio: float | None = 0.05


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 48  # global batch, split across ranks
    micro_batch: int = 0  # rows per rank per forward (gradient accumulation); 0: the whole per-rank batch at once
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    log_every: int = 50
    ckpt_every: int = 500  # rolling "latest" checkpoint
    keep_every: int = 0  # permanent checkpoints every k steps (0 = none)
    sample_every: int = 500  # EMA sample grids (0 = only at the end)
    max_nonfinite: int = 20  # stop after this many consecutive non-finite losses
    spike_guard: float = 0.0  # k > 1: skip the update of a step whose gradient norm exceeds k × the median of the
    #                           last 100 finite steps' norms (docs/spikes.md); 0: off
    threads: int | None = None  # torch CPU threads
    compile: bool = False
    async_ckpt: bool = True  # rank 0 writes checkpoints in a background thread from a host snapshot; false: in step
    tf32: bool = True  # CUDA: TF32 tensor cores for the fp32 matmuls and convolutions (sampling, probes, tangents)
    dist_timeout_min: float = 60.0  # process-group timeout; rank 0's in-run evaluation must fit inside it
    init_from: str | None = None  # a run folder (its newest checkpoint) or a checkpoint file: its weights, EMA and
    #                               data statistics start this run, with a fresh optimiser at step 0


@dataclass
class SampleConfig:
    """Sample grids during and after training (docs/conventions.md#samplers)."""

    num: int = 64
    nfe: list[int] = field(default_factory=lambda: [1, 2])
    sampler: str = "auto"  # auto (euler for fm, ode otherwise) | ode | consistency | euler
    t_mid: float = 0.5
    seed: int = 0


@dataclass
class ProbeConfig:
    """Online gradient probes (docs/probes.md#online-probes): every ``every`` steps (a multiple of
    train.log_every; 0 = off), on the step's training batch with a fresh (t, r, ε) holding a ``ratio_fm``
    share of r = t rows."""

    every: int = 0
    online_batches: int = 1  # batches per online probe: the step's own, then fresh ones of its size (mean over them)
    ratio_fm: float = 0.0
    parts: bool = False   # also per DiT block / embedder / final layer
    loss: bool = True     # also the training objective's own loss as a term
    seed: int = 0
    final: bool = False   # at the end, the offline protocol (``alphaflow probe``) on the last checkpoint
    batches: int = 16     # ... with this many fresh batches
    batch_size: int = 64  # ... of this size
    chunk_size: int = 0   # rows per forward/backward chunk of a probe (0: the whole batch); same numbers, less memory


@dataclass
class ConflictConfig:
    """How the gradients of trajectory flow matching and trajectory consistency combine at every step
    (``alphaflow.core.conflict``, docs/conflict.md): ``mode`` none (their sum, the plain gradient), pcgrad,
    project_tcc, balance or cagrad (with radius ``c``); ``per_group``: the rule per DiT block, embedder and
    final layer instead of on the whole vector; ``every``: compute the rule's coefficients every k steps and
    reuse them in between (one backward on those steps; an approximation, whole-vector only)."""

    mode: str = "none"
    c: float = 0.4
    per_group: bool = False
    every: int = 1


@dataclass
class EvalConfig:
    """Sample quality during and after training (docs/official_code.md#evaluation-metrics): the Fréchet
    distance of EMA samples (fixed seeds, ``sample.sampler`` at ``sample.t_mid``) to the training data's
    cached reference statistics.

    Every ``every`` steps (a multiple of train.log_every; 0 = off) ``num_samples`` samples per NFE give
    ``eval_<metric>_nfe<k>`` in that metrics.jsonl row; with ``final`` the run ends by appending
    ``final_samples``-sample rows to eval.jsonl, as ``alphaflow eval`` does. ``metric``: the feature
    extractor (None: the data's default, e.g. the digits classifier on the embedded default).
    """

    every: int = 0
    num_samples: int = 500
    final: bool = False
    final_samples: int = 2000
    nfe: list[int] = field(default_factory=lambda: [1, 2])
    metric: str | None = None
    seed: int = 0
    batch_size: int = 256  # samples generated per batch
    decode_batch_size: int = 32  # latent runs: samples decoded by the VAE at once


@dataclass
class LogConfig:
    """Experiment trackers fed from the metrics rows (docs/trackers.md; ``pip install 'alphaflow[trackers]'``):
    ``tensorboard`` writes event files into RUN_DIR/tensorboard; ``wandb`` is disabled, offline (a run in
    RUN_DIR/wandb, no network; ``wandb sync`` uploads it later) or online, in ``wandb_project`` (and
    ``wandb_entity``). metrics.jsonl stays the source of truth."""

    tensorboard: bool = False
    wandb: str = "disabled"
    wandb_project: str = "alphaflow"
    wandb_entity: str | None = None


@dataclass
class Config:
    """The whole run. ``Config()`` is the embedded default recipe (``recipes/digits.yaml``)."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveOptions = field(default_factory=AlphaFlowOptions)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    conflict: ConflictConfig = field(default_factory=ConflictConfig)
    log: LogConfig = field(default_factory=LogConfig)


