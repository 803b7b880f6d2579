"""Execute the notebooks on their sweeps' runs and write them back with their outputs (`make notebooks`).

    python scripts/run_notebooks.py [NAME ...]      # default: every notebooks/0*.ipynb

Each notebook reads the sweep root it was written for, the one its first cell names: 01–03 the demo's
(`make demo` → runs/demo), 04 sweeps/conflict.yaml's (runs/conflict), 05 sweeps/family.yaml's (runs/family).
A root that is not there falls back to runs/demo, said on stdout; the notebook then prints what is missing.
ALPHAFLOW_SWEEP_ROOT, when set, is used for every notebook. The committed .ipynb files are what this writes;
the .py halves of the jupytext pairs hold no outputs and do not change.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
DEMO = "runs/demo"
ROOTS = {"04_conflict_interventions": "runs/conflict", "05_family": "runs/family"}  # the others: the demo's


def root_for(name: str) -> str:
    """The sweep root notebook ``name`` reads (relative to the repository root)."""
    if os.environ.get("ALPHAFLOW_SWEEP_ROOT"):
        return os.environ["ALPHAFLOW_SWEEP_ROOT"]
    root = ROOTS.get(name, DEMO)
    if not (REPO / root).is_dir():
        print(f"{name}: {root} is not there; reading {DEMO} instead")
        return DEMO
    return root


def execute(name: str) -> None:
    """Run ``notebooks/<name>.ipynb`` top to bottom in a fresh kernel and save it with its outputs."""
    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.exists():
        sys.exit(f"run_notebooks: no notebook {path.relative_to(REPO)}")
    root = root_for(name)
    if not (REPO / root).is_dir():
        sys.exit(f"run_notebooks: {root} does not exist; run `make demo` first")
    nb = nbformat.read(path, as_version=4)
    os.environ["ALPHAFLOW_SWEEP_ROOT"] = root
    start = time.perf_counter()
    client = NotebookClient(nb, kernel_name="python3", timeout=600, record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, naming the cell, if one fails
    nbformat.write(nb, path)
    size = path.stat().st_size / 2**20
    print(f"{name}: executed on {root} in {time.perf_counter() - start:.0f} s, {size:.1f} MiB written")


def main(names: list[str]) -> int:
    chosen = names or sorted(p.stem for p in NOTEBOOKS.glob("0*.ipynb"))
    saved = os.environ.get("ALPHAFLOW_SWEEP_ROOT")
    for name in chosen:
        try:
            execute(name)
        finally:
            if saved is None:
                os.environ.pop("ALPHAFLOW_SWEEP_ROOT", None)
            else:
                os.environ["ALPHAFLOW_SWEEP_ROOT"] = saved
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
