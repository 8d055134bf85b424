# genre-sweep: `make demo` runs the main job on the embedded default; `make test` installs and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

DEMO_DIR       ?= demo-run
DEMO_GENRES    ?= blues,classical,jazz,metal,reggae
DEMO_PER_GENRE ?= 20
DEMO_SECONDS   ?= 15
DEMO_TRIALS    ?= 8

.PHONY: install demo test test-slow test-all lint bench clean constraints

install: $(STAMP)

# Exactly the versions CI tested (constraints.txt), so a new release upstream cannot change a fresh install.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The embedded default: a generated corpus -> Ray Data prepare on local Ray -> a sweep fine-tuning the shipped
# small pretrained AST (Optuna TPE + ASHA on Ray Tune) -> the top 3 configurations retrained with 2 seeds each,
# the best mean on validation chosen and tested -> report -> predictions for songs no trial saw (another seed).
demo: $(STAMP)
	$(BIN)/genre-sweep synth --out $(DEMO_DIR)/corpus --genres $(DEMO_GENRES) --per-genre $(DEMO_PER_GENRE) \
		--seconds $(DEMO_SECONDS) --overwrite
	$(BIN)/genre-sweep prepare --source $(DEMO_DIR)/corpus --out $(DEMO_DIR)/shards --overwrite \
		--effects echo,highpass,lowpass --split 0.6,0.2,0.2
	rm -rf $(DEMO_DIR)/sweeps
	$(BIN)/genre-sweep sweep --shards $(DEMO_DIR)/shards --storage $(DEMO_DIR)/sweeps --name demo \
		--space tune/spaces/demo.yaml --trials $(DEMO_TRIALS) --retrain-seeds 2
	$(BIN)/genre-sweep synth --out $(DEMO_DIR)/unseen --genres $(DEMO_GENRES) --per-genre 3 --seconds $(DEMO_SECONDS) \
		--seed 1 --overwrite
	$(BIN)/genre-sweep predict $(DEMO_DIR)/unseen --model $(DEMO_DIR)/sweeps/demo/report/model \
		--out $(DEMO_DIR)/predictions.csv
	@echo "demo: report in $(DEMO_DIR)/sweeps/demo/report/summary.md"
	@echo "  study:  $(BIN)/optuna-dashboard sqlite:///$$(pwd)/$(DEMO_DIR)/sweeps/demo/optuna.db"
	@echo "  trials: $(BIN)/tensorboard --logdir $(DEMO_DIR)/sweeps/demo"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The default suite: everything but the tests marked slow. About 8 minutes on 2 cores.
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" --durations=15

# The slow tests: multi-node and autoscaling clusters on this machine, subprocess sweeps, the sweep fault
# injections (S3 outage, killed trial, killed driver). CI runs them after `make test` (.ci/run).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow --durations=15

test-all: test test-slow

# The versions every cluster node installs (cluster.yaml's setup_commands): what this virtualenv holds.
constraints: $(STAMP)
	( echo "# Every node installs exactly these versions: \`pip install -c constraints.txt -e .\` (cluster.yaml's setup_commands)."; \
	  echo "# The versions CI tested on Python 3.11; regenerate with \`make constraints\` after changing pyproject.toml's dependencies."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -vi '^genre.sweep' ) > constraints.txt

bench: $(STAMP)
	$(BIN)/python bench/prepare.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache *.egg-info
