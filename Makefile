# nibt-audit: one-command set-up, demo, tests, benchmarks.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=
# make demo DEMO_ARGS="--pairs 200 --shards 2" for a smaller run
DEMO_ARGS ?=
# AIRFLOW_CHECK_RAY=1 also runs the Ray-cluster DAG against a private Ray head on 127.0.0.1.
AIRFLOW_CHECK_RAY ?= 0

.PHONY: install test test-fast lint format bench bench-gpu reliability airflow-check demo demo-compare \
	demo-model evaluate report-screenshot clean

install: $(STAMP)

# Re-installs only when the project's requirements change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import pipeline, torch, open_clip, ray, pyarrow, s3fs, hydra, moto, captum"
	touch $(STAMP)

# Offline, in minutes: demo dataset -> moto S3 on 127.0.0.1 -> nibt-audit on a local Ray
# with the shipped demo model -> report; results and report in demo-output/.
demo: install
	$(BIN)/python -m pipeline.demo.run $(DEMO_ARGS)

# A second demo night (the same scenes, the shortcut's watermark gone) audited and compared
# with the first: demo-output/compare.html, whose first finding is the planted change.
demo-compare: install
	$(BIN)/python -m pipeline.demo.run --compare $(DEMO_ARGS)

# Retrain the shipped demo model reproducibly (2 CPU cores; see pipeline/engine/weights/nibt-demo.json).
demo-model: install
	$(BIN)/python -m pipeline.demo.train --out pipeline/engine/weights

# Attribution quality against the synthetic ground truth (pointing game, text shares, metrics).
evaluate: install
	$(BIN)/python -m pipeline.demo.evaluate --out bench-results/evaluate.json

# The whole suite: unit, integration (real Ray, moto S3 on 127.0.0.1), reliability, report, jobs, demo.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop while editing (about 4 minutes on 2 cores): unit tests and the refusals that
# come before Ray starts, without those marked slow. `make test` is what CI runs.
test-fast: install
	$(BIN)/python -m pytest tests/unit tests/integration/test_refusals.py -m "not slow" $(PYTEST_ARGS)

# The fault-injection suite alone; its figures go to bench-results/reliability.json.
reliability: install
	$(BIN)/python -m pytest tests/reliability -p no:cacheprovider

# The Airflow DAGs checked with Apache Airflow itself, in its own venv (jobs/airflow/.venv-airflow).
airflow-check: install
	NIBT_AIRFLOW_CHECK_RAY=$(AIRFLOW_CHECK_RAY) PY=$(PY) bash jobs/airflow/check.sh

# Style (ruff) and the package's layering contracts (pyproject [tool.importlinter]).
lint: install
	$(BIN)/ruff check pipeline tests benchmarks jobs
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix pipeline tests benchmarks jobs

# Speed and memory, each figure beside its peer from the same run (JSON on stdout).
bench: install
	$(BIN)/python -m benchmarks --out bench-results

# On a machine with a GPU, in sections of at most 4 minutes (8 in all): the engine by phase, the
# decode paths, the job; exits 1 on any failure. BENCH_GPU_ARGS="--sections engine" for one.
BENCH_GPU_ARGS ?=
bench-gpu: install
	$(BIN)/python -m benchmarks.gpu --out bench-results/gpu.json $(BENCH_GPU_ARGS)

# The reports as a person sees them: the demo's report and its comparison of two nights (made by
# `make demo-compare` when missing), screenshotted in headless Chromium (Debian: apt-get install -y
# chromium) to docs/img/report.png and docs/img/report-compare.png (the README shows the first).
report-screenshot: install
	test -f demo-output/compare.html || $(BIN)/python -m pipeline.demo.run --compare $(DEMO_ARGS)
	$(BIN)/python -m pipeline.devtools.screenshot demo-output/report.html docs/img/report.png --height 2200 --no-trim
	$(BIN)/python -m pipeline.devtools.screenshot demo-output/compare.html docs/img/report-compare.png --height 2200 --no-trim

clean:
	rm -rf $(VENV) jobs/airflow/.venv-airflow .pytest_cache build *.egg-info
