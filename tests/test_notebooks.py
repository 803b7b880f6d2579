"""The notebooks run on a real (tiny) sweep root and on roots with missing pieces; committed copies hold their outputs.

Each notebook is a jupytext pair (notebooks/jupytext.toml): NAME.py in percent format is the source, NAME.ipynb the
copy JupyterLab opens, committed with the outputs of `make notebooks` (the demo's runs); the checks of the committed
files read both through jupytext and execute nothing. The fixture trains fm / meanflow / α-Flow / meanflow with pcgrad / imf (2 seeds, DiT-N/2, 30 steps, online
probes) through the sweep API, probes and evaluates every run through the CLI, then executes all of notebooks/ in
parallel kernels.
"""

from __future__ import annotations

import ast
import asyncio
import math
import shutil
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest
from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file
from nbclient import NotebookClient

from alphaflow.cli.main import main
from alphaflow.launch.executors import run_inline
from alphaflow.launch.sweeps import load_sweep
from analysis import load_runs
from analysis.notebook import inventory, pick_probes, resolve_root
from analysis.samples import fig_sample_grids, sample_index
from analysis.schedules import fig_schedules
from analysis.summary import t_interval
from analysis.tables import interval_table, quality_column, quality_table, run_quality

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ["01_gradient_conflict", "02_alpha_schedules", "03_samples", "04_conflict_interventions", "05_family"]
VARIANTS = ["fm", "meanflow", "alphaflow", "meanflow-pcgrad", "imf"]
SWEEP = """\
name: notebooks-test
base:
  model: {name: DiT-N/2}
  train: {steps: 30, batch_size: 16, log_every: 5, ckpt_every: 15, keep_every: 15, sample_every: 0, threads: 1}
  sample: {num: 16}
  ema: {halflife_steps: 10}
  probe: {every: 10}
variants:
  fm: {objective.name: fm}
  meanflow: {objective.name: meanflow, objective.ratio_fm: 0.75}
  alphaflow: {objective.name: alphaflow, objective.ratio_fm: 0.5}
  meanflow-pcgrad: {objective.name: meanflow, objective.ratio_fm: 0.75, conflict.mode: pcgrad}
  imf: {objective.name: imf, model.aux_head_depth: 0}
seeds: [0, 1]
"""
# image outputs each notebook must show with every piece present
IMAGES = {"01_gradient_conflict": 5, "02_alpha_schedules": 3, "03_samples": 1, "04_conflict_interventions": 1,
          "05_family": 1}
# tagged table cells each notebook must show, and the variants each must name (None: all of VARIANTS)
TABLES = {"01_gradient_conflict": {"conflict-table": None, "online-conflict-table": None},
          "02_alpha_schedules": {"quality-table": None}, "03_samples": {"quality-table": None},
          "04_conflict_interventions": {"ticks-table": ["meanflow-pcgrad"], "online-conflict-table": None,
                                        "conflict-table": None, "quality-table": None},
          "05_family": {"quality-table": None, "online-conflict-table": None, "conflict-table": None,
                        "third-parts-table": ["imf (aux)"]}}


