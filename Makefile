# dioscope developer targets. `make demo` and `make test` are all a fresh machine needs.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
VPY    := $(VENV)/bin/python

# pip warns about local extra indexes (/opt/pypi*) that are missing here; the warning is harmless, so it is
# filtered out, and pipefail keeps pip's own exit status.
SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# The compiled hot path (tools/build_native.py, dioscope/_native.py): rebuilt when any model
# source changes; a stale or missing build only means the model runs as pure Python.
NATIVE     := .native/manifest.json
MODEL_SRC  := $(wildcard src/dioscope/__init__.py src/dioscope/kernel/*.py src/dioscope/mm/*.py \
                src/dioscope/lib/*.py src/dioscope/block/*.py src/dioscope/fs/*.py \
                src/dioscope/fs/*/*.py src/dioscope/syscalls/*.py)

.PHONY: .venv native demo test bench clean

.venv: $(STAMP)

# Re-created whenever pyproject.toml changes (new dependency, new extra).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test,native]' 2>&1 | { grep -v "^WARNING: Location 'file:///opt/pypi" || true; }
	touch $@

$(NATIVE): $(STAMP) tools/build_native.py $(MODEL_SRC)
	$(VPY) tools/build_native.py

native: $(NATIVE)

demo: $(NATIVE)
	$(VPY) -m dioscope demo

# The suite runs twice: on the compiled hot path (what demo and bench run), then as pure
# Python (what a debugger steps through, and what runs where no C compiler is).
test: $(NATIVE)
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/mypy
	$(VPY) -m pytest
	DIOSCOPE_PURE=1 $(VPY) -m pytest

bench: $(NATIVE)
	$(VPY) bench/run.py

clean:
	rm -rf $(VENV) .native .bench build .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
