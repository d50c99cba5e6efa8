# The few verbs a newcomer needs. Each target makes its own virtual environment
# in .venv and installs the package there (the Cython build included).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q '.[test]'

run: install
	$(BIN)/prometheus-gateway serve

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict proxy
	PYTHON=$(BIN)/python bash tests/ensure_redis.sh
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) build *.egg-info _fastpath/*.so _fastpath/_sse_c.c
