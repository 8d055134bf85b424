# genre-sweep: `make demo` runs the main job on the embedded default; `make test` installs and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

DEMO_DIR       ?= demo-run
DEMO_PER_GENRE ?= 8
DEMO_SECONDS   ?= 30

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The embedded default: a generated corpus -> Ray Data prepare on local Ray -> a check of the dataset.
# (The sweep, retrain and report join this target as they land.)
demo: $(STAMP)
	$(BIN)/genre-sweep synth --out $(DEMO_DIR)/corpus --per-genre $(DEMO_PER_GENRE) --seconds $(DEMO_SECONDS) --overwrite
	$(BIN)/genre-sweep prepare --source $(DEMO_DIR)/corpus --out $(DEMO_DIR)/shards --overwrite
	$(BIN)/genre-sweep inspect --shards $(DEMO_DIR)/shards
	@echo "demo: shards and manifest.json are in $(DEMO_DIR)/shards"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/prepare.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
