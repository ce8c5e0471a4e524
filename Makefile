# zmeshlib developer entry points. Every target creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# mkdocs-material prints a banner about its successor at every build: not in our output
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint format bench fuzz docs clean redis-server nftables

FUZZ_SECONDS ?= 60

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the C extensions are built at install: a change to their sources reinstalls
$(VENV)/.installed-dev: pyproject.toml setup.py $(wildcard src/zmeshlib/*.c src/zmeshlib/*/*.c) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.installed: pyproject.toml setup.py $(wildcard src/zmeshlib/*.c src/zmeshlib/*/*.c) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/zmesh demo

# the Redis store's tests start real redis-server processes: install Debian's package when
# it is missing and we may (root, apt-get), else say what to do
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server is missing: installing Debian's package for the Redis store's tests"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q redis-server >/dev/null 2>&1 \
	      || { apt-get update -q && apt-get install -y -q redis-server; } \
	      || exit 1; \
	  else \
	    echo "make test needs redis-server (the Redis store's tests run a real one): install it" \
	      "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)," \
	      "or run make test as root on Debian to have it installed" >&2; \
	    exit 1; \
	  fi; }
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server is not on PATH" >&2; exit 1; }

# the network-fault tests (root only: they make network namespaces) drop packets and
# redirect them with nftables: as root, install Debian's package when it is missing
nftables:
	@if [ "$$(id -u)" = 0 ] && ! command -v nft >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  echo "nft is missing: installing Debian's nftables package for the network-fault tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q nftables >/dev/null 2>&1 \
	    || { apt-get update -q && apt-get install -y -q nftables; } \
	    || exit 1; \
	fi

test: $(VENV)/.installed-dev redis-server nftables
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
