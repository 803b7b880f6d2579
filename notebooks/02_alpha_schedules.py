# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · α schedules (Table 2)
#
# **Question.** Which α schedule gives the best 1- and 2-NFE sample quality, with a 95 % interval over
# seeds? This is the counterpart of Table 2a of the α-Flow paper (arXiv 2510.20771). Did every run train with
# the α and the share of r = t rows it was meant to (for α-Flow, the sigmoid curriculum of §4.2 and
# Algorithm 2)? And how do the training losses evolve under each schedule?
#
# **Sweep.** The counterpart of Table 2a is `sweeps/alpha_schedules.yaml`: a sigmoid over the whole run, a
# step at half time, and a constant α = 0 (MeanFlow), three seeds each:
#
# ```bash
# alphaflow sweep sweeps/alpha_schedules.yaml --root runs/alpha_schedules
# for r in runs/alpha_schedules/*/; do alphaflow eval $r; done
# ALPHAFLOW_SWEEP_ROOT=runs/alpha_schedules jupyter lab notebooks/
# ```
#
# By default this notebook reads the demo root instead, which compares flow matching, MeanFlow and α-Flow as
# Table 2b compares MeanFlow and α-Flow. `make demo` runs `sweeps/demo.yaml` into `runs/demo`, the default
# root. It trains flow matching (`fm`, two seeds), MeanFlow (`meanflow`) and α-Flow with the sigmoid curriculum
# (`alphaflow`), three seeds each, and probes the gradients online every `probe.every` steps. Each run ends
# with an offline probe of its last checkpoint (`probe.final`) and with its 1- and 2-NFE Fréchet distances
# (`eval.final`). By hand:
#
# ```bash
# alphaflow sweep sweeps/demo.yaml --root runs/demo --executor inline   # in two shells at once (scripts/demo.sh)
# alphaflow probe runs/demo/RUN; alphaflow eval runs/demo/RUN    # for runs trained without probe/eval.final
# ```

# %% tags=["parameters"]
import os

# The sweep root to read. Relative paths resolve against the repository root, not this folder.
ROOT = os.environ.get("ALPHAFLOW_SWEEP_ROOT", "runs/demo")

# %%
# %matplotlib inline
from analysis import load_runs
from analysis.notebook import inventory, resolve_root
from analysis import summarize_runs, summarize_variants
from analysis.curves import fig_quality_curves, quality_curves
from analysis.report import comparisons
from analysis.compare import comparison_cells
from analysis.schedules import fig_losses, fig_schedules
from analysis.tables import interval_table, quality_table, run_quality

# %%
root = resolve_root(ROOT)
runs = load_runs(root)
inventory(root, runs)

# %% [markdown]
# ## Sample quality per variant
#
# Read from `eval.jsonl`, which `alphaflow eval` writes: each run's last evaluated step, with EMA weights. The
# first table gives, per variant, the mean over seeds with its 95 % t-interval; the second gives each run.
# The metric is a Fréchet distance in the features of the run's extractor (`fd_digits` on the embedded digits
# data), at 1 and 2 NFE; lower is better.

# %% tags=["quality-table"]
interval_table(quality_table(runs.evals))

# %%
run_quality(runs.evals)

# %% [markdown]
# ## Versus the baseline, paired by seed
#
# Every variant against the baseline (the sweep file's `baseline:`, else its first variant; `BASELINE` below
# overrides it). Run s of each variant starts from the same initial weights and sees the same data order as run
# s of the baseline, so the difference on each seed removes what the seeds share: the table gives the mean
# difference (variant − baseline) with its 95 % t-interval and a bootstrap beside it, the seeds on which the
# variant is better, and how many seeds an interval at this spread would need to exclude 0. `auc_` rows compare
# the quality curves' mean height over training (below).

# %%
BASELINE = None  # a variant name, or None for the sweep's
curves = quality_curves(runs)
compare, compare_steps = comparisons(runs, runs.probes, curves, BASELINE)
comparison_cells(compare) if not compare.empty else "nothing to compare (one variant?)"

# %% [markdown]
# Quality during training, for the runs that measured it (`eval.every` > 0): per variant the mean over seeds,
# shaded between the seeds' min and max.

# %%
fig_quality_curves(curves)

# %% [markdown]
# ## The schedules actually used
#
# α and the share of r = t rows, as each run logged them at every log step.

# %%
fig_schedules(runs.metrics)

# %% [markdown]
# ## Loss curves
#
# The optimised loss, the unweighted MSE and the parts of the objective, one line per run; then the final
# unweighted MSE per variant, with its 95 % t-interval over seeds.

# %%
fig_losses(runs.metrics)

# %%
interval_table(summarize_variants(summarize_runs(runs), ["final_loss_mse"]))
