# Two commands on a fresh machine with Python 3.11+ and make: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ./data

.PHONY: run test test-slow lint tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pki-edge --data $(DATA) up --demo

# The tests drive the real `openssl` CLI, and wrk with the benchmark's Lua scripts: install them when
# missing (Debian/Ubuntu, as root or with sudo).
tools:
	@missing=$$(for t in openssl wrk; do command -v $$t >/dev/null 2>&1 || echo $$t; done); \
	[ -z "$$missing" ] || { \
	  echo "installing" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) tools lint
	$(BIN)/pytest -m "not slow" -q

test-slow: $(STAMP) tools
	$(BIN)/pytest -m slow -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# The benchmark against nginx, cfssl and openssl (bench/README.md): `make bench` is the quick mode (a few
# minutes), `make bench-full` the full one (1,000,000 serials; about an hour). Missing tools (wrk,
# nginx-light, golang-cfssl) are installed with apt-get when run as root, otherwise the command is printed.
# The interpreter's build matters (bench/README.md): PYTHON=/usr/bin/python3.11 VENV=.venv-opt measures
# pki-edge under that one; BENCH_ARGS passes options to bench.run (e.g. --alt-python .venv/bin/python).
BENCH_ARGS ?=
.PHONY: bench bench-full
bench: $(STAMP)
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet 'matplotlib>=3.8'
	$(BIN)/python -m bench.run --mode quick --install-tools $(BENCH_ARGS)

bench-full: $(STAMP)
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet 'matplotlib>=3.8'
	$(BIN)/python -m bench.run --mode full --install-tools $(BENCH_ARGS)
