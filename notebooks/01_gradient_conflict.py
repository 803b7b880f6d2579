# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Gradient conflict (Figures 2 and 6)
#
# **Question.** MeanFlow's loss is the sum of a trajectory flow-matching term, L_TFM, and a trajectory
# consistency term, L_TCc. The α-Flow paper (arXiv 2510.20771, §3.2 and Figure 2a) reports that for MeanFlow
# the gradients of the two terms conflict: cos(∇L_TFM, ∇L_TCc) is strongly negative, "typically below −0.4".
# Do our runs show the same? Is the border case L_FM′ (the rows with r = t) in less conflict with L_TCc? And
# how do flow matching and the α-Flow curriculum compare?
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
# The paper's own setting, MeanFlow with 0 % and with 75 % of the rows at r = t (here next to α-Flow), is
# `sweeps/grad_conflict.yaml`:
#
# ```bash
# alphaflow sweep sweeps/grad_conflict.yaml --root runs/grad_conflict
# for r in runs/grad_conflict/*/; do alphaflow probe $r --batches 16 --batch-size 64; done
# ALPHAFLOW_SWEEP_ROOT=runs/grad_conflict jupyter lab notebooks/
# ```

# %% tags=["parameters"]
import os

# The sweep root to read. Relative paths resolve against the repository root, not this folder.
ROOT = os.environ.get("ALPHAFLOW_SWEEP_ROOT", "runs/demo")

# %%
# %matplotlib inline
from analysis import load_runs
from analysis.notebook import inventory, resolve_root
from analysis import fig2a, fig2b, fig2c, fig6, summarize_conflict
from analysis.notebook import pick_probes
from analysis.tables import conflict_by_variant, interval_table

# %%
root = resolve_root(ROOT)
runs = load_runs(root)
inventory(root, runs)

# %% [markdown]
# ## The curves
#
# When the runs were probed at several checkpoints (`alphaflow probe`), the curves come from those offline
# probes. They follow the paper's protocol (arXiv 2510.20771, §3.2 and Appendix E): at each checkpoint, N
# batches with r < t, one gradient per loss term on the same batch, and the mean over the batches with a
# 5–95 % band. Otherwise the curves come from the online probes, the `probe_*` columns of `metrics.jsonl`:
# the training batch every `probe.every` steps, one batch per point and so no band. The printed line says
# which source was used.

# %%
probes = pick_probes(root, weights="raw")

# %% [markdown]
# **Figure 2a.** cos(∇L_TFM, ∇L_TCc) as solid lines and cos(∇L_FM′, ∇L_TCc) as dashed lines, one color per run.

# %%
fig2a(probes)

# %% [markdown]
# **Figures 2b and 2c.** The mean of L_TFM and of L_TCc over the probe batches.

# %%
fig2b(probes)

# %%
fig2c(probes)

# %% [markdown]
# **Figure 6** (Appendix J). All six pairwise cosines between ∇L_TFM, ∇L_FM′, ∇L_TCc and ∇L_MF.

# %%
fig6(probes)

# %% [markdown]
# ## The conflict table
#
# From the offline probes (`probes.jsonl`, raw weights). The first table has one row per run, taken over its
# checkpoints: the mean cosines, the share of checkpoints where cos(∇L_TFM, ∇L_TCc) is below 0 and below
# −0.4, and the share where L_FM′ is in less conflict with L_TCc than L_TFM is. The second table pools the
# seeds of each variant: the mean, with its 95 % t-interval in brackets.

# %% tags=["conflict-runs"]
offline = pick_probes(root, source="offline")
summarize_conflict(offline)

# %% tags=["conflict-table"]
interval_table(conflict_by_variant(offline))

# %% [markdown]
# The same table from the online probes. These are taken every `probe.every` steps during training, so the
# shares are over training time rather than over checkpoints.

# %% tags=["online-conflict-table"]
online = pick_probes(root, source="online")
interval_table(conflict_by_variant(online))

# %%
fig2a(online)
