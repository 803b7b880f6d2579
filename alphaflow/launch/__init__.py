"""Launching runs: sweep files (``sweeps``) and the executors that run them (``executors``: inline, submitit's
local executor, SLURM through submitit; the only importer of submitit)."""
