"""Training: the loop (``loop.train``), its optimiser and EMA, batches, distributed helpers, progress lines,
sample grids and the callbacks that run inside a training run."""
