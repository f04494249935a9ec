# Each target sets itself up: a .venv is created and the package installed into it when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test docs bench-speed bench-quality

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
