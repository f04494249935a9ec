# Each target sets itself up: a .venv is created and the package installed into it when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test check docs bench-speed bench-quality

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m alrao_jax.experiments.demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --dist loadfile

# The edit-test loop: ruff and the method's unit, property and contract tests on one device,
# with a compilation cache kept in .jax-cache/ between runs (the first run fills it: about 3
# minutes on 2 cores; later ones recompile only what changed). `make test` runs everything
# (the tools, the CLI, the docs, the runs on several simulated devices) from a fresh cache.
CHECK_TESTS := tests/test_rates.py tests/test_transform.py tests/test_switch.py \
  tests/test_head_and_step.py tests/test_large_head.py tests/test_contract.py \
  tests/test_properties.py tests/test_layout.py tests/test_lr_find.py tests/test_suggest_lr.py \
  tests/test_predict.py

check: $(VENV)/.installed
	$(PY) -m ruff check .
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax-cache $(PY) -m pytest -n 2 --dist load $(CHECK_TESTS) -k "not 8_devices and not row_sharded"

$(VENV)/.docs: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs  # a clean build: every page's navigation lists every page
	rm -rf docs/_build docs/_autosummary
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench-speed: $(VENV)/.installed
	$(PY) benchmarks/speed.py

bench-quality: $(VENV)/.installed
	$(PY) benchmarks/quality.py
