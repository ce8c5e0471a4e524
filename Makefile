# zmeshlib developer entry points. Every target creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint format bench fuzz docs clean

FUZZ_SECONDS ?= 60

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the C extensions are built at install: a change to their sources reinstalls
$(VENV)/.installed-dev: pyproject.toml setup.py $(wildcard src/zmeshlib/*.c src/zmeshlib/*/*.c) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.installed: pyproject.toml setup.py $(wildcard src/zmeshlib/*.c src/zmeshlib/*/*.c) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/zmesh demo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests examples benchmarks

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests examples benchmarks
	$(BIN)/ruff check --fix src tests examples benchmarks

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_rtt.py
	$(BIN)/python benchmarks/bench_authz_pubsub.py
	$(BIN)/python benchmarks/bench_authz.py
	$(BIN)/python benchmarks/bench_revocation.py

# coverage-guided fuzzing of every parser that reads the network or a file (atheris)
fuzz: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet atheris
	$(BIN)/python tests/fuzz/run_all.py --seconds $(FUZZ_SECONDS)

docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict
	@echo "site built in ./site"

clean:
	rm -rf $(VENV) build dist site .pytest_cache