def _notebook(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


async def _execute_all(nbs: dict[str, nbformat.NotebookNode]) -> dict[str, BaseException | None]:
    """Run each notebook in its own kernel (python3: this interpreter's ipykernel), all at once."""
    clients = [NotebookClient(nb, kernel_name="python3", timeout=180, startup_timeout=180,
                              resources={"metadata": {"path": str(NOTEBOOKS)}}) for nb in nbs.values()]
    results = await asyncio.gather(*(c.async_execute() for c in clients), return_exceptions=True)
    return {name: r if isinstance(r, BaseException) else None for name, r in zip(nbs, results)}


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("notebooks")
    (tmp / "sweep.yaml").write_text(SWEEP)
    root = tmp / "root"
    run_inline(load_sweep(tmp / "sweep.yaml").runs, root, log=lambda _: None)
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        assert main(["probe", str(run), "--batches", "2", "--batch-size", "16", "--device", "cpu"]) == 0
        assert main(["eval", str(run), "--num-samples", "64", "--cache", str(tmp / "cache"), "--device", "cpu"]) == 0
    return root


@pytest.fixture(scope="module")
def executed(sweep_root):
    """name → (executed notebook, the exception its execution raised or None)."""
    nbs = {name: _notebook(name) for name in NAMES}
    with pytest.MonkeyPatch.context() as mp:  # the kernels inherit this environment
        mp.setenv("ALPHAFLOW_SWEEP_ROOT", str(sweep_root))
        mp.setenv("MPLBACKEND", "Agg")
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # no debugger warning on stderr
        errors = asyncio.run(_execute_all(nbs))
    return {name: (nbs[name], errors[name]) for name in NAMES}


def _outputs(cell) -> list[dict]:
    return [o for o in cell.get("outputs", [])]


def _text(cell) -> str:
    parts = []
    for o in _outputs(cell):
        parts.append(o.get("text", ""))
        parts += [str(v) for k, v in o.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- committed files

SYNC = "jupytext --sync notebooks/*.py"
EXECUTE = "make notebooks"


def _cells(path: Path) -> list[tuple]:
    """(type, source, tags) of each cell, as jupytext reads the file (.py or .ipynb)."""
    return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in jupytext.read(path).cells]


@pytest.mark.fast
def test_the_notebooks_are_jupytext_pairs_of_a_py_and_an_ipynb():
    assert sorted(p.stem for p in NOTEBOOKS.glob("0*.py")) == NAMES
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
    config = find_jupytext_configuration_file(str(NOTEBOOKS))
    assert config is not None and Path(config) == NOTEBOOKS / "jupytext.toml"
    assert load_jupytext_configuration_file(config).formats == ["ipynb,py:percent"]


@pytest.mark.fast
@pytest.mark.parametrize("name", NAMES)
def test_each_py_and_its_ipynb_hold_the_same_cells(name):
    py, ipynb = _cells(NOTEBOOKS / f"{name}.py"), _cells(NOTEBOOKS / f"{name}.ipynb")
    assert len(py) == len(ipynb), f"{name}: {len(py)} cells in the .py, {len(ipynb)} in the .ipynb: run `{SYNC}`"
    for i, (a, b) in enumerate(zip(py, ipynb)):
        assert a == b, f"{name}: cell {i} differs between the .py and the .ipynb: run `{SYNC}`"


@pytest.mark.fast
@pytest.mark.parametrize("name", NAMES)
def test_each_committed_ipynb_carries_its_outputs_from_one_clean_run(name):
    """The committed .ipynb shows its figures and tables without running anything: every code cell executed once,
    in order, by one kernel (`make notebooks`), no error, at least the figures and tables the fixture run shows,
    and no path of the machine that executed it."""
    nb = _notebook(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{name}.ipynb: run `{EXECUTE}`"
    assert all(o["output_type"] != "error" for c in code for o in _outputs(c)), name
    images = sum("image/png" in o.get("data", {}) for c in code for o in _outputs(c))
    assert images >= IMAGES[name], (name, images)
    for tag in TABLES[name]:
        (cell,) = [c for c in code if tag in c.metadata.get("tags", [])]
        assert any("text/html" in o.get("data", {}) for o in _outputs(cell)), (name, tag)
    assert str(REPO) not in nbformat.writes(nb), f"{name}.ipynb shows this machine's path {REPO}"


@pytest.mark.fast
def test_the_notebooks_state_their_question_and_sweep_and_take_the_root():
    for name in NAMES:
        nb = _notebook(name)
        first = nb.cells[0]
        assert first.cell_type == "markdown" and "**Question.**" in first.source, name
        assert "alphaflow sweep sweeps/" in first.source and ".yaml" in first.source, name
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and params[0].cell_type == "code", name
        assert 'os.environ.get("ALPHAFLOW_SWEEP_ROOT", "runs/demo")' in params[0].source, name


@pytest.mark.fast
def test_notebook_cells_import_only_analysis():
    """The import layers (docs/architecture.md): notebooks → analysis (and nothing heavier than os besides)."""
    for name in NAMES:
        for cell in _notebook(name).cells:
            if cell.cell_type != "code":
                continue
            tree = ast.parse("\n".join(line for line in cell.source.splitlines() if not line.startswith("%")))
            for node in ast.walk(tree):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module] if isinstance(node, ast.ImportFrom) else [])
                assert all(m == "os" or m == "analysis" or m.startswith("analysis.") for m in mods), (name, mods)


def test_a_relative_root_resolves_against_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_root("runs/demo") == REPO / "runs" / "demo"
    assert resolve_root(tmp_path / "x") == tmp_path / "x"


# ----------------------------------------------------------------------------- executed on the sweep

@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes_and_shows_figures_and_tables(executed, name):
    nb, error = executed[name]
    if error is not None:
        raise error
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(o["output_type"] != "error" for c in code for o in _outputs(c))
    images = sum("image/png" in o.get("data", {}) for c in code for o in _outputs(c))
    assert images >= IMAGES[name], (name, images)
    assert any("10 runs in 5 variants (10 done)" in _text(c) for c in code), name
    assert not any("missing:" in _text(c) for c in code), "the fixture's root has every piece"
    for tag, expected in TABLES[name].items():
        (cell,) = [c for c in code if tag in c.metadata.get("tags", [])]
        html = next(o["data"]["text/html"] for o in _outputs(cell) if "text/html" in o.get("data", {}))
        for variant in expected or VARIANTS:
            assert f"<td>{variant}</td>" in html, (name, tag, variant)


