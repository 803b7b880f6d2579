"""The golden sweep of tests/test_analysis_runs.py and its expected aggregates. Not run by the tests.

    python tests/golden/regenerate.py          # rewrite tests/golden/sweep/ and expected_*.csv

Three tiny runs, written as the trainer and launcher write them (configs from ``alphaflow.config``,
names ``<variant>-s<seed>-<config hash>``), with exact binary fractions as values:

    meanflow-fm75-s0-…   done: DONE, 4 metrics rows, 2 probe rows, 1 eval row
    meanflow-fm75-s1-…   incomplete: no DONE, 3 rows and a torn last line
    alphaflow-fm50-s0-…  failed: error.txt (traceback tail) and job.json with state FAILED, 2 rows

Regenerate only when the expected output is meant to change, and read the diff of the CSVs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
SWEEP = HERE / "sweep"
SUMMARY, VARIANTS = HERE / "expected_summary.csv", HERE / "expected_variants.csv"
FLOAT_FORMAT = "%.12g"  # 12 significant digits: exact for the inputs, deaf to last-ulp libm differences

# variant → (overrides, {seed: (loss values, loss_mse values)}); rows are logged every 50 steps, None: key
# left out of that row. s0's loss rises at the end (final ≠ best); s1's last row has no loss_mse.
RUNS = {"meanflow-fm75": (["objective.name=meanflow", "objective.ratio_fm=0.75"],
                          {0: ([1.0, 0.75, 0.5, 0.625], [1.25, 0.875, 0.75, 0.5625]),
                           1: ([1.0, 0.8125, 0.6875], [1.5, 1.0, None])}),
        "alphaflow-fm50": (["objective.name=alphaflow", "objective.ratio_fm=0.5"],
                           {0: ([1.125, 1.0], [1.25, 1.125])})}
ERROR = ('Traceback (most recent call last):\n  File "alphaflow/trainer.py", line 212, in train\n'
         '    loss.backward()\nRuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n')


def _line(row: dict) -> str:
    return json.dumps(row) + "\n"


def write_sweep(root: Path) -> None:
    """Write the three run folders under ``root`` (replacing it)."""
    sys.path.insert(0, str(HERE.parents[1]))
    from alphaflow.config import config_hash, load_config, to_dict

    shutil.rmtree(root, ignore_errors=True)
    for variant, (overrides, seeds) in RUNS.items():
        for seed, (loss, mse) in seeds.items():
            cfg = load_config(None, overrides + [f"seed={seed}", "train.steps=200"])
            run = root / f"{variant}-s{seed}-{config_hash(cfg)}"
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
            rows = [{"step": 50 * (k + 1), "lr": 0.001, "loss": a, "loss_mse": b}
                    for k, (a, b) in enumerate(zip(loss, mse))]
            text = "".join(_line({k: v for k, v in r.items() if v is not None}) for r in rows)
            if variant == "meanflow-fm75" and seed == 0:
                (run / "DONE").write_text(_line({"step": 200, "images": 9600, "final_loss": 0.625}))
                probes = [{"step": s, "weights": "raw", "batches": 2, "batch_size": 8, "seed": 0,
                           "cos_tfm_tcc": c, "loss_tfm": 0.5} for s, c in ((100, -0.5), (200, -0.25))]
                (run / "probes.jsonl").write_text("".join(_line(p) for p in probes))
                (run / "eval.jsonl").write_text(_line({"step": 200, "nfe": 1, "fid": 12.5}))
            if variant == "meanflow-fm75" and seed == 1:
                text += '{"step": 200, "lr": 0.001, "loss": 0.6'  # the process died mid-write
            if variant == "alphaflow-fm50":
                (run / "error.txt").write_text(ERROR)
                (run / "job.json").write_text(json.dumps({"job_id": "4242", "executor": "slurm",
                                                          "submitted": "2026-11-26T10:00:00+00:00",
                                                          "state": "FAILED"}) + "\n")
            (run / "metrics.jsonl").write_text(text)


def expected(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(run summary, variant summary) of the sweep at ``root``, as the golden test computes them."""
    from analysis.loading import load_runs
    from analysis.summary import summarize_runs, summarize_variants

    summary = summarize_runs(load_runs(root, cache=False), metrics=("loss", "loss_mse"))
    return summary, summarize_variants(summary, ["final_loss_mse", "best_loss_mse", "final_loss"])


def to_csv(frame: pd.DataFrame) -> str:
    """The exact text a golden CSV holds."""
    return frame.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    write_sweep(SWEEP)
    summary, variants = expected(SWEEP)
    SUMMARY.write_text(to_csv(summary))
    VARIANTS.write_text(to_csv(variants))
    print(f"wrote {SWEEP} and {SUMMARY.name}, {VARIANTS.name}")


if __name__ == "__main__":
    main()
