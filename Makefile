# Spindle: every target sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SDK_VERSION := 0.163.0
CODEX_VERSION := 0.171.0
CODEX_DIR := .cache/codex-$(CODEX_VERSION)
CODEX_BIN ?= $(CODEX_DIR)/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex
# Given on the command line or in the environment (`make bench CODEX_BIN=PATH`), the bench runs its
# app-server phases against that Codex too; left to its default above, against Spindle alone.
BENCH_CODEX_BIN := $(if $(filter file,$(origin CODEX_BIN)),,$(CODEX_BIN))

.PHONY: setup test lint unit run bench bench-versus clean interop check-bwrap

setup: $(STAMP) check-bwrap

# The sandbox needs bubblewrap; without it sandboxed commands are refused (and their tests skip).
check-bwrap:
	@command -v bwrap >/dev/null 2>&1 || echo "note: bubblewrap (bwrap) is not installed: sandboxed commands will be refused. Install it: sudo apt-get install bubblewrap (Debian/Ubuntu), sudo dnf install bubblewrap (Fedora)." >&2

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

# The real Codex on a CODEX_HOME Spindle writes (and the reverse): needs npm and the npm registry.
$(CODEX_BIN):
	mkdir -p $(CODEX_DIR)
	cd $(CODEX_DIR) && npm install --silent --no-audit --no-fund @openai/codex@$(CODEX_VERSION)

interop: setup $(CODEX_BIN)
	SPINDLE_CODEX_BIN=$(abspath $(CODEX_BIN)) $(BIN)/pytest tests/test_codex_interop.py

run: setup
	$(BIN)/spindle load --threads 300 --turns 3

bench: setup
	CODEX_BIN="$(BENCH_CODEX_BIN)" $(BIN)/python -m tests.bench

# Only the app-server phases, against Spindle and the Codex this Makefile installs (needs npm).
bench-versus: setup $(CODEX_BIN)
	CODEX_BIN="$(abspath $(CODEX_BIN))" $(BIN)/python -m tests.bench versus

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
