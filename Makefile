# Two commands work on a fresh machine: `make demo` and `make test`.
# The venv is created once; a stamp file makes a second run skip the install.
SHELL   := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
DATA    ?= data/synth
# extra arguments for jobs/demo.py, e.g. DEMO_ARGS="train.epochs=2" (key=value overrides of the training job)
DEMO_ARGS ?=

export RAY_AUTH_MODE ?= disabled
export RAY_DATA_DISABLE_PROGRESS_BARS ?= 1
export AWS_EC2_METADATA_DISABLED ?= true

.PHONY: install demo test gpu-check bench-synth clean

install: $(STAMP)

# pip's "Location ... is ignored" warnings come from this machine's pip.conf, not from us: filtered out.
QUIET   := 2>&1 | { grep -v "^WARNING: Location" || true; }

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first: the pinned CPU wheel, so the loose torch>=2.4 below installs nothing more (README: Installing)
	$(BIN)/pip install -q $(TORCH) $(QUIET)
	# requirements.lock pins every other package (tested versions, and no resolver backtracking on install)
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]' $(QUIET)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py --data $(DATA) $(DEMO_ARGS)

# Two test processes (pytest-xdist), each with a Ray instance of its own, handed whole files in the order
# tests/conftest.py sets (Ray jobs first; xdist would otherwise start with the files holding most tests): one process
# leaves about a third of 2 cores idle while Ray starts processes and servers answer. TEST_PROCS=0: one process.
TEST_PROCS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_PROCS) --dist loadfile --no-loadscope-reorder

# the GPU path (AMP, channels_last, torch.compile, NCCL, ONNX Runtime CUDA) on this machine's GPU; exits 0 without one
gpu-check: $(STAMP)
	$(BIN)/python jobs/gpu_check.py

bench-synth: $(STAMP)
	$(BIN)/python jobs/benchmark_synth.py

clean:
	rm -rf $(VENV) data/synth demo_out
