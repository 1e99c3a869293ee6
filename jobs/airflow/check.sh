#!/usr/bin/env bash
# make airflow-check: check jobs/airflow/dags with Apache Airflow itself, in its own
# virtualenv (jobs/airflow/.venv-airflow, made once; remade when requirements.txt
# changes). A temporary AIRFLOW_HOME with the default SQLite database; the local DAG
# calls the project's own nibt-audit / nibt-report (.venv/bin) on tiny local data.
# Nothing is reached but package registries (first install) and 127.0.0.1.
# NIBT_AIRFLOW_CHECK_RAY=1 also runs nibt_audit_ray against a private Ray head on
# 127.0.0.1 (about a minute more).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
venv=${NIBT_AIRFLOW_VENV:-$here/.venv-airflow}
project_bin=${NIBT_PROJECT_BIN:-$repo/.venv/bin}
requirements=$here/requirements.txt
stamp=$venv/.installed

[[ -x $project_bin/nibt-audit ]] || {
    echo "airflow-check: no $project_bin/nibt-audit (run make install first)" >&2
    exit 2
}
if [[ ! -f $stamp ]] || ! cmp -s "$requirements" "$stamp"; then
    echo "airflow-check: installing Apache Airflow into $venv" >&2
    [[ -x $venv/bin/python ]] || "${PY:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" 2>&1 |
        grep -v "^WARNING: Location" || true
    "$venv/bin/python" -c "import airflow.sdk, airflow.providers.standard.operators.bash"
    cp "$requirements" "$stamp"
fi

work=$(mktemp -d /tmp/nibt-airflow-check.XXXXXX)
head_pid=""
cleanup() {
    if [[ -n $head_pid ]]; then
        kill -TERM "$head_pid" 2>/dev/null || true
        wait "$head_pid" 2>/dev/null || true
    fi
    if [[ -n ${NIBT_AIRFLOW_CHECK_KEEP:-} ]]; then
        echo "airflow-check: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

export AIRFLOW_HOME=$work/airflow
export AIRFLOW__CORE__DAGS_FOLDER=$here/dags
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=False SCARF_ANALYTICS=false DO_NOT_TRACK=true
export NIBT_AUDIT_BIN=$project_bin/nibt-audit NIBT_REPORT_BIN=$project_bin/nibt-report
export NIBT_LOG_DIR=$work/logs
export NIBT_AIRFLOW_RETRIES=0 # dag.test() would wait out a retry delay
unset NIBT_ENV_FILE NIBT_REPORT_ROOT NIBT_INPUT NIBT_OUTPUT_ROOT NIBT_MODEL NIBT_AUDIT_ARGS RAY_ADDRESS NIBT_REPO

# tiny inputs: 4 pairs; and 4 pairs beside a file named *.parquet that is not Parquet
"$project_bin/python" - "$work" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, ".")
from tests.data import pairs_table, write_table

work = Path(sys.argv[1])
for name in ("in-good", "in-partial"):
    (work / name).mkdir()
    write_table(pairs_table(4, seed=7), str(work / name / "shard-0.parquet"))
(work / "in-partial" / "shard-1.parquet").write_bytes(b"PAR1 not parquet")
EOF

report=run
if ! "$project_bin/python" -c "import pipeline.cli.report" 2>/dev/null; then
    report=skip
    echo "airflow-check: pipeline.cli.report does not import yet: the report task is marked" \
        "successful without running" >&2
fi

started=$SECONDS
"$venv/bin/airflow" db migrate >"$work/migrate.log" 2>&1 || {
    tail -40 "$work/migrate.log" >&2
    exit 1
}
migrate_s=$((SECONDS - started))

ray_args=()
if [[ ${NIBT_AIRFLOW_CHECK_RAY:-0} == 1 ]]; then
    export RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 NIBT_RAY_BIN=$project_bin/ray
    "$project_bin/python" -m tests.jobs.rayhead "$work/ray-address" >"$work/ray-head.log" 2>&1 &
    head_pid=$!
    for _ in $(seq 240); do
        [[ -s $work/ray-address ]] && break
        kill -0 "$head_pid" 2>/dev/null || break
        sleep 0.5
    done
    [[ -s $work/ray-address ]] || {
        tail -40 "$work/ray-head.log" >&2
        echo "airflow-check: the Ray head did not start" >&2
        exit 1
    }
    ray_args=(--ray-address "$(cat "$work/ray-address")")
fi

log=$work/check.log
status=0
"$venv/bin/python" "$here/check_dag.py" --dags "$here/dags" --input "$work/in-good" \
    --partial-input "$work/in-partial" --output-root "$work/out" --report "$report" "${ray_args[@]}" \
    --overrides "model.pretrained=null model.steps=2 model.image_layer=1 model.text_layer=1" \
    >"$log" 2>&1 || status=$?
if [[ $status -ne 0 ]]; then
    tail -80 "$log" >&2
    echo "airflow-check: FAILED (exit $status)" >&2
    exit 1
fi
# the failed audit task's log carries the run summary and the partial-run explanation
if ! grep -q '"status": "partial"' "$log" || ! grep -q "PARTIAL (exit 3)" "$log"; then
    tail -80 "$log" >&2
    echo "airflow-check: FAILED: the partial run's summary is not in the audit task's log" >&2
    exit 1
fi
# a run without a model fails its audit task at once, naming the options
if ! grep -q "no model: set the model param or NIBT_MODEL to one of: demo" "$log"; then
    tail -80 "$log" >&2
    echo "airflow-check: FAILED: the run without a model did not say why" >&2
    exit 1
fi
echo "airflow-check: ok: $(tail -1 "$log") db_migrate_s=$migrate_s total_s=$SECONDS"
