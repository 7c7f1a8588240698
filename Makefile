# anomaly_attn — `make run` (the main job) and `make test` (the test suite) set everything up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export ANOMALY_ATTN_DATA_DIR ?= $(CURDIR)/data
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: help install run test test-slow lint bench clean paper paper-smoke elpv

help:  ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install the package with its dev extra

run: $(STAMP)  ## Train + evaluate on the embedded textures (3 categories, CPU, a few minutes); print the table
	rm -rf outputs/quickstart
	$(PY) -m anomaly_attn.train -m experiment=quickstart 'category=glob(*)'
	$(PY) -m anomaly_attn.report outputs/quickstart/multirun --rows category --cols model
	@echo "Figures: outputs/quickstart/multirun/report/qualitative_conv_ae.png (selected maps), roc.png, per_defect.png;"
	@echo "synthetic validation samples: outputs/quickstart/multirun/*/figures/validation_samples.png"

# Paper tables: each is a preset conf/experiment/NAME.yaml (its sweep + a `report:` block).
# `make paper-NAME` runs one (e.g. paper-mvtec_layers, or paper-mvtec_layers_smoke for the tiny CPU
# version); re-running resumes (finished jobs are skipped). Extra overrides: ARGS="trainer=gpu"; other
# seeds than the preset's `seeds:` (0,1,2 for the real presets): SEEDS=0.
paper: $(STAMP)  ## All paper sweeps + tables/figures (paper-NAME for one; ARGS="trainer=gpu dataset.root=...", SEEDS=0)
	$(PY) experiments/paper.py --all $(if $(SEEDS),--seeds $(SEEDS)) $(if $(ARGS),-- $(ARGS))

paper-smoke: $(STAMP)  ## The tiny *_smoke variants of every paper table (embedded textures, CPU)
	$(PY) experiments/paper.py --all --smoke $(if $(ARGS),-- $(ARGS))

paper-%: $(STAMP)
	$(PY) experiments/paper.py $* $(if $(SEEDS),--seeds $(SEEDS)) $(if $(ARGS),-- $(ARGS))

# Real data: ELPV solar cells (the elpv-dataset package, in the dev extra; `pip install '.[elpv]'`
# otherwise). conv_ae at 128², 20 epochs, on mono and poly (seeds 0,1,2; about 10 min per seed on 2 cores,
# estimated from 1-epoch runs), the classical detectors on the same split (seconds), then the table:
# image AUROC with 95 % intervals. SEEDS=0 runs one seed; ARGS="trainer.max_epochs=1" a quick check.
elpv: $(STAMP)  ## ELPV (real solar-cell images): train sweep + classical detectors + the real-data table (SEEDS=0)
	$(PY) experiments/paper.py elpv_study $(if $(SEEDS),--seeds $(SEEDS)) $(if $(ARGS),-- $(ARGS))

test: $(STAMP)  ## Run the default test suite (unit + quick integration, < 15 min on 2 cores)
	$(PY) -m pytest -q

test-slow: $(STAMP)  ## Run the slow end-to-end tests too
	$(PY) -m pytest -q -m slow

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check anomaly_attn tests benchmarks experiments setup.py

bench: $(STAMP)  ## Benchmarks against bare references (metrics, train, test maps); rewrite BENCHMARKS.md
	ANOMALY_ATTN_PROGRESS=0 $(PY) -m benchmarks.run_all

clean:  ## Remove outputs and caches (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache
