# One-command entry points. Everything installs into .venv/ at the repository root.
#   make demo   set up, then run the main job
#   make test   set up, then run the tests
# TORCH_INDEX_URL: where pip finds a CPU build of torch on a machine that has no local wheel
# (PyTorch's CPU wheel index); left empty, pip uses its configured indexes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_TORCH := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing later can swap in a CUDA build
	$(PY) -m pip install --quiet $(PIP_TORCH) -c constraints.txt torch
	$(PY) -m pip install --quiet $(PIP_TORCH) -c constraints.txt -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/alphaflow train --out runs/demo

clean:
	rm -rf $(VENV) .pytest_cache
