# `make demo` runs the demo, `make test` the checks and tests; both create .venv with plain pip when it is missing.
# pip runs with -qq: its errors still print; the warnings a site pip configuration adds (one per missing local
# index folder) and setuptools' editable-install notice do not bury the demo's output
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format clean

$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet --quiet -c constraints.txt -e '.[dev,deploy]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pathme demo --output-dir demo_output

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

# the developer's loop: every test but the slow ones (minutes of CPU each), in under 5 minutes on 2 cores
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf demo_output .pytest_cache .ruff_cache
