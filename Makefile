# The two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint types unit bench chaos clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/taskdb demo

lint: $(STAMP)
	$(BIN)/ruff check taskdb tests benchmarks examples migrations
	$(BIN)/ruff format --check taskdb tests benchmarks examples migrations
	$(BIN)/lint-imports

types: $(STAMP)
	$(BIN)/mypy taskdb examples tests/typing

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint types unit

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/import_time.py
	$(BIN)/python benchmarks/queue_throughput.py
	$(BIN)/python benchmarks/typed_tasks.py
	$(BIN)/python benchmarks/follow_latency.py
	$(BIN)/python benchmarks/stream_throughput.py --only text
	$(BIN)/python benchmarks/blob_refs.py
	$(BIN)/python benchmarks/dashboard.py

# kill -9s every second and a PostgreSQL restart under load (private cluster), then the
# checker: exits non-zero on any job lost, completed twice or with a wrong output
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --pg-jobs 5000 --pg-workers 4 --sqlite-jobs 2000 --sqlite-workers 3

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache taskdb.sqlite3*
