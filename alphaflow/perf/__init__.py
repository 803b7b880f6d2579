"""Performance and GPU readiness: ``alphaflow bench``, the memory plan on fake tensors (``alphaflow plan``),
the host-sync counter and the GPU check (``alphaflow doctor``)."""
