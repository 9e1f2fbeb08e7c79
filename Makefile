# Quick start: `make demo`, then `make test`. Both create .venv from this project's
# own files on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= test,dask,bench

.PHONY: venv test test-fast demo bench bench-quick proto clean

# setup.py builds the C core (psi/csrc) into the package; editing it reinstalls.
$(STAMP): pyproject.toml constraints.txt scripts/install-env setup.py $(wildcard psi/csrc/*)
	PYTHON=$(PYTHON) EXTRAS=$(EXTRAS) scripts/install-env $(VENV)
	@touch $@

venv: $(STAMP)

# The whole suite runs on the fastest path this CPU has (PSI_NATIVE=auto); the core's
# tests then run again on the portable C path and on the Python fallback.
CORE_TESTS := tests/test_vectors.py tests/test_core_properties.py tests/test_protocol.py
test: $(STAMP)
	$(BIN)/python -m pytest
	PSI_NATIVE=portable $(BIN)/python -m pytest -q $(CORE_TESTS)
	PSI_NATIVE=off $(BIN)/python -m pytest -q $(CORE_TESTS)

# Everything but the slow end-to-end cases, for a quick loop while editing.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# Each figure is journalled as it is measured; `make bench RESUME=1` continues an
# interrupted run instead of starting again.
JOURNAL := benchmarks/out/journal.jsonl
bench: $(STAMP)
	$(if $(RESUME),,rm -f $(JOURNAL))
	$(BIN)/python -m benchmarks.run --journal $(JOURNAL)

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

# Regenerate the gRPC code committed under proto/ (tests fail when it is stale).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto \
		--grpc_python_out=proto proto/psi_proto/v2/matcher.proto

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
