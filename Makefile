# Developer and demo entry points. `make tag IMAGES=dir` and `make test` set everything up first.
VENV ?= .venv
BIN = $(VENV)/bin
IMAGES ?= ./images
TAGGER_HOME ?= .tagger
export TAGGER_HOME

.PHONY: setup tag test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so that nothing else pulls another build of it
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# Tag a local folder on the embedded default (SQLite + filesystem broker under $(TAGGER_HOME)).
tag: setup
	$(BIN)/alembic upgrade head
	$(BIN)/celery -A worker worker -P prefork -c 1 --loglevel INFO \
	    --logfile $(TAGGER_HOME)/worker.log --pidfile $(TAGGER_HOME)/worker.pid --detach
	$(BIN)/producer enqueue --dir $(IMAGES)
	$(BIN)/producer wait; status=$$?; kill `cat $(TAGGER_HOME)/worker.pid`; exit $$status
	$(BIN)/producer export --output $(TAGGER_HOME)/results.jsonl
	@echo "labels: $(TAGGER_HOME)/results.jsonl"

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m benchmarks.run
