# dioscope developer targets. `make demo` and `make test` are all a fresh machine needs.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
VPY    := $(VENV)/bin/python

# pip warns about local extra indexes (/opt/pypi*) that are missing here; the warning is harmless, so it is
# filtered out, and pipefail keeps pip's own exit status.
SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

.PHONY: .venv demo test bench clean

.venv: $(STAMP)

# Re-created whenever pyproject.toml changes (new dependency, new extra).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]' 2>&1 | { grep -v "^WARNING: Location 'file:///opt/pypi" || true; }
	touch $@

demo: $(STAMP)
	$(VPY) -m dioscope demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VPY) -m pytest

bench: $(STAMP)
	$(VPY) bench/run.py

clean:
	rm -rf $(VENV) .bench build .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
