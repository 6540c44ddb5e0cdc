# flowplan: `make run` starts everything; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test bench lint schema setup clean browser

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "flowplan needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/flowplan up

setup: $(STAMP)
	$(BIN)/flowplan setup

# Two workers, a whole test module each (every module starts its own NATS and stack, every worker
# its own Postgres): 9.5 min instead of 15 on the 2-core CI machine. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

browser:  # Debian's Chromium, for the console's browser tests
	bash .ci/install-chromium

# make bench [PEER=litellm] [BENCH_ARGS="--part gateway --profile"]; wrk is installed (apt-get) if missing
bench: $(STAMP)
	$(BIN)/python -m bench $(if $(PEER),--peer $(PEER)) $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy proto libs services

schema: $(STAMP)  # the committed contract documents; tests/unit/test_schema.py fails when one drifts
	$(BIN)/python -m proto.schema > proto/schema.json
	$(BIN)/python -m proto.asyncapi > proto/asyncapi.json
	$(BIN)/python -m services.ingress.openapi > services/ingress/openapi.json
	$(BIN)/python -m services.gateway.openapi > services/gateway/openapi.json

clean:
	rm -rf $(VENV) .flowplan
