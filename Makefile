# The two commands a new machine needs:  make run   and   make test
VENV ?= .venv
PYTHON ?= python3
CONFIG ?= config/gateway.toml
BIN = $(VENV)/bin

.PHONY: run test lint pytest system-deps bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m compileall -q gateway  # editable installs are not compiled ahead
	touch $@

system-deps:
	./scripts/install-system-deps.sh

## run: set up, make a secret on first use, and serve with the example config
run: $(BIN)/.installed
	$(BIN)/dicom-gateway init-secret var/secret.key --exist-ok
	$(BIN)/dicom-gateway serve --config $(CONFIG)

## test: set up (Python packages and dcmtk, dicom3tools), lint, type-check, run every test
test: $(BIN)/.installed system-deps lint pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy

pytest: $(BIN)/.installed
	$(BIN)/python -m pytest

## bench: end-to-end speed against dcmtk, offline against dicognito and dcmanon (not a test; takes minutes)
bench: $(BIN)/.installed system-deps
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m compileall -q gateway  # as installed: no compiling at each command's start
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
