# Lifecycle — `make help` lists the targets.
# Everything runs from the project's own virtualenv (.venv), created on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
# Local state (embedded PostgreSQL, sample world, MLflow, Airflow): override to move it.
LIFECYCLE_HOME ?= $(CURDIR)/.lifecycle
export LIFECYCLE_HOME
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test lint format lock bench pipeline airflow-init compose-config clean clean-state

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	@touch $@

install: $(VENV)/.installed ## Create .venv with the pinned stack (requirements.lock) and the package

demo: install ## Run the main job: the daily DAG through Airflow on a sample world (honours LIFECYCLE_HOME)
	$(BIN)/lifecycle demo

test: install ## Install what tests need and run the test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

pipeline: install ## Run lifecycle_daily through Airflow: DATE=YYYY-MM-DD, or START=.. END=..
	@if [ -n "$(DATE)" ]; then $(BIN)/lifecycle pipeline run --date $(DATE); \
	else $(BIN)/lifecycle pipeline backfill --start $(START) --end $(END); fi

airflow-init: install ## Create/migrate the local Airflow home (under LIFECYCLE_HOME)
	$(BIN)/lifecycle airflow init

lint: install ## Lint and check formatting (ruff)
	$(BIN)/ruff check lifecycle ml dags tests bench
	$(BIN)/ruff format --check lifecycle ml dags tests bench

format: install ## Format the code (ruff)
	$(BIN)/ruff check --fix lifecycle ml dags tests bench
	$(BIN)/ruff format lifecycle ml dags tests bench

lock: | $(BIN)/python ## Re-resolve requirements.lock from pyproject.toml
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra celery --python-version 3.11 -o requirements.lock

bench: install ## Run the benchmarks (they print their figures)
	$(BIN)/python bench/bench_generate.py
	$(BIN)/python bench/bench_load.py
	$(BIN)/python bench/bench_dbt.py
	$(BIN)/python bench/bench_activation.py
	$(BIN)/python bench/bench_quality.py
	$(BIN)/python bench/bench_clv.py
	$(BIN)/python bench/bench_ml.py
	$(BIN)/python bench/bench_report.py
	$(BIN)/python bench/bench_pipeline.py

compose-config: ## Validate docker-compose.yml (needs docker-compose or docker compose)
	@if command -v docker-compose >/dev/null; then docker-compose -f docker-compose.yml --env-file .env.example config -q; \
	else docker compose -f docker-compose.yml --env-file .env.example config -q; fi && echo "docker-compose.yml is valid"

clean-state: install ## Stop the embedded warehouse and delete LIFECYCLE_HOME
	-$(BIN)/lifecycle warehouse down
	rm -rf "$(LIFECYCLE_HOME)"

clean: clean-state ## Also delete the virtualenv
	rm -rf $(VENV)
