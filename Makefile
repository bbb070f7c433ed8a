# Both targets are self-sufficient on a fresh machine: they create (or reuse) .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m converters.demo

# timm's own model tests come from the sdist of the installed timm (PyPI, once); the tests run offline.
test: $(VENV)/.installed
	$(PY) tests/timm_suite/run.py --fetch
	$(PY) -m pytest -q
