# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Conflict interventions against the curriculum
#
# **Question.** The α-Flow paper (arXiv 2510.20771, §3.2) finds that the two halves of MeanFlow's gradient
# fight: cos(∇L_TFM, ∇L_TCC) stays below −0.4 for most of training. Its answer is a curriculum in α. Does acting
# on the conflict directly, by changing how g_TFM and g_TCC combine at every step (`conflict.mode`:
# PCGrad, arXiv 2001.06782; a one-sided projection; equal norms; CAGrad, arXiv 2110.14048; docs/conflict.md),
# lower the conflict the probes measure, and does it change 1- and 2-NFE quality? How does it compare with
# the curriculum, and with the curriculum plus PCGrad?
#
# **Sweep.** `sweeps/conflict.yaml`: MeanFlow with each mode and α-Flow with `none` and `pcgrad`, three seeds
# each, online probes every 50 steps, a final offline probe and the final 1- and 2-NFE evaluation:
#
# ```bash
# alphaflow sweep sweeps/conflict.yaml --root runs/conflict --wait
# alphaflow report runs/conflict
# ALPHAFLOW_SWEEP_ROOT=runs/conflict make lab
# ```
#
# Two kinds of measurement appear side by side. The **probes** (`probe_*` in metrics.jsonl) take a fresh
# batch at the current weights and compare the gradients of the un-combined losses, so they measure every
# run alike, whatever its mode: an intervention shows there only through the weights it led to. The
# **ticks** (`conflict_*`) are what the rule itself saw on the training batch at each step; runs with mode
# `none` do not compute them.

# %% tags=["parameters"]
import os

# The sweep root to read. Relative paths resolve against the repository root, not this folder.
ROOT = os.environ.get("ALPHAFLOW_SWEEP_ROOT", "runs/demo")

# %%
# %matplotlib inline
from analysis import load_runs
from analysis.conflict_ticks import fig_conflict, tick_means, ticks_by_variant
from analysis.notebook import inventory, pick_probes, resolve_root
from analysis.tables import conflict_by_variant, interval_table, quality_table

# %%
root = resolve_root(ROOT)
runs = load_runs(root)
inventory(root, runs)

# %% [markdown]
# ## The curves
#
# One color per variant, the seeds pooled: the mean line and the seeds' range as a band. Top row: the
# probes' cosine and norm ratio ‖g_TFM + g_TCC‖ / (‖g_TFM‖ + ‖g_TCC‖), and how often the rule changed the
# update. The cosine tends to −1 whenever the sum is small beside its parts, near a stationary point, so read
# it together with the ratio: a cosine near −1 with a ratio near 0 says the two parts cancel. Bottom row: the
# rule's own view of the training batch, the cosine, the ratio and ‖update − sum‖ / ‖sum‖.

# %%
fig_conflict(runs)

# %% [markdown]
# ## The tables
#
# Per run, the mean over its ticks after the first tenth of training; then per variant, the mean over seeds
# with its 95 % t-interval in brackets.

# %% tags=["tick-runs"]
tick_means(runs.metrics, skip=0.1)

# %% tags=["ticks-table"]
interval_table(ticks_by_variant(runs.metrics, skip=0.1), digits=3)

# %% [markdown]
# The conflict over training from the online probes: the mean cosines, the share of probes with
# cos(∇L_TFM, ∇L_TCC) < −0.4 and the share where L_FM′ is in less conflict with L_TCC than L_TFM is, then the
# same at the last checkpoint from the offline probe (`probe.final`).

# %% tags=["online-conflict-table"]
interval_table(conflict_by_variant(pick_probes(root, source="online")))

# %% tags=["conflict-table"]
interval_table(conflict_by_variant(pick_probes(root, source="offline")))

# %% [markdown]
# Few-step quality: the Fréchet distance of EMA samples at 1 and 2 NFE (lower is better), mean over seeds
# [95 % t-interval]. With three seeds an interval is wide; variants whose intervals overlap are not told
# apart by this sweep.

# %% tags=["quality-table"]
interval_table(quality_table(runs.evals))
