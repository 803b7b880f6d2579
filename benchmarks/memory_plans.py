"""The memory plan (alphaflow.perf.memplan) of every committed ImageNet recipe and of every run of the sweeps in
sweeps/imagenet/, at the world size their resources give (nodes × tasks_per_node). Not a test.

    python benchmarks/memory_plans.py [--limit-gb 80]

Runs with the same memory-relevant settings share one plan (the sweeps vary schedules and seeds, which change
no shape). Prints one table per distinct plan and exits 1 if any phase does not fit.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from alphaflow.config import load_config
from alphaflow.perf.memplan import plan_memory
from alphaflow.launch.sweeps import load_sweep

ROOT = Path(__file__).resolve().parents[1]


def memory_key(cfg, world: int) -> tuple:
    """What decides the plan: shapes, batches, chunking, guidance (extra passes), the objective's family."""
    o = cfg.objective
    return (cfg.model.name, cfg.data.name, cfg.data.resolution, cfg.train.batch_size, world, cfg.train.precision,
            o.name, o.guidance.guides, cfg.probe.batch_size, cfg.probe.chunk_size,
            cfg.probe.parts, cfg.eval.batch_size, cfg.eval.decode_batch_size, max(cfg.eval.nfe))


def targets() -> list[tuple[str, object, int]]:
    out = [(f"recipe {p.stem}", load_config(p.stem), 8) for p in sorted((ROOT / "alphaflow/recipes").glob("imagenet-*.yaml"))]
    for path in sorted((ROOT / "sweeps/imagenet").glob("*.yaml")):
        sweep = load_sweep(path)
        world = int(sweep.resources.get("nodes", 1)) * int(sweep.resources.get("tasks_per_node", 1))
        out += [(f"{path.name}: {r.name}", r.config, world) for r in sweep.runs]
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit-gb", type=float, default=80.0)
    args = parser.parse_args()
    groups: dict[tuple, list] = {}
    for label, cfg, world in targets():
        groups.setdefault(memory_key(cfg, world), []).append((label, cfg, world))
    ok = True
    for members in groups.values():
        _, cfg, world = members[0]
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = plan_memory(cfg, world_size=world)
        ok &= plan.fits(args.limit_gb * 1e9)
        print(f"\n## {cfg.model.name}, {cfg.objective.name}, {len(members)} config(s): "
              + "; ".join(label for label, _, _ in members) + f"   ({time.perf_counter() - start:.0f} s)")
        print(plan.table(args.limit_gb))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
