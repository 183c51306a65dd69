# One-word tasks. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python
# The torch to install when none is present. GPU users: install your CUDA build of torch first;
# `make install` keeps whichever torch is already there.
TORCH ?= torch==2.13.0
TRAIN_ARGS ?=

.PHONY: help install train test test-all lint format typecheck bench

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install:  ## install lmpre (editable) with test and dev tools, keeping the installed torch
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -c "import torch; print('torch==' + torch.__version__)" > .torch-constraint.txt
	$(PYTHON) -m pip install -c .torch-constraint.txt -e ".[test,dev]"
	@# litdata declares torchvision but never needs it for text; a torchvision built for another
	@# torch breaks `import lightning`, so it goes.
	$(PYTHON) -m pip uninstall -y torchvision
	@rm -f .torch-constraint.txt

train:  ## the Quick start job; pass overrides with TRAIN_ARGS="data.source=DIR …"
	$(PYTHON) -m lmpre.train model=gpt data=wiki $(TRAIN_ARGS)

test:  ## the default test suite (everything but `slow`), with line coverage of lmpre/
	$(PYTHON) -m pytest

test-all:  ## every test, the slow ones too
	$(PYTHON) -m pytest -m ""

lint:  ## ruff lint and format check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## apply ruff's fixes and formatting
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

typecheck:  ## mypy on lmpre/
	$(PYTHON) -m mypy lmpre

bench:  ## benchmarks (scripts/bench_*.py), printing side-by-side ratios
	for f in scripts/bench_*.py; do $(PYTHON) $$f || exit 1; done
