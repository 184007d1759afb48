# Developer entry points. `make test` and `make demo` create .venv when it is missing and
# install the project into it once; the stamp file makes later runs skip the install until
# pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= all,dev,docs
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.qpdsl-install-stamp

.PHONY: install demo test lint bench clean-venv

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# qpth (OptNet, a benchmark peer) ships only a setup.py sdist that pins numpy<2. Its real
# dependencies (numpy, cvxpy) come with the extras above, so it is built with the venv's own
# setuptools (>=77 is what torch 2.13 requires, and has bdist_wheel built in) and installed
# without its pins.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	$(PIP) install --quiet "setuptools>=77"
	$(PIP) install --quiet --no-build-isolation --no-deps qpth
	touch $@

demo: $(STAMP)
	$(PY) examples/sudoku.py

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check qpdsl tests benchmarks examples .ci

bench: $(STAMP)
	$(PY) benchmarks/run.py --quick

clean-venv:
	rm -rf $(VENV)
