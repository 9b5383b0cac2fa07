# Quick start: `make demo` and `make test`; each sets up its own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test fuzz lint bench aarch64-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python models/demo.py

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# not part of `make test`: 100,000 artifact and 20,000 ONNX mutants in memory-limited workers with
# a time limit per input, then the property tests with the large "fuzz" budgets (tests/conftest.py)
fuzz: $(VENV)/.installed-dev
	$(BIN)/python -m tests.fuzz.campaign --artifacts 100000 --onnx 20000; status=$$?; \
	BNNC_FUZZ=1 $(BIN)/python -m pytest -p no:warnings tests/e2e/test_random_bnns.py \
		tests/runtime/test_artifact_fuzz.py tests/bnnc/test_loader_fuzz.py && exit $$status

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# every reference workload, example and corpus model at 1 and 2 threads (6-8 minutes on 2 busy cores);
# the table goes to benchmarks/results.md too
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_all.py

# the deploy folder of a corpus model run under AArch64 emulation and compared with this machine
# (installs qemu-user-static if needed; the emulated Python and wheels are cached in ~/.cache/bnnc);
# ARGS="--model M.onnx --input X.npy --threads 2" checks another model, parallel kernels included
aarch64-check: $(VENV)/.installed
	$(BIN)/python tools/aarch64_check.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
