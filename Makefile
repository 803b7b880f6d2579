# One-command entry points. Everything installs into .venv/ at the repository root.
#   make demo   set up, then run the main job
#   make test   set up, then run the tests
#   make test-fast   the unit tier only (identities, no training), under a minute
#   make typecheck   mypy over alphaflow/ and analysis/ (its settings: pyproject.toml [tool.mypy])
#   make lab    set up, then open JupyterLab on notebooks/ (ALPHAFLOW_SWEEP_ROOT picks the sweep root)
#   make notebooks   execute the notebooks on the demo's runs and write them back with their outputs
# TORCH_INDEX_URL: where pip finds a CPU build of torch on a machine that has no local wheel
# (PyTorch's CPU wheel index); left empty, pip uses its configured indexes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_TORCH := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)

.PHONY: setup test test-fast typecheck demo lab notebooks clean

setup: $(VENV)/.installed

# what training, sweeps and the report need (the demo waits for nothing more) ...
$(VENV)/.installed-run: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing later can swap in a CUDA build
	$(PY) -m pip install --quiet $(PIP_TORCH) -c constraints.txt torch
	$(PY) -m pip install --quiet $(PIP_TORCH) -c constraints.txt -e '.[analysis,launch]'
	touch $@

# ... then everything else of the dev extra: tests, notebooks, trackers, latents, eval models
$(VENV)/.installed: $(VENV)/.installed-run
	$(PY) -m pip install --quiet $(PIP_TORCH) -c constraints.txt -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q --durations=25

test-fast: setup
	$(PY) -m pytest -q -m "not slow or fast"

typecheck: setup
	$(PY) -m mypy

# the main job: sweeps/demo.yaml in DEMO_SHELLS one-thread inline sweeps at once (one per core), then the report
# (DEMO_ROOT to move it; scripts/demo.sh says why not submitit's local executor)
DEMO_ROOT ?= runs/demo
DEMO_SHELLS ?= 2
demo: $(VENV)/.installed-run
	ALPHAFLOW_BIN=$(VENV)/bin bash scripts/demo.sh $(DEMO_ROOT) $(DEMO_SHELLS)

# the notebooks read ALPHAFLOW_SWEEP_ROOT if set, else DEMO_ROOT (relative to the repository root)
# jupytext in JupyterLab saves each notebook as both NAME.ipynb and NAME.py (notebooks/jupytext.toml)
lab: setup
	ALPHAFLOW_SWEEP_ROOT="$${ALPHAFLOW_SWEEP_ROOT:-$(DEMO_ROOT)}" $(VENV)/bin/jupyter lab notebooks/

# the committed notebooks with their outputs: 01–03 from runs/demo (make demo), 04 from runs/conflict and 05 from
# runs/family when those sweeps were run (else runs/demo); scripts/run_notebooks.py says which root each read
notebooks: setup
	OMP_NUM_THREADS=1 $(PY) scripts/run_notebooks.py

clean:
	rm -rf $(VENV) .pytest_cache
