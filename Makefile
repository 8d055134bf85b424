# genre-sweep: `make demo` runs the main job on the embedded default; `make test` installs and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

DEMO_DIR       ?= demo-run
DEMO_PER_GENRE ?= 8
DEMO_SECONDS   ?= 30
DEMO_EPOCHS    ?= 3

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The embedded default: a generated corpus -> Ray Data prepare on local Ray -> one training run of the tiny
# model -> test-set evaluation -> song-level predictions. (The sweep and retrain join this as they land.)
demo: $(STAMP)
	$(BIN)/genre-sweep synth --out $(DEMO_DIR)/corpus --per-genre $(DEMO_PER_GENRE) --seconds $(DEMO_SECONDS) --overwrite
	$(BIN)/genre-sweep prepare --source $(DEMO_DIR)/corpus --out $(DEMO_DIR)/shards --overwrite
	$(BIN)/genre-sweep inspect --shards $(DEMO_DIR)/shards
	rm -rf $(DEMO_DIR)/run
	$(BIN)/genre-sweep train --shards $(DEMO_DIR)/shards --out $(DEMO_DIR)/run --pretrained tiny \
		--num-train-epochs $(DEMO_EPOCHS) --learning-rate 3e-3 --batch-size 8 --gradient-accumulation-steps 1
	$(BIN)/genre-sweep evaluate --model $(DEMO_DIR)/run/model --shards $(DEMO_DIR)/shards --split test \
		--out $(DEMO_DIR)/eval
	$(BIN)/genre-sweep predict $(DEMO_DIR)/corpus/jazz --model $(DEMO_DIR)/run/model --out $(DEMO_DIR)/predictions.csv
	@echo "demo: shards in $(DEMO_DIR)/shards, run in $(DEMO_DIR)/run, test metrics and confusion.png in" \
		"$(DEMO_DIR)/eval, predictions in $(DEMO_DIR)/predictions.csv"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/prepare.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
