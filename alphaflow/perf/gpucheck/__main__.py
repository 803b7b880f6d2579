"""``python -m alphaflow.perf.gpucheck ...``: ``alphaflow doctor`` (what scripts/gpu_check.sh calls)."""

from alphaflow.perf.gpucheck import main

raise SystemExit(main())
