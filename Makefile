# autoswarm — two commands for a fresh machine:
#   make demo   create .venv, install autoswarm + its CPU training extra, run the CPU demo
#   make test   create/update .venv with the dev extras and run the whole test suite

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first, pinned, so that pip never pulls a multi-GB CUDA build
# for the CPU demo. On a GPU machine: make demo TORCH=torch
TORCH  ?= torch==2.13.0
DEMO_DIR ?= demo
DEMO_TIME ?= 12m
DEMO_BUDGET ?= 60
DEMO_WORKERS ?= 2

.PHONY: demo test venv lint clean-demo sandbox

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[train,dev]"

# bubblewrap, the experiments' sandbox: installed where apt-get can (root), else said.
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { apt-get update -q && apt-get install -y -q bubblewrap; } ; } \
		|| echo "note: bubblewrap is not installed (apt-get install bubblewrap); the sandbox tests will fail"

demo: venv
	@test -d $(DEMO_DIR) || $(BIN)/autoswarm init $(DEMO_DIR) --template cpu
	$(BIN)/autoswarm run --workspace $(DEMO_DIR) --workers $(DEMO_WORKERS) --budget $(DEMO_BUDGET) \
		--time-limit $(DEMO_TIME) --tag demo-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/autoswarm results --workspace $(DEMO_DIR)
	$(BIN)/autoswarm status --workspace $(DEMO_DIR)

test: venv sandbox
	$(BIN)/ruff check autoswarm tests
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check autoswarm tests
	$(BIN)/ruff format --check autoswarm tests
	$(BIN)/mypy

clean-demo:
	rm -rf $(DEMO_DIR)
