"""The settings of ``alphaflow doctor``: the sections, their time limits, the two modes (GPU, CPU rehearsal), ``Skip``.

Standard library only: ``scripts/gpu_check.sh`` asks ``--list`` for the sections and their limits before any
section imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Report order = run order: the most valuable numbers first. ``plans`` is the background section: CPU-only
# (fake tensors), started first beside the others, so its FLOP counts and memory plans cost no GPU time.
SECTIONS = ("environment", "trainer", "plans", "ratios", "kernel", "tangent", "xl128", "precision", "compile", "ddp")
BACKGROUND = ("plans",)
FOREGROUND = tuple(s for s in SECTIONS if s not in BACKGROUND)
STATUSES = ("ok", "fail", "skipped")
H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM (and an H200): the MFU denominator
RATIO_GOALS = {"mf_p100": 1.45, "mf_p25": 1.15}  # a MeanFlow step against a flow-matching step, time ratio
MFU_GOAL = 0.40  # a DiT-B/2 step at >= 40 % of the bf16 peak


class Skip(Exception):
    """Raised by a section (or one of its measurements) that cannot run here; the message is the reason recorded."""


@dataclass(frozen=True)
class TrainerRun:
    """One run of the real trainer (``alphaflow.train.loop.train``) on made-up latents.

    ``recipe``: the ImageNet recipe whose objective, guidance and optimiser it keeps; ``alpha``: a constant α
    (None: the recipe's objective as it is, e.g. flow matching); ``stop_at``: stop there with a checkpoint, then
    resume to ``steps`` (the checkpoint-and-resume check); ``micro_batch``: ``train.micro_batch`` (0: off);
    ``need_s``: the seconds it needs here, so a run that no longer fits the section's time is skipped."""

    key: str
    recipe: str
    model: str
    batch: int
    steps: int
    alpha: float | None = None
    stop_at: int | None = None
    micro_batch: int = 0
    need_s: float = 20.0
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Shapes, lengths and time limits of one mode. The GPU mode is sized for one 80 GB H100 (an H200 has more)."""

    mode: str                                   # "gpu" | "cpu-rehearsal"
    device: str                                 # "cuda" | "cpu"
    resolution: int                             # image resolution of the made-up latents (latent grid res/8)
    classes: int
    budget_s: int                               # the whole check's default budget (scripts/gpu_check.sh)
    limits: dict[str, tuple[int, int]]          # section → (limit s, least s worth starting it with)
    matmul_size: int                            # n of the n×n×n bf16 matmul in ``environment``
    copy_mib: int                               # MiB copied device to device in ``environment``
    log_every: int                              # the trainer runs' metrics tick
    trainer_runs: tuple[TrainerRun, ...]
    xl128: TrainerRun
    ratios_model: str
    ratios_batch: int
    ratios_rounds: int
    ratios_warmup: int
    ratio_groups: tuple[tuple[str, ...], ...]   # bench calls, each with fm (one failing keeps the others)
    kernel_shapes: tuple[tuple[str, int, int, int], ...]  # (name, G, N, d)
    kernel_blocks: tuple[int | None, int | None]  # (block_m, block_n): None = the kernel's own tiles
    kernel_reps: int
    tangent_models: tuple[tuple[str, int], ...]  # (model, batch)
    precision_model: str
    precision_batch: int
    precision_steps: int
    precision_objectives: tuple[tuple[str, tuple[str, ...]], ...]  # (name, objective overrides)
    plan_keys: tuple[str, ...] | None           # runs whose FLOPs and memory plan ``plans`` computes (None: all)
    plan_memory_micro: bool                     # also ``alphaflow plan`` of micro-batched runs (XL/2 x 128: minutes)
    compile_runs: tuple[str, ...]               # keys of ``trainer_runs`` to run again with train.compile=true
    compile_steps: int
    compile_backend: str | None                 # None: torch.compile's default (inductor); rehearsal: aot_eager
    ddp_model: str
    ddp_steps: int
    ddp_batch: int
    extra_overrides: tuple[str, ...] = field(default=())  # added to every trainer config of the mode

    @property
    def shape(self) -> tuple[int, int, int]:
        """The latent sample shape C, H, W (SD-VAE: 4 × res/8 × res/8)."""
        return (4, self.resolution // 8, self.resolution // 8)

    @property
    def bf16(self) -> bool:
        """bf16 autocast where the trainer's ``precision=auto`` uses it (CUDA)."""
        return self.device == "cuda"


_B2_CFG, _XL2_CFG, _FM_B2 = "imagenet-b2-cfg", "imagenet-xl2-cfg", "imagenet-fm-b2"
_GPU_LIMITS = {"environment": (60, 20), "trainer": (160, 40), "plans": (420, 30), "ratios": (60, 25),
               "kernel": (50, 20), "tangent": (50, 20), "xl128": (75, 35), "precision": (60, 25),
               "compile": (240, 60), "ddp": (120, 15)}
GPU = Settings(
    mode="gpu", device="cuda", resolution=256, classes=1000, budget_s=450, limits=_GPU_LIMITS,
    matmul_size=8192, copy_mib=1024, log_every=10,
    trainer_runs=(
        # the recipe's per-GPU batch (256 over 8 GPUs), guidance as the recipe; α = 1 is the first phase of the
        # curriculum (no extra forward), α = 0 its end (MeanFlow's tangent). The first also checks a resume.
        TrainerRun("b2_cfg_a1", _B2_CFG, "DiT-B/2", 32, 45, alpha=1.0, stop_at=40, need_s=25),
        TrainerRun("b2_cfg_a0", _B2_CFG, "DiT-B/2", 32, 40, alpha=0.0, need_s=18),
        TrainerRun("xl2_cfg_a0", _XL2_CFG, "DiT-XL/2", 32, 30, alpha=0.0, need_s=45),
        TrainerRun("b2_fm_256", _FM_B2, "DiT-B/2", 256, 30, need_s=25),
    ),
    xl128=TrainerRun("xl2_cfg_128", _XL2_CFG, "DiT-XL/2", 128, 10, alpha=0.0, micro_batch=32, need_s=40),
    ratios_model="DiT-B/2", ratios_batch=32, ratios_rounds=6, ratios_warmup=2,
    ratio_groups=(("fm", "mf_p100", "mf_p25", "alpha_mid"), ("fm", "official_p100"), ("fm", "probe")),
    kernel_shapes=(("B/2", 32 * 12, 256, 64), ("XL/2", 32 * 16, 256, 72)), kernel_blocks=(None, None),
    kernel_reps=20,
    tangent_models=(("DiT-B/2", 4), ("DiT-XL/2", 2)),
    precision_model="DiT-B/2", precision_batch=32, precision_steps=50,
    precision_objectives=(("alphaflow_a0", ("objective.name=alphaflow", "objective.alpha=0")),
                          ("alphaflow_a05", ("objective.name=alphaflow", "objective.alpha=0.5")),
                          ("meanflow", ("objective.name=meanflow",))),
    plan_keys=None, plan_memory_micro=False,
    compile_runs=("b2_cfg_a1", "b2_cfg_a0"), compile_steps=40, compile_backend=None,
    ddp_model="DiT-T/2", ddp_steps=100, ddp_batch=64,
)

# Everything at the smallest size, on the CPU: the same code paths, for CI (the whole script in ~2 minutes on 2 cores).
_CPU_LIMITS = {**{name: (90, 5) for name in SECTIONS}, "plans": (150, 5)}
CPU_REHEARSAL = Settings(
    mode="cpu-rehearsal", device="cpu", resolution=64, classes=10, budget_s=420, limits=_CPU_LIMITS,
    matmul_size=256, copy_mib=16, log_every=4,
    trainer_runs=(
        TrainerRun("b2_cfg_a1", _B2_CFG, "DiT-N/2", 8, 14, alpha=1.0, stop_at=12, need_s=2),
        TrainerRun("b2_cfg_a0", _B2_CFG, "DiT-N/2", 8, 12, alpha=0.0, need_s=2),
        TrainerRun("xl2_cfg_a0", _XL2_CFG, "DiT-N/2", 8, 12, alpha=0.0, need_s=2),
        TrainerRun("b2_fm_256", _FM_B2, "DiT-N/2", 16, 12, need_s=2),
    ),
    xl128=TrainerRun("xl2_cfg_128", _XL2_CFG, "DiT-N/2", 16, 8, alpha=0.0, micro_batch=4, need_s=2),
    ratios_model="DiT-N/2", ratios_batch=4, ratios_rounds=1, ratios_warmup=1,
    ratio_groups=(("fm", "mf_p100"), ("fm", "official_p100")),
    kernel_shapes=(("B/2", 2 * 2, 16, 32), ("XL/2", 2 * 2, 16, 72)), kernel_blocks=(16, 16), kernel_reps=1,
    tangent_models=(("DiT-N/2", 2),),
    precision_model="DiT-N/2", precision_batch=4, precision_steps=3,
    precision_objectives=(("alphaflow_a0", ("objective.name=alphaflow", "objective.alpha=0")),),
    plan_keys=("b2_cfg_a1", "xl2_cfg_128"), plan_memory_micro=True,
    compile_runs=("b2_cfg_a1",), compile_steps=8, compile_backend="aot_eager",
    ddp_model="DiT-N/2", ddp_steps=4, ddp_batch=8,
    extra_overrides=("train.threads=1",),
)
MODES = {"gpu": GPU, "cpu-rehearsal": CPU_REHEARSAL}
