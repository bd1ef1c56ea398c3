# The two commands users need: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test test-unit docs demo demo-ipu clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when setup.cfg changed since the last install.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Layers only point down (import-linter contract in setup.cfg), lint rules in pyproject.toml, the documentation
# site builds strictly (broken links, missing pages and docstrings that do not render fail), then the suite, one
# process per core (a test file stays in one process: its module fixtures and case order are kept).
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir .site
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The fast tier alone (no Trainer, no subprocess): about a minute.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The documentation site at http://127.0.0.1:8000 (docs/, mkdocs.yml).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

demo: $(STAMP)
	$(BIN)/lightning-frozen demo

# The IPU path on the CPU emulator (2 replicas x 2 stages); uses the data `make demo` writes.
demo-ipu: $(STAMP)
	$(BIN)/lightning-frozen synthetic --root data/synthetic_msrvtt --layout msrvtt
	$(BIN)/lightning-frozen fit --config configs/demo_ipu.yaml

clean-demo:
	rm -rf data/synthetic_msrvtt runs/demo
