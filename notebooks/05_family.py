# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · The MeanFlow family under one convention
#
# **Question.** The α-Flow paper (arXiv 2510.20771, §3) splits MeanFlow's gradient into trajectory flow matching
# (L_TFM) and trajectory consistency (L_TCC) and finds them in conflict. The objectives that followed change the
# consistency side in different ways: SplitMeanFlow (arXiv 2507.16884) replaces the JVP by interval splitting,
# Modular MeanFlow (arXiv 2508.17426) lets a share λ of the gradient through it, improved MeanFlow
# (arXiv 2512.02012) takes the JVP along the network's own velocity, Decoupled MeanFlow (arXiv 2510.24474)
# turns a flow-matching network into a flow map. Under one time convention, one trainer and one gradient probe:
# how do they compare in 1- and 2-NFE quality, and how much do their L_TFM and L_TCC gradients conflict?
# (docs/objectives.md#the-meanflow-family gives each objective's decomposition.)
#
# **Sweep.** `sweeps/family.yaml`: flow matching, MeanFlow, α-Flow, Shortcut, SplitMeanFlow, Modular MeanFlow,
# improved MeanFlow and Decoupled MeanFlow (started from the flow-matching run of its seed), three seeds each,
# online probes every 50 steps, a final offline probe and the final 1- and 2-NFE evaluation:
#
# ```bash
# alphaflow sweep sweeps/family.yaml --root runs/family --executor inline      # in two shells on 2 cores
# alphaflow sweep sweeps/family.yaml --root runs/family --executor inline --retry-failed
# alphaflow report runs/family
# ALPHAFLOW_SWEEP_ROOT=runs/family make lab
# ```
#
# The probes measure every run alike: on a fresh batch at the current weights they differentiate MeanFlow's
# L_TFM, L_TCC and the border case L_FM′ (whatever objective trained the weights), and the run's own loss with
# its third part where it has one.

# %% tags=["parameters"]
import os

# The sweep root to read. Relative paths resolve against the repository root, not this folder.
ROOT = os.environ.get("ALPHAFLOW_SWEEP_ROOT", "runs/demo")

# %%
# %matplotlib inline
from analysis import load_runs
from analysis.family import fig_conflict_panels, third_parts_by_variant
from analysis.notebook import inventory, pick_probes, resolve_root
from analysis.tables import conflict_by_variant, interval_table, quality_table

# %%
root = resolve_root(ROOT)
runs = load_runs(root)
inventory(root, runs)

# %% [markdown]
# ## Quality
#
# The Fréchet distance of EMA samples at 1 and 2 NFE (lower is better), mean over seeds [95 % t-interval]. With
# three seeds an interval is wide: objectives whose intervals overlap are not told apart by this sweep.

# %% tags=["quality-table"]
interval_table(quality_table(runs.evals))

# %% [markdown]
# ## The conflict
#
# cos(∇L_TFM, ∇L_TCC) (solid) and cos(∇L_FM′, ∇L_TCC) (dashed) over training from the online probes, one panel per
# objective with its seeds' band (Fig. 2a of arXiv 2510.20771 as small multiples); then the tables over training (online) and at the last checkpoint (offline):
# the mean cosines, the share of probes below −0.4 and the share where L_FM′ is in less conflict than L_TFM.

# %%
online = pick_probes(root, source="online")
fig_conflict_panels(online)

# %% tags=["online-conflict-table"]
interval_table(conflict_by_variant(online))

# %% tags=["conflict-table"]
interval_table(conflict_by_variant(pick_probes(root, source="offline")))

# %% [markdown]
# ## The third part
#
# Three objectives have a gradient with a part beside L_TFM and L_TCC: Modular MeanFlow's `d` (through the JVP),
# Decoupled MeanFlow's `lv` (the log-variance head) and improved MeanFlow's `aux` (the velocity head's loss). Per
# objective, after the first tenth of training: how that part lines up with ∇L_TFM and ∇L_TCC, and its size beside
# ∇L_TFM.

# %% tags=["third-parts-table"]
interval_table(third_parts_by_variant(online), digits=3)
