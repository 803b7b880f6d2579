"""``alphaflow report``: registered with the ``alphaflow`` command through the ``alphaflow.commands`` entry point.

Importing this module is cheap (argparse only); pandas and matplotlib load when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_report_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="summary tables (CSV, markdown) and standard figures for a sweep root",
                       description="Reads every run folder under ROOT (a sweep's root, or any folder of runs), "
                                   "groups runs into variants by name and config, and writes headline.md, summary.md, "
                                   "the tables as CSV and the figures into ROOT/report (or --out); prints the "
                                   "headline and any problem found (docs/statistics.md says what each number is).")
    p.add_argument("root", help="folder of run folders (e.g. runs/<sweep name>)")
    p.add_argument("--out", default=None, help="output folder (default: ROOT/report)")
    p.add_argument("--baseline", default=None, metavar="VARIANT",
                   help="the variant every other is compared with, paired by seed (default: the sweep file's "
                        "'baseline:' or first variant, as run.json records it; else the first by name)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    from analysis.records import run_folders

    root = Path(args.root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of runs")
    if not run_folders(root)[0]:
        raise ValueError(f"{root} holds no run folders (a folder with config.json, or sub-folders made by "
                         "`alphaflow train --out` or `alphaflow sweep`)")
    out = write_report(root, args.out, baseline=getattr(args, "baseline", None))
    print((out / "headline.md").read_text())
    problems = (out / "problems.txt").read_text().splitlines() if (out / "problems.txt").exists() else []
    for line in problems:
        print(f"problem: {line}")
    print(f"report written to {out}: summary.md (every table), figures (*.png), tables (*.csv)")
    return 0
