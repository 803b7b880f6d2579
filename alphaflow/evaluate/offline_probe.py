"""``alphaflow probe RUN_DIR``: the paper's gradient-analysis protocol on saved checkpoints
(arXiv 2510.20771 §3.2 and Appendix E; docs/probes.md#offline-probes, docs/probes.md#choices-the-paper-leaves-open).

For each chosen checkpoint, N fresh batches of B samples with (t, r) from the run's logit-normal
min–max rule and r < t on every row (L_TCC vanishes at r = t); on each batch the probe of
``alphaflow.train.probes``; then per quantity the mean and the 5 % / 95 % percentiles over the batches,
one row per checkpoint in ``RUN_DIR/probes.jsonl``. Every checkpoint sees the same batches (the
generator is reseeded), so curves over training compare like with like. Rows already present
for the same settings are kept and skipped, so re-running after more training only adds rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alphaflow.train.build import open_run
from alphaflow.objectives import objective_from_options
from alphaflow.train.distributed import resolve_device, set_tf32
from alphaflow.train.probes import probe_gradients, probe_sample
from alphaflow.run.checkpoints import load_weights, select_checkpoints

SETTINGS = ("weights", "batches", "batch_size", "seed", "parts")  # chunk_size is not one: it changes no number


def summarize(values: list[dict[str, float]]) -> dict[str, float]:
    """Mean and 5 %/95 % percentiles of each key over the batches (NaN-aware)."""
    out: dict[str, float] = {}
    for key in values[0]:
        v = np.array([row[key] for row in values], dtype=np.float64)
        finite = v[np.isfinite(v)]
        mean, p05, p95 = ((float(finite.mean()), *map(float, np.percentile(finite, [5, 95]))) if finite.size
                          else (float("nan"),) * 3)
        out.update({key: mean, f"{key}_p05": p05, f"{key}_p95": p95})
    return out


def probe_run(run_dir: str | Path, *, batches: int | None = None, batch_size: int | None = None,
              checkpoints: str = "all", weights: str = "raw", parts: bool | None = None, seed: int | None = None,
              device: str = "auto", chunk_size: int | None = None, log: Callable[[str], None] = print) -> Path:
    """Probe the chosen checkpoints of a run folder; returns the path of its probes.jsonl.

    ``batches``, ``batch_size``, ``parts``, ``seed``, ``chunk_size``: None takes the run's ``probe.*`` value.
    ``chunk_size``: rows per forward/backward chunk of each probe batch (0: whole batches); the numbers do
    not depend on it, only the memory does.
    """
    if weights not in ("raw", "ema"):
        raise ValueError(f"--weights must be raw or ema, got {weights!r}")
    dev = resolve_device(device)
    run, cfg, data, net = open_run(run_dir, dev)
    p = cfg.probe
    batches, batch_size = (p.batches if batches is None else batches), (p.batch_size if batch_size is None else batch_size)
    parts, seed = (p.parts if parts is None else parts), (p.seed if seed is None else seed)
    chunk_size = p.chunk_size if chunk_size is None else chunk_size
    if batches < 1 or batch_size < 1:
        raise ValueError(f"--batches and --batch-size must be >= 1, got {batches} and {batch_size}")
    if chunk_size < 0:
        raise ValueError(f"--chunk-size must be >= 0 (0: whole batches), got {chunk_size}")
    set_tf32(cfg.train.tf32, dev)
    if batch_size > len(data):
        raise ValueError(f"--batch-size {batch_size} exceeds the dataset size ({len(data)})")
    objective = objective_from_options(cfg.objective, cfg.train.steps)
    settings = {"weights": weights, "batches": batches, "batch_size": batch_size, "seed": seed, "parts": parts}
    done = {r["step"] for r in run.read_probes() if all(r.get(k) == v for k, v in settings.items())}
    for step, path in select_checkpoints(run, checkpoints, "probe"):
        if step in done:
            log(f"step {step}: already probed with these settings, skipped")
            continue
        start = time.perf_counter()
        state, stats = load_weights(path, weights)
        net.load_state_dict(state)  # copies onto the device; the host copy is freed below
        data.load_state_dict(stats)
        del state
        gen = torch.Generator(device=dev).manual_seed(seed)
        cpu_gen = torch.Generator().manual_seed(seed)
        rows = []
        for _ in range(batches):
            raw, labels = data.get(torch.randperm(len(data), generator=cpu_gen)[:batch_size])
            x = data.prepare(raw.to(dev), gen)
            y = labels.to(dev) if data.num_classes > 0 else None
            sample = probe_sample(x, y, objective, generator=gen)
            rows.append(probe_gradients(net, x, sample, guidance=objective.guidance, training=objective, step=step, parts=parts,
                                        chunk_size=chunk_size))
        run.append_probes({"step": step, **settings, **summarize(rows)})
        log(f"step {step}: cos(TFM, TCC) {np.mean([r['cos_tfm_tcc'] for r in rows]):+.3f}  "
            f"cos(FM', TCC) {np.mean([r['cos_fmb_tcc'] for r in rows]):+.3f}  ({time.perf_counter() - start:.1f} s)")
    return run.probes_path
