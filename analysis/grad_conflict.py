"""The gradient-conflict report of a sweep root: Figures 2a/2b/2c and 6 plus the summary table.

    python -m analysis.grad_conflict runs/grad_conflict [--out runs/grad_conflict/report] [--weights raw]

Reads every run's probes.jsonl (written by ``alphaflow probe``); writes fig2a.png, fig2b.png,
fig2c.png, fig6.png and conflict.md into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .plots import save_figures
from .probe_frames import load_probes, markdown_table, summarize_conflict


def report(root: str | Path, out: str | Path | None = None, *, weights: str = "raw") -> Path:
    """Write the figures and ``conflict.md`` for ``root``; returns the output folder."""
    out = Path(out) if out is not None else Path(root) / "report"
    df = load_probes(root, weights=weights)
    if df.empty:
        raise ValueError(f"no {weights} probe rows under {root}: run `alphaflow probe RUN_DIR` on its runs first")
    save_figures(df, out)
    table = markdown_table(summarize_conflict(df))
    problems = "".join(f"\n- {p}" for p in df.attrs.get("problems", []))
    (out / "conflict.md").write_text(f"# Gradient conflict ({weights} weights)\n\n{table}\n"
                                     + (f"\nProblems:{problems}\n" if problems else ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--out", default=None)
    parser.add_argument("--weights", choices=("raw", "ema"), default="raw")
    args = parser.parse_args()
    out = report(args.root, args.out, weights=args.weights)
    print((out / "conflict.md").read_text())
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
