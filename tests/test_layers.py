"""The import layers of STYLE.md, checked by parsing imports (no module is executed)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): imports_of(p) for p in sorted((ROOT / package).rglob("*.py"))}


def offenders(files: dict[str, set[str]], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{f} imports {m}" for f, names in files.items() for m in sorted(names)
            if any(m == b or m.startswith(b + ".") for b in forbidden)]


def test_objectives_never_import_models():
    assert offenders(modules("alphaflow/objectives"), ("alphaflow.models",)) == []


def test_models_know_nothing_of_objectives_or_sampling():
    bad = offenders(modules("alphaflow/models"), ("alphaflow.objectives", "alphaflow.sampling", "alphaflow.jvp"))
    assert bad == []


def test_lowest_layer_imports_only_the_lowest_layer():
    low = {f: n for f, n in modules("alphaflow").items()
           if Path(f).stem in ("conventions", "schedules", "timesteps")}
    assert len(low) == 3
    allowed = {"alphaflow.conventions"}
    bad = [f"{f} imports {m}" for f, names in low.items() for m in names if m.startswith("alphaflow") and m not in allowed]
    assert bad == []


def test_plotting_and_pandas_only_in_analysis_submitit_only_in_launcher():
    lib = modules("alphaflow")
    assert offenders(lib, ("pandas", "matplotlib", "seaborn")) == []
    not_launcher = {f: n for f, n in lib.items() if "launch" not in Path(f).stem}
    assert offenders(not_launcher, ("submitit",)) == []
    assert lib, "found no library files: the test would check nothing"
