# tracekit: `make demo` and `make test` set everything up themselves on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
LINT_PATHS := $(wildcard tracekit tests benchmarks scripts)
# torch for the collectors: the CPU build. TORCH_VERSION must lie in the torch extra's range.
TORCH_VERSION ?= 2.13.0
# Where the CPU build comes from when no local wheel of TORCH_VERSION is configured for pip (its
# find-links): PyTorch's CPU index. Set it empty (TORCH_INDEX_URL=) to take torch from the ordinary
# index, e.g. on a GPU machine, where `pip install 'tracekit[torch]'` brings the CUDA build.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
# pytest workers: the suite is CPU-bound; override with `make test JOBS=1`.
JOBS ?= 2

.PHONY: setup demo test lint check-format unit clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, so the project's torch range installs nothing more: a local wheel where pip is
	# configured with one (find-links), else the CPU build from TORCH_INDEX_URL.
	@if $(PY) -m pip install --quiet --dry-run --no-index --no-deps torch==$(TORCH_VERSION) >/dev/null 2>&1; then \
	  echo "setup: torch $(TORCH_VERSION) from the local wheel pip is configured with"; \
	  $(PY) -m pip install --quiet torch==$(TORCH_VERSION); \
	elif [ -n "$(TORCH_INDEX_URL)" ]; then \
	  echo "setup: torch $(TORCH_VERSION) from $(TORCH_INDEX_URL)"; \
	  $(PY) -m pip install --quiet torch==$(TORCH_VERSION) --index-url $(TORCH_INDEX_URL); \
	else \
	  echo "setup: torch $(TORCH_VERSION) from the configured index (TORCH_INDEX_URL is empty)"; \
	  $(PY) -m pip install --quiet torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install --quiet -e '.[torch,dev]'
	touch $@
	@echo "setup: done. In a new shell: source $(VENV)/bin/activate (or put $(abspath $(VENV))/bin on PATH)"

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

unit: setup
	# loadgroup: the tests that share one local Ray cluster (xdist_group "ray") run on one worker
	$(VENV)/bin/pytest -n $(JOBS) --dist loadgroup -q

test: lint unit

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
