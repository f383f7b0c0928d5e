# Two commands work on a fresh machine: `make demo` and `make test`.
# The venv is created once; a stamp file makes a second run skip the install.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
DATA    ?= data/synth

export RAY_AUTH_MODE ?= disabled
export RAY_DATA_DISABLE_PROGRESS_BARS ?= 1
export AWS_EC2_METADATA_DISABLED ?= true

.PHONY: install demo test bench-synth clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the pinned CPU wheel, so the loose torch>=2.4 below installs nothing more (STACK.md)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py --data $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench-synth: $(STAMP)
	$(BIN)/python jobs/benchmark_synth.py

clean:
	rm -rf $(VENV) data/synth demo_out
