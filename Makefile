# Spindle: every target sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SDK_VERSION := 0.163.0

.PHONY: setup test lint unit run bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The SDK the end-to-end tests drive; --no-deps skips its 360 MB bundled Codex binary.
	$(BIN)/python -m pip install --quiet --no-deps 'openai-codex==$(SDK_VERSION)'
	touch $(STAMP)

# mypy cannot follow the editable install's import hook, so it checks a tree of symlinks
# shaped like the installed package: spindle/{__init__.py,actors,protocol,persistence}.
TYPECHECK := $(VENV)/typecheck

lint: setup
	$(BIN)/ruff check actors protocol persistence tests
	mkdir -p $(TYPECHECK)/spindle
	ln -sfn ../../../actors/api/__init__.py $(TYPECHECK)/spindle/__init__.py
	for d in actors protocol persistence; do ln -sfn ../../../$$d $(TYPECHECK)/spindle/$$d; done
	cd $(TYPECHECK) && ../bin/mypy --config-file ../../pyproject.toml -p spindle --exclude 'spindle/actors/api/'

unit: setup
	$(BIN)/pytest

test: lint unit

run: setup
	$(BIN)/spindle load --threads 300 --turns 3

bench: setup
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
