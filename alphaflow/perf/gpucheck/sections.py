"""Every section of ``alphaflow doctor`` by name (imports torch); ``alphaflow.perf.gpucheck`` runs them."""

from __future__ import annotations

from typing import Callable

from alphaflow.perf.gpucheck.memory import compile_check, ddp, memory, probe
from alphaflow.perf.gpucheck.settings import Settings
from alphaflow.perf.gpucheck.speed import attention, bench, environment, train

SECTION_FUNCTIONS: dict[str, Callable[[Settings, dict], None]] = {
    "environment": environment, "bench": bench, "train": train, "attention": attention, "probe": probe,
    "compile": compile_check, "memory": memory, "ddp": ddp,
}
