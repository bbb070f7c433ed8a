# Both targets are self-sufficient on a fresh machine: they create (or reuse) .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo docs test

# the start-up hook and the console entry module are copied into site-packages at install time: a change to
# either needs a reinstall
$(VENV)/.installed: pyproject.toml timm_sknet/_autoload.py timm_sknet/_autoload.pth _timm_sknet_console.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m converters.caffe.demo

# the docs site (site/): mkdocs-material, the API reference from the docstrings; a broken link or reference fails
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The docs site is built first; README.md and docs/ are test files too (their examples run through Sybil).
# timm's own model tests come from the sdist of the installed timm (PyPI, once); the tests run offline.
# Two workers, a test file each at a time, one torch thread each: the Hub tests spend much of their time waiting
# (servers, client retries), which the other worker fills (on CI's 2 cores: 4-5 min of tests instead of 6).
test: $(VENV)/.installed docs
	$(PY) tests/timm_suite/run.py --fetch
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile
