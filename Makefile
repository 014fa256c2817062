# Herald: `make run` starts the local stack, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-rates bench-validation bench-uploads clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m deploy.local

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Not part of `make test`: N=1000000 for the full run; results in bench/results/.
N ?= 100000
bench: $(STAMP)
	$(BIN)/python -m bench --n $(N)

bench-rates: $(STAMP)
	$(BIN)/python -m bench.rates

bench-validation: $(STAMP)
	$(BIN)/python -m bench.validation

bench-uploads: $(STAMP)
	$(BIN)/python -m bench.uploads

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .herald