# ----------------------------------------------------------------------------- missing pieces

def _run_in_process(name: str) -> None:
    """The notebook's code cells exec'd here (line magics dropped): quick, for the degraded roots."""
    scope: dict = {}
    for cell in _notebook(name).cells:
        if cell.cell_type == "code":
            exec("\n".join(line for line in cell.source.splitlines() if not line.startswith("%")), scope)


def test_the_notebooks_print_what_is_missing(sweep_root, tmp_path, monkeypatch, capsys):
    partial = tmp_path / "partial"  # one run with metrics, online probes and grids, but no probe/eval files
    run = next(p for p in sorted(sweep_root.iterdir()) if p.name.startswith("meanflow-s"))
    shutil.copytree(run, partial / run.name, ignore=shutil.ignore_patterns("probes.jsonl", "eval.jsonl", "checkpoints"))
    monkeypatch.setenv("ALPHAFLOW_SWEEP_ROOT", str(partial))
    for name in NAMES:
        _run_in_process(name)
    out = capsys.readouterr().out
    assert "missing: probes.jsonl in 1 of 1 runs" in out and "missing: eval.jsonl in 1 of 1 runs" in out
    assert "no probes.jsonl; using the online probes" in out, "01's curves fall back to the online probes"
    assert "online probes (metrics.jsonl probe_*): 3 rows" in out

    # probed at the last checkpoint only (probe.final): one point per run, so the curves use the online probes
    (partial / run.name / "probes.jsonl").write_text((run / "probes.jsonl").read_text().splitlines()[-1] + "\n")
    assert pick_probes(partial)["step"].tolist() == [10, 20, 30]
    assert len(pick_probes(partial, source="offline")) == 1
    assert "holds one checkpoint per run" in capsys.readouterr().out

    monkeypatch.setenv("ALPHAFLOW_SWEEP_ROOT", str(tmp_path / "nothing-here"))
    for name in NAMES:
        _run_in_process(name)
    out = capsys.readouterr().out
    assert "No run folders under" in out and "no gradient probes under" in out


# ----------------------------------------------------------------------------- the analysis functions

def test_quality_table_pools_each_runs_last_evaluation():
    rows = [("a-s0-0123456789", 10, 1, 5.0), ("a-s0-0123456789", 20, 1, 4.0), ("a-s0-0123456789", 20, 1, 3.0),
            ("a-s1-0123456780", 20, 1, 2.0), ("b-s0-0123456781", 20, 1, 9.0), ("b-s0-0123456781", 20, 2, 8.0)]
    evals = pd.DataFrame([{"run": r, "step": s, "nfe": k, "metric": "fd", "value": v, "weights": "ema",
                           "sampler": "ode"} for r, s, k, v in rows])
    per_run = run_quality(evals)
    assert per_run[quality_column("fd", 1)].tolist() == [3.0, 2.0, 9.0], "last step, last written row"
    table = quality_table(evals).set_index("variant")
    n, mean, _, lo, hi = t_interval([3.0, 2.0])
    assert table.loc["a", "fd 1-NFE_mean"] == mean and table.loc["a", "fd 1-NFE_lo"] == lo
    assert math.isnan(table.loc["b", "fd 1-NFE_lo"]) and table.loc["b", "fd 2-NFE_mean"] == 8.0
    assert interval_table(table.reset_index())["fd 1-NFE"].tolist() == [f"{mean:.4g} [{lo:.4g}, {hi:.4g}]", "9"]
    assert quality_table(evals.iloc[:0]).empty


def test_grids_schedules_and_inventory_on_the_sweep(sweep_root, capsys):
    runs = load_runs(sweep_root)
    table = inventory(sweep_root, runs)
    assert (table[["online_probes", "probes", "evals", "grids"]] > 0).all().all()
    index = sample_index(sweep_root)
    runs_n = 2 * len(VARIANTS)
    assert len(index) == 2 * runs_n and set(index["nfe"]) == {1, 2} and set(index["step"]) == {30}
    fig = fig_sample_grids(sweep_root, evals=runs.evals)
    assert len(fig.axes) == 2 * len(VARIANTS) and all(len(ax.images) == 1 for ax in fig.axes)
    assert "fd_digits" in fig.axes[0].get_title()
    fig = fig_schedules(runs.metrics)
    assert [len(ax.lines) for ax in fig.axes] == [runs_n, runs_n]
    alpha = runs.metrics.groupby("variant", observed=True)["alpha"].agg(["first", "last"])
    assert alpha.loc["alphaflow"].tolist() == [1.0, 0.0] and alpha.loc["meanflow"].tolist() == [0.0, 0.0]
