"""Write the numbered notebooks of this folder from the cell lists below, without outputs.

    python notebooks/make_notebooks.py          # rewrites notebooks/0*.ipynb

The .ipynb files are committed as this script writes them (no outputs, null execution counts, fixed
cell ids), so a diff shows only real changes; ``tests/test_notebooks.py`` checks they match and runs them.
Edit the cells here, not in Jupyter. Each code cell is one or two calls into ``analysis``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PARAMETERS = """\
import os

# The sweep root to read. Relative paths resolve against the repository root, not this folder.
ROOT = os.environ.get("ALPHAFLOW_SWEEP_ROOT", "runs/demo")"""

LOAD = """\
root = resolve_root(ROOT)
runs = load_runs(root)
inventory(root, runs)"""

DEMO = """\
`make demo` runs `sweeps/demo.yaml` into `runs/demo` (the default root): flow matching (`fm`), MeanFlow
(`meanflow`) and α-Flow with the sigmoid curriculum (`alphaflow`), three seeds each, with online probes
(`probe.every`); each run ends with an offline probe of its last checkpoint (`probe.final`) and its 1- and
2-NFE Fréchet distances (`eval.final`). By hand:

```bash
alphaflow sweep sweeps/demo.yaml --root runs/demo --executor local --wait
alphaflow probe runs/demo/RUN; alphaflow eval runs/demo/RUN    # for runs trained without probe/eval.final
```"""


def _imports(names: str) -> str:
    return f"%matplotlib inline\nfrom analysis import load_runs\nfrom analysis.notebook import inventory, resolve_root\n{names}"


GRADIENT_CONFLICT = [
    ("md", f"""\
# 01 · Gradient conflict (Figures 2 and 6)

**Question.** Do the gradients of trajectory flow matching and trajectory consistency conflict, as the paper
reports for MeanFlow (cos(∇L_TFM, ∇L_TCc) strongly negative, "typically below −0.4", SPEC §5.1, Fig. 2a)? Is the
border case L_FM′ (r = t) in less conflict with L_TCc, and how do flow matching and the α-Flow curriculum compare?

**Sweep.** {DEMO}

The paper's own setting (MeanFlow with 0 % and 75 % of rows at r = t) is `sweeps/grad_conflict.yaml`:

```bash
alphaflow sweep sweeps/grad_conflict.yaml --root runs/grad_conflict
for r in runs/grad_conflict/*/; do alphaflow probe $r --batches 16 --batch-size 64; done
ALPHAFLOW_SWEEP_ROOT=runs/grad_conflict jupyter lab notebooks/
```"""),
    ("parameters", PARAMETERS),
    ("code", _imports("from analysis import fig2a, fig2b, fig2c, fig6, summarize_conflict\n"
                      "from analysis.notebook import pick_probes\n"
                      "from analysis.tables import conflict_by_variant, interval_table")),
    ("code", LOAD),
    ("md", """\
## The curves

From the offline probes where runs were probed at several checkpoints (`alphaflow probe`, the paper's protocol:
N batches with r < t per checkpoint, one gradient per loss term on the same batch, mean with a 5–95 % band,
SPEC §5.2), else from the online probes (`probe_*` in `metrics.jsonl`: the training batch every `probe.every`
steps, one batch per point, no band). The printed line says which."""),
    ("code", "probes = pick_probes(root, weights=\"raw\")"),
    ("md", "**Figure 2a.** cos(∇L_TFM, ∇L_TCc) (solid) and cos(∇L_FM′, ∇L_TCc) (dashed), one color per run."),
    ("code", "fig2a(probes)"),
    ("md", "**Figures 2b and 2c.** The average L_TFM and L_TCc on the probe batches."),
    ("code", "fig2b(probes)"),
    ("code", "fig2c(probes)"),
    ("md", "**Figure 6.** All six pairwise cosines of ∇L_TFM, ∇L_FM′, ∇L_TCc and ∇L_MF."),
    ("code", "fig6(probes)"),
    ("md", """\
## The conflict table

Offline probes (probes.jsonl, raw weights), per run over its checkpoints: mean cosines, the share of checkpoints
with cos(∇L_TFM, ∇L_TCc) < 0 and < −0.4, and the share where FM′ is less in conflict than TFM; then per variant,
mean [95 % t-interval] over the seeds."""),
    ("code", "offline = pick_probes(root, source=\"offline\")\nsummarize_conflict(offline)", "conflict-runs"),
    ("code", "interval_table(conflict_by_variant(offline))", "conflict-table"),
    ("md", """\
The same from the online probes: every `probe.every` steps of training, so the shares are over training time."""),
    ("code", "online = pick_probes(root, source=\"online\")\ninterval_table(conflict_by_variant(online))",
     "online-conflict-table"),
    ("code", "fig2a(online)"),
]

ALPHA_SCHEDULES = [
    ("md", f"""\
