"""The import layers of the package, checked against the table of docs/architecture.md by parsing imports (no
module is executed). The table is the rule: a module imports only what its folder's row lists, every listed
import is made by some module of the folder (the table stays as tight as the code), and every folder has a row.
Every import counts, including imports inside functions, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import re
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


def unit_of(module: str) -> str:
    """The row of docs/architecture.md a module belongs to: ``alphaflow.train.loop`` → ``train``, the package's own
    ``__init__``/``__main__`` → ``(root)``, anything in ``analysis`` → ``analysis``."""
    parts = module.split(".")
    if parts[0] == "analysis":
        return "analysis"
    if len(parts) == 1 or parts[1] == "__main__":
        return "(root)"
    return parts[1]


def layer_table(text: str | None = None) -> dict[str, tuple[int | None, set[str]]]:
    """folder → (level, what it may import) from the table under "## The layers" of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text() if text is None else text
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[int | None, set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].startswith("`"):
            continue
        level, folder, _, allowed = cells
        rows[folder.strip("`").rstrip("/")] = (int(level) if level.isdigit() else None,
                                              set(re.findall(r"`([\w.]+)`", allowed)))
    return rows


def crossings(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """folder → what its modules import from other folders, as a folder (``train``) or, for ``core``, a module
    (``core.jvp``): core is one folder of unrelated pieces of mathematics, and the table says which each uses."""
    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        mine = unit_of(module)
        out.setdefault(mine, set())
        for dep in deps:
            theirs = unit_of(dep)
            if theirs != mine:
                out[mine].add(".".join(dep.split(".")[1:3]) if theirs == "core" else theirs)
    return out


def table_violations(table: dict[str, tuple[int | None, set[str]]], used: dict[str, set[str]]) -> list[str]:
    """Every way the code and the table disagree, in words (empty when they agree)."""
    problems = [f"alphaflow/{f}/ has no row in docs/architecture.md" for f in sorted(set(used) - set(table))]
    covers = lambda entry, m: m == entry or m.startswith(entry + ".")  # noqa: E731 (`core` covers `core.jvp`)
    for folder, imports in sorted(used.items()):
        allowed = table.get(folder, (None, set()))[1]
        problems += [f"{folder} imports {m}, which its row does not allow" for m in sorted(imports)
                     if not any(covers(a, m) for a in allowed)]
    for folder, (level, allowed) in sorted(table.items()):
        problems += [f"{folder}'s row allows {a}, which no module of it imports" for a in sorted(allowed)
                     if not any(covers(a, m) for m in used.get(folder, set()))]
        for m in sorted(allowed):
            below = table.get(m.split(".")[0], (None, set()))[0]
            if level is not None and below is not None and below >= level:
                problems.append(f"{folder} (level {level}) may import {m} (level {below}): levels must rise")
    return problems


def test_every_import_is_one_the_architecture_table_allows():
    graph = import_graph()
    for path in sorted((ROOT / "analysis").rglob("*.py")):  # analysis imports the library by absolute name
        graph[module_name(path)] = {m for m in imports_of(path) if m in graph}
    table = layer_table()
    assert {"core", "run", "train", "cli", "analysis", "(root)"} <= set(table), "the table did not parse"
    used = crossings(graph)
    used.setdefault("recipes", set())
    assert table_violations(table, used) == []


def test_the_table_check_catches_a_forbidden_import_a_loose_row_and_a_missing_folder():
    table = layer_table("## The layers\n| level | folder | owns | may import |\n|---|---|---|---|\n"
                        "| 0 | `core/` | maths | — |\n| 1 | `objectives/` | targets | `core.jvp`, `models` |\n"
                        "| 1 | `models/` | nets | `core.conventions` |\n")
    assert table["objectives"] == (1, {"core.jvp", "models"})
    used = crossings({"alphaflow.objectives.meanflow": {"alphaflow.core.jvp", "alphaflow.core.amp"},
                      "alphaflow.core.jvp": set(), "alphaflow.core.amp": set(),
                      "alphaflow.models.dit": {"alphaflow.core.conventions"}, "alphaflow.core.conventions": set(),
                      "alphaflow.data.digits": set()})
    assert table_violations(table, used) == [
        "alphaflow/data/ has no row in docs/architecture.md",
        "objectives imports core.amp, which its row does not allow",
        "objectives's row allows models, which no module of it imports",
        "objectives (level 1) may import models (level 1): levels must rise",
    ]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the folders of the layout (the package's root modules are one unit)."""
    out: dict[str, set[str]] = {unit_of(m): set() for m in graph}
    for m, deps in graph.items():
        out[unit_of(m)] |= {unit_of(d) for d in deps if unit_of(d) != unit_of(m)}
    return out


def test_the_import_graph_stays_shallow():
    graph = import_graph()
    assert find_cycle(package_graph(graph)) is None, "a cycle between folders"
    # docs/architecture.md#figures gives the longest chains: keep it true when they change
    assert depth(package_graph(graph)) == 8, "the longest chain of folders changed"
    assert depth(graph) == 19, "the longest chain of modules changed"


def test_alphaflow_never_imports_analysis():
    assert offenders(modules("alphaflow"), ("analysis",)) == []


def test_plotting_and_pandas_only_in_analysis_submitit_only_in_the_executors():
    lib = modules("alphaflow")
    assert offenders(lib, ("pandas", "matplotlib", "seaborn")) == []
    not_launcher = {f: n for f, n in lib.items() if f != "alphaflow/launch/executors.py"}
    assert offenders(not_launcher, ("submitit",)) == []
    assert lib, "found no library files: the test would check nothing"


def test_the_package_root_holds_only_its_entry_modules():
    loose = sorted(p.name for p in (ROOT / "alphaflow").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"], loose
