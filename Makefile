# `make demo` runs the demo, `make test` the checks and tests; both create .venv with plain pip when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,deploy]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pathme demo --out demo_output

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf demo_output .pytest_cache .ruff_cache
