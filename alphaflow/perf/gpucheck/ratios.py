"""Section ``ratios`` of ``alphaflow doctor``: each objective's trainer step against flow matching's (``run_bench``)."""

from __future__ import annotations

from typing import Any

import torch

from alphaflow.perf.gpucheck.helpers import cleanup, device_of, reference_peak
from alphaflow.perf.gpucheck.live import Results, attempt
from alphaflow.perf.gpucheck.settings import H100_BF16_PEAK, RATIO_GOALS, Settings


def _bench(s: Settings, variants: tuple[str, ...], peak: float) -> dict[str, Any]:
    from alphaflow.perf.bench import run_bench

    res = run_bench(s.ratios_model, batch=s.ratios_batch, shape=s.shape, classes=s.classes, device=s.device,
                    precision="bf16" if s.bf16 else "fp32", rounds=s.ratios_rounds, warmup=s.ratios_warmup,
                    peak_flops=peak, seed=0, variants=variants)
    meta = res.pop("meta")
    return {"variants": res, "precision": meta["precision"], "rounds": meta["rounds"]}


def ratios(s: Settings, out: Results) -> None:
    """``alphaflow.perf.bench.run_bench`` at DiT-B/2 × 32 (the recipe's per-GPU batch), in groups that each hold
    fm, so one failing variant (e.g. the official pattern out of memory) keeps the other groups: per variant ms,
    images/s, MFU (FLOPs counted by torch), peak memory and the time ratio to fm measured in its own group's
    round-robin. Then the goals: MeanFlow at p = 1 (mf_p100) within 1.45× of fm, at p = 0.25 (mf_p25) 1.15×."""
    dev = device_of(s)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    peak = reference_peak(name) or H100_BF16_PEAK
    out.update(model=s.ratios_model, batch=s.ratios_batch, peak_flops=peak)
    out["groups"] = {}
    for variants in s.ratio_groups:
        key = "+".join(v for v in variants if v != "fm")
        attempt(out["groups"], key, lambda: _bench(s, variants, peak), cleanup=lambda: cleanup(s))
        out.flush()
    table: dict[str, dict[str, Any]] = {}
    for key, group in out["groups"].items():
        for variant, row in (group.get("variants") or {}).items():
            if variant == "fm" and "fm" in table:
                continue  # the first group's fm is the reference row
            table[variant] = {k: row.get(k) for k in ("ms", "ratio", "images_per_s", "mfu", "flops", "flops_ratio",
                                                      "peak_mem_bytes", "peak_mem_total_bytes") if k in row}
            table[variant]["group"] = key
    out["table"] = table
    out["goals"] = [{"variant": v, "goal": bound, "ratio": table.get(v, {}).get("ratio"),
                     "met": None if table.get(v, {}).get("ratio") is None else table[v]["ratio"] <= bound}
                    for v, bound in RATIO_GOALS.items()]
    for key, group in out["groups"].items():
        if group.get("status") == "fail":
            out.failures.append(f"{key}: {group.get('error')}")
