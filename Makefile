# tracekit: `make demo` and `make test` set everything up themselves on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
LINT_PATHS := $(wildcard tracekit tests benchmarks scripts)
# pytest workers: the suite is CPU-bound; override with `make test JOBS=1`.
JOBS ?= 2

.PHONY: setup demo test lint check-format unit clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build of torch first, so the project's torch range installs nothing more.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[torch,dev]'
	touch $@

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -n $(JOBS) -q

test: lint unit

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
