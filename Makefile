# nibt-audit: one-command set-up, demo, tests, benchmarks.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=
# AIRFLOW_CHECK_RAY=1 also runs the Ray-cluster DAG against a private Ray head on 127.0.0.1.
AIRFLOW_CHECK_RAY ?= 0

.PHONY: install test lint format bench bench-gpu reliability airflow-check demo demo-model \
	evaluate report-screenshot clean

install: $(STAMP)

# Re-installs only when the project's requirements change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import pipeline, torch, open_clip, ray, pyarrow, s3fs, hydra, moto, captum"
	touch $(STAMP)

# The whole suite: unit, integration (real Ray, moto S3 on 127.0.0.1), reliability, report, jobs, demo.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fault-injection suite alone; its figures go to bench-results/reliability.json.
reliability: install
	$(BIN)/python -m pytest tests/reliability -p no:cacheprovider

# The Airflow DAGs checked with Apache Airflow itself, in its own venv (jobs/airflow/.venv-airflow).
airflow-check: install
	NIBT_AIRFLOW_CHECK_RAY=$(AIRFLOW_CHECK_RAY) PY=$(PY) bash jobs/airflow/check.sh

lint: install
	$(BIN)/ruff check pipeline tests jobs

format: install
	$(BIN)/ruff check --fix pipeline tests jobs

# Speed and memory, each figure beside its peer from the same run (JSON on stdout).
bench: install
	$(BIN)/python -m tests.bench

# On a machine with a GPU: engine and job pairs/s, TFLOP/s, GPU utilisation (< 5 minutes).
bench-gpu: install
	$(BIN)/python -m tests.bench.gpu --out bench-results/gpu.json

clean:
	rm -rf $(VENV) jobs/airflow/.venv-airflow .pytest_cache build *.egg-info
