# Health Predict: `make demo` and `make test` each work from a fresh clone (they run setup first).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,serve
KERNEL := healthpredict

.PHONY: setup demo test test-fast lint format gallery bench-train bench-drift clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "Health Predict (.venv)"
	touch $(STAMP)

demo: setup
	$(BIN)/healthpredict demo

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check lib tests notebooks benchmarks
	$(BIN)/ruff format --check lib tests notebooks benchmarks

format: setup
	$(BIN)/ruff check --fix lib tests notebooks benchmarks
	$(BIN)/ruff format lib tests notebooks benchmarks

gallery: setup
	$(BIN)/healthpredict gallery

clean:
	rm -rf var rendered/*/ rendered/index.html .pytest_cache
