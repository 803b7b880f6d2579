"""Time ``analysis.load_runs`` on a synthetic sweep root: cold (no cache) and warm (cached) loads.

    python benchmarks/load_runs.py                      # 1,000 runs × 1,000 logged steps
    python benchmarks/load_runs.py --runs 100 --steps 200 --keep /tmp/bench-root

Writes a root in a temporary folder: real configs (``alphaflow.config``) named like a sweep
(``<variant>-s<seed>-<hash>``) with the run.json a sweep writes, metrics.jsonl rows shaped like the
trainer's (~20 keys: step, images, wall, lr, alpha, ratio_fm, grad_norm, loss_*, probe_* every 4th
row), DONE on most runs; the files through ``alphaflow.run.folder``.
Prints the times; not a test. The target: a warm load of 1,000 × 1,000 under 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from alphaflow.config import config_hash, load_config, to_dict  # noqa: E402
from alphaflow.run.folder import RunFolder  # noqa: E402

VARIANTS = {"meanflow-fm0": ["objective.name=meanflow", "objective.ratio_fm=0.0"],
            "meanflow-fm75": ["objective.name=meanflow", "objective.ratio_fm=0.75"],
            "alphaflow-sigmoid": ["objective.name=alphaflow", "objective.ratio_fm=0.5"],
            "fm": ["objective.name=fm"]}


def metrics_row(step: int, rng: random.Random) -> dict:
    loss = 1.0 / (1 + step / 500) + rng.random() * 0.01
    row = {"step": step, "images": step * 48, "wall": step * 0.12, "lr": 1e-3, "alpha": max(0.0, 1 - step / 1e5),
           "ratio_fm": 0.5, "grad_norm": 1.5 + rng.random(), "loss": loss, "loss_mse": loss * 1.1,
           "loss_tcc": rng.random() * 0.01, "loss_tfm": loss * 0.9, "loss_mf": loss, "nonfinite": 0,
           "images_per_sec": 350 + rng.random()}
    if step % 200 == 0:  # online probes land on some rows only
        row.update({f"probe_{k}": rng.uniform(-1, 1) for k in ("cos_tfm_tcc", "cos_fmb_tcc", "gradnorm_tfm",
                                                               "gradnorm_tcc", "loss_tfm", "loss_tcc")})
    return row


def make_root(root: Path, runs: int, steps: int, seed: int = 0) -> int:
    """Write ``runs`` run folders with ``steps`` metrics rows each; returns the bytes written."""
    rng, total = random.Random(seed), 0
    names = list(VARIANTS)
    for i in range(runs):
        variant, s = names[i % len(names)], i // len(names)
        cfg = load_config(None, VARIANTS[variant] + [f"seed={s}", f"train.steps={steps * 50}"])
        run = RunFolder(root / f"{variant}-s{s}-{config_hash(cfg)}")
        run.write_config(to_dict(cfg))
        run.write_info(sweep="bench", variant=variant, seed=s, config_hash=config_hash(cfg))
        text = "".join(json.dumps(metrics_row(50 * (k + 1), rng)) + "\n" for k in range(steps))
        run.metrics_path.write_text(text)
        if i % 10:
            run.mark_done({"step": steps * 50})
        total += len(text)
    return total


def timed(root: Path, *, cache: bool) -> tuple[float, object]:
    from analysis.loading import load_runs

    t0 = time.perf_counter()
    runs = load_runs(root, cache=cache)
    return time.perf_counter() - t0, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--keep", default=None, help="write the root here and keep it (default: a temp folder)")
    args = parser.parse_args()
    timed(Path(tempfile.gettempdir()) / "no-such-root", cache=False)  # imports (torch, pandas, pyarrow) off the clock

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="load-runs-"))
    root = base / "root"
    try:
        t0 = time.perf_counter()
        size = make_root(root, args.runs, args.steps)
        print(f"wrote {args.runs} runs × {args.steps} steps ({size / 1e6:.0f} MB of metrics.jsonl) "
              f"in {time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPU(s)")
        t, runs = timed(root, cache=False)
        print(f"no cache        {t:6.2f} s   metrics {runs.metrics.shape}, "
              f"{runs.metrics.memory_usage(deep=False).sum() / 1e6:.0f} MB")
        t, _ = timed(root, cache=True)
        print(f"cold (builds)   {t:6.2f} s")
        for k in range(2):
            t, runs = timed(root, cache=True)
            print(f"warm #{k + 1}         {t:6.2f} s")
        touched = sorted(root.iterdir())[: max(1, args.runs // 100)]
        for folder in touched:  # an active sweep: 1 % of the runs logged another row
            with open(RunFolder(folder).metrics_path, "a") as f:
                f.write(json.dumps(metrics_row(50 * (args.steps + 1), random.Random(1))) + "\n")
        t, runs = timed(root, cache=True)
        print(f"warm, {len(touched)} changed {t:6.2f} s   statuses {runs.runs['status'].value_counts().to_dict()}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
