# Developer and demo entry points. `make tag IMAGES=dir` and `make test` set everything up first.
VENV ?= .venv
BIN = $(VENV)/bin
IMAGES ?= ./images

.PHONY: setup tag test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so that nothing else pulls another build of it
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Tag a local folder on the embedded default (SQLite + file-backed broker under TAGGER_HOME).
tag: setup
	$(BIN)/producer tag $(IMAGES)

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -n 4

bench: setup
	$(BIN)/python -m benchmarks.run
