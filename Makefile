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

# the dashboard's browser tests drive Debian's chromium (never a downloaded one);
# without it they skip, except under CI=true, where they fail
test: install
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium \
		|| (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "chromium could not be installed: the dashboard's browser tests need it"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict proxy
	sh deploy/ci/postgres-ready.sh
	PYTHON=$(BIN)/python bash tests/ensure_redis.sh
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/compare.py

clean:
	rm -rf $(VENV) build *.egg-info _fastpath/*.so _fastpath/*_c.c
