# Two entry points (see README): `make demo` and `make test` (ruff, then pytest; `make lint` runs
# ruff alone). Each creates .venv and installs what it needs on first use. torch is pinned to
# 2.13.0: on a machine without a GPU pip takes the CPU build (never the CUDA packages).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/cryolens demo --out demo_run

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	$(PY) -m pytest -q -p no:cacheprovider

.PHONY: install demo lint test
