"""The settings of ``alphaflow doctor``: the sections, the two modes (GPU, CPU rehearsal) and ``Skip``."""

from __future__ import annotations

from dataclasses import dataclass

SECTIONS = ("environment", "bench", "train", "attention", "probe", "compile", "memory", "ddp")
STATUSES = ("ok", "fail", "skipped")


class Skip(Exception):
    """Raised by a section that cannot run on this machine; the message is the reason recorded."""


@dataclass(frozen=True)
class Settings:
    """Shapes and lengths of one mode. The GPU mode is sized for one 80 GB H100 (an H200 has more)."""

    mode: str                                   # "gpu" | "cpu-rehearsal"
    device: str                                 # "cuda" | "cpu"
    model: str                                  # the model of train / attention / probe / compile / memory
    shape: tuple[int, int, int]                 # latent sample shape C, H, W
    classes: int
    bf16: bool                                  # bf16 autocast where training would use it
    bench: tuple[tuple[str, int], ...]          # (model, batch) pairs for ``alphaflow bench``
    bench_rounds: int
    bench_warmup: int
    matmul_size: int                            # n of the n×n×n bf16 matmul in ``environment``
    train_steps: int
    train_batch: int
    attention_batch: int
    probe_batch: int
    compile_steps: int
    compile_batch: int
    compile_backend: str                        # inductor on the GPU; aot_eager on the CPU (no C++ build)
    memory_batch: int
    ddp_model: str
    ddp_steps: int
    ddp_batch: int


GPU = Settings(mode="gpu", device="cuda", model="DiT-B/2", shape=(4, 32, 32), classes=1000, bf16=True,
               # B/2 at 256 is the reference batch; XL/2 at 64 keeps its probe variant well inside 80 GB
               bench=(("DiT-B/2", 256), ("DiT-XL/2", 64)), bench_rounds=5, bench_warmup=2, matmul_size=8192,
               train_steps=50, train_batch=64, attention_batch=4, probe_batch=64, compile_steps=8,
               compile_batch=64, compile_backend="inductor", memory_batch=32, ddp_model="DiT-T/2",
               ddp_steps=100, ddp_batch=64)
CPU_REHEARSAL = Settings(mode="cpu-rehearsal", device="cpu", model="DiT-N/2", shape=(4, 8, 8), classes=10, bf16=True,
                         bench=(("DiT-N/2", 4),), bench_rounds=1, bench_warmup=1, matmul_size=256,
                         train_steps=4, train_batch=4, attention_batch=2, probe_batch=4, compile_steps=3,
                         compile_batch=4, compile_backend="aot_eager", memory_batch=4, ddp_model="DiT-N/2",
                         ddp_steps=4, ddp_batch=8)
MODES = {"gpu": GPU, "cpu-rehearsal": CPU_REHEARSAL}
