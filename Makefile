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

# The tests drive the real `openssl` CLI: install it when missing (Debian/Ubuntu, as root or with sudo).
tools:
	@command -v openssl >/dev/null 2>&1 || { \
	  echo "installing the openssl CLI"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openssl; }

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
