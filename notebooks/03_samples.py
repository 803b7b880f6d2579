# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Samples across NFE and objectives
#
# **Question.** What do one- and two-step samples (the samplers of arXiv 2510.20771, §4.2 and Algorithm 3)
# look like for flow matching, MeanFlow and α-Flow? And do the pictures agree with the Fréchet distances that
# `alphaflow eval` measured?
#
# **Sweep.** `make demo` runs `sweeps/demo.yaml` into `runs/demo`, the default root. It trains flow matching
# (`fm`, two seeds), MeanFlow (`meanflow`) and α-Flow with the sigmoid curriculum (`alphaflow`), three seeds each, and
# probes the gradients online every `probe.every` steps. Each run ends with an offline probe of its last
# checkpoint (`probe.final`) and with its 1- and 2-NFE Fréchet distances (`eval.final`). By hand:
#
# ```bash
# alphaflow sweep sweeps/demo.yaml --root runs/demo --executor inline   # in two shells at once (scripts/demo.sh)
# alphaflow probe runs/demo/RUN; alphaflow eval runs/demo/RUN    # for runs trained without probe/eval.final
# ```
#
# Any root with `samples/` grids works, for example `ALPHAFLOW_SWEEP_ROOT=runs/alpha_schedules` (from
# `sweeps/alpha_schedules.yaml`).

# %% tags=["parameters"]
import os

# The sweep root to read. Relative paths resolve against the repository root, not this folder.
ROOT = os.environ.get("ALPHAFLOW_SWEEP_ROOT", "runs/demo")

# %%
# %matplotlib inline
from analysis import load_runs
from analysis.notebook import inventory, resolve_root
from analysis.samples import fig_sample_grids, sample_index
from analysis.tables import interval_table, quality_table

# %%
root = resolve_root(ROOT)
runs = load_runs(root)
inventory(root, runs)

# %% [markdown]
# ## The final grids
#
# One run per variant (the lowest seed): its EMA sample grids at the last step, at 1 and 2 NFE. The grids use
# fixed noise and balanced labels, so the panels in a column start from the same noise. Each title gives the
# run's Fréchet distance.

# %%
fig_sample_grids(root, nfe=(1, 2), evals=runs.evals)

# %% [markdown]
# ## The numbers
#
# Per variant, the mean over seeds with its 95 % t-interval.

# %% tags=["quality-table"]
interval_table(quality_table(runs.evals))

# %% [markdown]
# Every grid on disk (the trainer also writes grids every `train.sample_every` steps):

# %%
sample_index(root).groupby(["variant", "nfe"]).size()
