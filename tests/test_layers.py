"""The import layers of the package, checked by parsing imports (no module is executed).

From the bottom: conventions, schedules, timesteps, jvp, amp → models, objectives, data, metrics → config →
build, sampling, runfolder, instrument → train → evaluate → perf, launch → cli. ``analysis`` sits above the
library, reads run folders, and is never imported by ``alphaflow``. Every import counts, including
imports inside functions, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file; ``from a import b`` also yields ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): imports_of(p) for p in sorted((ROOT / package).rglob("*.py"))}


def offenders(files: dict[str, set[str]], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{f} imports {m}" for f, names in files.items() for m in sorted(names)
            if any(m == b or m.startswith(b + ".") for b in forbidden)]


def import_graph(package: str = "alphaflow") -> dict[str, set[str]]:
    """module → the package's modules it imports (package ``__init__`` files are modules too)."""
    paths = sorted((ROOT / package).rglob("*.py"))
    names = {module_name(p) for p in paths}
    return {module_name(p): {m for m in imports_of(p) if m in names and m != module_name(p)} for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def depth(graph: dict[str, set[str]]) -> int:
    """The longest chain of imports, counted in modules (the graph must have no cycle)."""
    memo: dict[str, int] = {}

    def d(node: str) -> int:
        if node not in memo:
            memo[node] = 1 + max((d(n) for n in graph[node]), default=0)
        return memo[node]

    return max(d(n) for n in graph)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40, "found too few modules: the test would check nothing"
    assert find_cycle(graph) is None, f"import cycle: {' → '.join(find_cycle(graph) or [])}"


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert depth({"a": {"b"}, "b": {"c"}, "c": set()}) == 3


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the units of the layout: a top-level module or a subpackage of ``alphaflow``."""
    unit = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    out: dict[str, set[str]] = {unit(m): set() for m in graph}
    for m, deps in graph.items():
        out[unit(m)] |= {unit(d) for d in deps if unit(d) != unit(m)}
    return out


def test_the_import_graph_stays_shallow():
    graph = import_graph()
    assert find_cycle(package_graph(graph)) is None, "a cycle between packages"
    # The package layers: __main__ → cli → launch → perf → train → config → objectives → jvp → amp.
    assert depth(package_graph(graph)) <= 9, "the longest chain of packages grew; see this module's docstring"
    assert depth(graph) <= 18, "the longest chain of modules grew"


def test_alphaflow_never_imports_analysis():
    assert offenders(modules("alphaflow"), ("analysis",)) == []


def test_objectives_never_import_models():
    assert offenders(modules("alphaflow/objectives"), ("alphaflow.models",)) == []


def test_models_know_nothing_of_objectives_or_sampling():
    bad = offenders(modules("alphaflow/models"), ("alphaflow.objectives", "alphaflow.sampling", "alphaflow.jvp"))
    assert bad == []


def test_training_imports_nothing_from_evaluation_launching_or_the_command():
    bad = offenders(modules("alphaflow/train"), ("alphaflow.evaluate", "alphaflow.launch", "alphaflow.perf", "alphaflow.cli"))
    assert bad == []


def test_lowest_layer_imports_only_the_lowest_layer():
    low = {f: n for f, n in modules("alphaflow").items()
           if f in ("alphaflow/conventions.py", "alphaflow/schedules.py", "alphaflow/timesteps.py")}
    assert len(low) == 3
    allowed = {"alphaflow.conventions"}
    bad = [f"{f} imports {m}" for f, names in low.items() for m in names
           if m.startswith("alphaflow") and not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert bad == []


def test_plotting_and_pandas_only_in_analysis_submitit_only_in_the_executors():
    lib = modules("alphaflow")
    assert offenders(lib, ("pandas", "matplotlib", "seaborn")) == []
    not_launcher = {f: n for f, n in lib.items() if f != "alphaflow/launch/executors.py"}
    assert offenders(not_launcher, ("submitit",)) == []
    assert lib, "found no library files: the test would check nothing"
