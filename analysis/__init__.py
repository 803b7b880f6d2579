"""Analysis of run folders with pandas, matplotlib and seaborn.

The only package of the project that imports them (see STYLE.md's layers). It reads run folders
through the run-folder format module of ``alphaflow`` and never parses logs. Empty until the
trainer writes run folders (the trainer and gradient-probe milestones fill it).
"""