# 02 · α schedules (Table 2)

**Question.** Which α schedule gives the best 1- and 2-NFE sample quality, with a 95 % interval over seeds (the
counterpart of the paper's Table 2a, SPEC §7.3), and did every run train with the α and r = t share it was meant
to (SPEC §4.1)? How do the training losses evolve under each schedule?

**Sweep.** The Table 2a counterpart is `sweeps/alpha_schedules.yaml` (sigmoid over the whole run, a step at half,
constant 0 = MeanFlow; three seeds each):

```bash
alphaflow sweep sweeps/alpha_schedules.yaml --root runs/alpha_schedules
for r in runs/alpha_schedules/*/; do alphaflow eval $r; done
ALPHAFLOW_SWEEP_ROOT=runs/alpha_schedules jupyter lab notebooks/
```

By default this notebook reads the demo root instead (flow matching vs MeanFlow vs α-Flow, Table 2b's
comparison). {DEMO}"""),
    ("parameters", PARAMETERS),
    ("code", _imports("from analysis import summarize_runs, summarize_variants\n"
                      "from analysis.schedules import fig_losses, fig_quality_curves, fig_schedules\n"
                      "from analysis.tables import interval_table, quality_table, run_quality")),
    ("code", LOAD),
    ("md", """\
## Sample quality per variant

From `eval.jsonl` (`alphaflow eval`): each run's last evaluated step, EMA weights; per variant the mean
[95 % t-interval] over seeds. The metric is a Fréchet distance in the features of the run's extractor (lower
is better; `fd_digits` on the embedded digits data), at 1 and 2 NFE."""),
    ("code", "interval_table(quality_table(runs.evals))", "quality-table"),
    ("code", "run_quality(runs.evals)"),
    ("md", "Quality during training, where the runs logged it (`eval.every` > 0):"),
    ("code", "fig_quality_curves(runs.metrics)"),
    ("md", "## The schedules actually used\n\nα and the r = t share as each run logged them at every log tick."),
    ("code", "fig_schedules(runs.metrics)"),
    ("md", "## Loss curves\n\nThe optimised loss, the unweighted MSE and the objective's parts, one line per run."),
    ("code", "fig_losses(runs.metrics)"),
    ("code", "interval_table(summarize_variants(summarize_runs(runs), [\"final_loss_mse\"]))"),
]

SAMPLES = [
    ("md", f"""\
# 03 · Samples across NFE and objectives

**Question.** What do one- and two-step samples look like for flow matching, MeanFlow and α-Flow, and do the
pictures agree with the Fréchet distances measured by `alphaflow eval`?

**Sweep.** {DEMO}

Any root with `samples/` grids works, e.g. `ALPHAFLOW_SWEEP_ROOT=runs/alpha_schedules` (`sweeps/alpha_schedules.yaml`)."""),
    ("parameters", PARAMETERS),
    ("code", _imports("from analysis.samples import fig_sample_grids, sample_index\n"
                      "from analysis.tables import interval_table, quality_table")),
    ("code", LOAD),
    ("md", """\
## The final grids

One run per variant (the lowest seed), its EMA sample grids at the last step, at 1 and 2 NFE (fixed noise and
balanced labels, so panels in a column share their starting noise); titles give the run's Fréchet distance."""),
    ("code", "fig_sample_grids(root, nfe=(1, 2), evals=runs.evals)"),
    ("md", "## The numbers\n\nPer variant, mean [95 % t-interval] over seeds."),
    ("code", "interval_table(quality_table(runs.evals))", "quality-table"),
    ("md", "Every grid on disk (the trainer also writes them at `train.sample_every`):"),
    ("code", "sample_index(root).groupby([\"variant\", \"nfe\"]).size()"),
]

NOTEBOOKS = {"01_gradient_conflict": GRADIENT_CONFLICT, "02_alpha_schedules": ALPHA_SCHEDULES, "03_samples": SAMPLES}


def build(cells: list[tuple]) -> nbformat.NotebookNode:
    """A notebook from (kind, source[, tag]) tuples: kind "md", "code" or "parameters" (a code cell tagged
    ``parameters``, papermill-style); ids are the cell's position, so rebuilding changes nothing."""
    nb = new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"}})
    for i, (kind, source, *tag) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        tags = ["parameters"] if kind == "parameters" else list(tag)
        if tags:
            cell.metadata["tags"] = tags
        cell.id = f"cell-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(out: Path = HERE) -> list[Path]:
    paths = []
    for name, cells in NOTEBOOKS.items():
        path = out / f"{name}.ipynb"
        nbformat.write(build(cells), path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
