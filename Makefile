# Herald: `make run` starts the local stack, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-tools lint lock bench bench-sweep bench-rates bench-validation bench-validation-activity bench-uploads bench-outcomes bench-postman bench-ledger-copy bench-fairness bench-throttled bench-replies clean

# The tested set: every version pinned by requirements.lock; `local` is the local stack.
# A .venv left half-made (venv without ensurepip, an interrupted first run) or made by an
# older Python is made again.
NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 11))'
$(STAMP): pyproject.toml requirements.lock
	@if ! { test -x $(BIN)/pip && $(BIN)/python $(NEW_ENOUGH); }; then \
		$(PYTHON) $(NEW_ENOUGH) || { echo "Herald needs Python 3.11 or newer; $(PYTHON) is" \
			"$$($(PYTHON) -V 2>&1). Name one: make $(or $(MAKECMDGOALS),run) PYTHON=python3.11"; \
			exit 1; }; \
		echo "$(PYTHON) -m venv --clear $(VENV)"; $(PYTHON) -m venv --clear $(VENV); \
	fi
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev,local]'
	touch $(STAMP)

# After a change of pyproject.toml's dependencies: pin the newest versions that fit.
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --strip-extras --extra dev --extra local --no-emit-index-url \
		--no-emit-find-links --no-emit-trusted-host -o requirements.lock pyproject.toml

run: $(STAMP)
	$(BIN)/python -m deploy.local

# Two processes (pytest-xdist), each with its own stack: the suite waits on its stacks more
# than it computes, and serially it took 15 to 17 of CI's 20 minutes.
test: $(STAMP) test-tools
	$(BIN)/python -m pytest -q -n 2

# The browser tests (/docs, the dashboard) drive Debian's chromium through chromium-driver,
# the CLI's screen test runs in tmux, and README's tour runs curl: installed when missing and
# this runs as root; elsewhere the browser and screen tests skip, saying why, and the tour fails.
test-tools:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
		|| ! command -v tmux >/dev/null || ! command -v curl >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends chromium chromium-driver tmux \
				curl) \
				|| echo "chromium, tmux or curl could not be installed: their tests will skip"; \
		else \
			echo "chromium, chromedriver, tmux or curl missing and not root: their tests will skip"; \
		fi; \
	fi

# The fast tier alone: workflow behaviour on the time-skipping test server, no stack.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m fast

# Not part of `make test`: N=1000000 for the full run; results in bench/results/.
N ?= 100000
bench: $(STAMP)
	$(BIN)/python -m bench --n $(N) --receipts

# Herald at each batch size of SIZES (and N, so `N=1000000` adds that size) against one naive
# run and the lean ceiling; results in bench/results/sweep-*.json.
SIZES ?= 1000,10000,20000,100000
bench-sweep: $(STAMP)
	$(BIN)/python -m bench --sweep $(SIZES),$(N)

bench-rates: $(STAMP)
	$(BIN)/python -m bench.rates

bench-validation: $(STAMP)
	$(BIN)/python -m bench.validation

# The validation activity itself over a 1,000,000-row file, against PostgreSQL: peak RSS, CPU.
bench-validation-activity: $(STAMP)
	$(BIN)/python -m bench.validation_activity

bench-uploads: $(STAMP)
	$(BIN)/python -m bench.uploads

bench-outcomes: $(STAMP)
	$(BIN)/python -m bench.outcomes

# A 100-row batch of one account while N rows of another send, and two large batches side by
# side (N=1000000 for the issue's figure).
bench-fairness: $(STAMP)
	$(BIN)/python -m bench.fairness --n $(N)

# One Postman batch upload of ROWS rows (1000000 is the dialect's 40 MB): time and API RSS.
ROWS ?= 100000
bench-postman: $(STAMP)
	$(BIN)/python -m bench.uploads --postman --rows $(ROWS)

# Herald against an account the emulator limits to LIMIT requests in flight, LATENCY_MS each.
LIMIT ?= 100
LATENCY_MS ?= 200
bench-throttled: $(STAMP)
	$(BIN)/python -m bench.throttled --limit $(LIMIT) --latency-ms $(LATENCY_MS)

bench-ledger-copy: $(STAMP)
	$(BIN)/python -m bench.ledger_copy

# A reply's cost to the API from the last, middle and first rows of a batch of REPLY_ROWS
# rows with request-data columns.
REPLY_ROWS ?= 200000
bench-replies: $(STAMP)
	$(BIN)/python -m bench.replies --n $(REPLY_ROWS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

clean:
	rm -rf $(VENV) .herald
