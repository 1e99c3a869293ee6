"""nibt-audit on Airflow 3: audit, then report, once per data interval.

Two DAGs, one per place the job runs:

* ``nibt_audit_local``: both steps run as bash tasks on the Airflow worker's machine
  (``nibt-audit`` starts an embedded Ray there, on 127.0.0.1).
* ``nibt_audit_ray``: both steps are submitted to an existing Ray cluster with
  ``ray job submit`` (``jobs/ray/submit.sh``), which waits for the job and exits
  with its own code (0 / 3 / 2 / 1): the maintained route, no Ray provider needed.

A run audits the date its data interval starts on (``{{ data_interval_start | ds }}``,
never "now") into ``<output_root>/dt=<date>``: a retry, a cleared task, a backfill
(``airflow backfill create --dag-id nibt_audit_local --from-date ... --to-date ...``)
or a manual run with ``run_date`` set resume that date's output, skipping what is
already committed. Exit 3 (some tasks failed) fails the audit task with the run
summary in its log; its retry recomputes only the failed tasks; the report waits for
a complete audit. ``max_active_runs=1``: runs never overlap. The ``model`` param has
no default unless ``NIBT_MODEL`` gives one: without a model the audit task exits 2
and lists the options (no run falls back to the demo model). The report compares
the date with the latest earlier date under ``output_root`` that has ``_SUCCESS``,
when there is one (``nibt-report baseline=previous``); the ``compare`` param
(default ``NIBT_COMPARE``, on unless ``0``) turns it off.

Deployment settings come from the worker's environment, not from params:
``NIBT_AUDIT_BIN`` / ``NIBT_REPORT_BIN`` (default: on PATH), ``NIBT_ENV_FILE``
(credentials, loaded by the task and never rendered into a template),
``NIBT_REPORT_ROOT``, ``NIBT_REPO`` (the checkout holding ``jobs/ray/submit.sh``),
``NIBT_RAY_BIN``; read when the file is parsed: ``NIBT_INPUT``,
``NIBT_OUTPUT_ROOT``, ``NIBT_MODEL``, ``NIBT_AUDIT_ARGS``, ``NIBT_RAY_ADDRESS`` (param defaults),
``NIBT_AIRFLOW_SCHEDULE`` (cron, UTC; default ``0 0 * * *``: a day's run starts when
the day ends), ``NIBT_AIRFLOW_RETRIES`` (2), ``NIBT_AIRFLOW_RETRY_DELAY_S`` (300),
``NIBT_AIRFLOW_TIMEOUT_H`` (12).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jinja2
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param

MODELS = ["demo", "vit_b_32", "vit_b_16", "vit_l_14"]
REPO = os.environ.get("NIBT_REPO") or str(Path(__file__).resolve().parents[3])

DEFAULT_ARGS = {
    "owner": "nibt-audit",
    "retries": int(os.environ.get("NIBT_AIRFLOW_RETRIES", "2")),
    "retry_delay": timedelta(seconds=float(os.environ.get("NIBT_AIRFLOW_RETRY_DELAY_S", "300"))),
    "retry_exponential_backoff": 2.0,  # 5 min, 10 min, ... (capped below)
    "max_retry_delay": timedelta(hours=2),
    "execution_timeout": timedelta(hours=float(os.environ.get("NIBT_AIRFLOW_TIMEOUT_H", "12"))),
}


def params(ray: bool = False) -> dict[str, Param]:
    """DAG params: what to audit and where; a manual run may pin ``run_date``."""
    out = {
        "input": Param(os.environ.get("NIBT_INPUT", "s3://lake/cc3m/"), type="string",
                       minLength=1, description='Input prefix, glob or file; "{date}" becomes '
                       "the run date (e.g. s3://lake/cc3m/dt={date}/)."),
        "output_root": Param(os.environ.get("NIBT_OUTPUT_ROOT", "s3://lake/audits/cc3m"),
                             type="string", minLength=1,
                             description="Each run writes <output_root>/dt=<run date>."),
        # no default model: a run without one fails its audit task (exit 2), listing these
        "model": Param(os.environ.get("NIBT_MODEL") or None, type=["null", "string"],
                       enum=[None, *MODELS], description="The model option (conf/model/); "
                       "required (NIBT_MODEL gives the default)."),
        "overrides": Param(os.environ.get("NIBT_AUDIT_ARGS", ""), type="string",
                           description="Extra Hydra overrides, separated by spaces "
                           "(e.g. storage=s3 run.rows_per_task=2048)."),
        "run_date": Param(None, type=["null", "string"], format="date",
                          description="Audit this date (YYYY-MM-DD) instead of the data "
                          "interval's: a manual rerun or backfill of one date."),
    }
    out["compare"] = Param(os.environ.get("NIBT_COMPARE", "1") not in ("0", "false", "False"),
                           type="boolean", description="Compare the date with the latest "
                           "earlier date that has _SUCCESS (nibt-report baseline=previous).")
    if ray:
        out["ray_address"] = Param(os.environ.get("NIBT_RAY_ADDRESS", "http://127.0.0.1:8265"),
                                   type="string", description="The Ray cluster's job API.")
    return out


# Rendered into the task's environment, never into the command line: a param is data,
# not shell. Credentials are in none of these (the UI shows rendered templates).
TASK_ENV = {
    "NIBT_RUN_DATE": "{{ params.run_date or data_interval_start | ds }}",
    "NIBT_INPUT": "{{ params.input }}",
    "NIBT_OUTPUT_ROOT": "{{ params.output_root }}",
    "NIBT_MODEL": "{{ params.model or '' }}",
    "NIBT_AUDIT_ARGS": "{{ params.overrides }}",
    "NIBT_COMPARE": "{{ params.compare }}",
}

# Shared by every task: take the settings, load the credentials file without tracing,
# check the date, derive the dated output and quote values for Hydra (dt=... has "=").
PRELUDE = r"""
set -uo pipefail
set +x
run_date=$NIBT_RUN_DATE
root=$NIBT_OUTPUT_ROOT
input=$NIBT_INPUT
model=$NIBT_MODEL
overrides=$NIBT_AUDIT_ARGS
if [ -n "${NIBT_ENV_FILE:-}" ]; then
    set -a
    . "$NIBT_ENV_FILE" >/dev/null 2>&1 || { echo "NIBT_ENV_FILE did not load" >&2; exit 2; }
    set +a
    set +x
fi
if ! [[ $run_date =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]]; then
    echo "nibt-audit: bad run date '$run_date': a run without a data interval needs" \
        "the run_date param (YYYY-MM-DD)" >&2
    exit 2
fi
input=${input//\{date\}/$run_date}
output="${root%/}/dt=$run_date"
if [ -n "${NIBT_REPORT_ROOT:-}" ]; then report_dir="${NIBT_REPORT_ROOT%/}/dt=$run_date"
else report_dir="$output/_report"; fi
hq() { printf "'%s'" "${1//\'/\\\'}"; }
hq_input() { if [[ $1 == \[* ]]; then printf '%s' "$1"; else hq "$1"; fi; }
read -r -a extra <<<"$overrides"
"""

# The audit needs a model: none is a configuration error, with the options listed.
NEED_MODEL = r"""
if [ -z "$model" ]; then
    echo "nibt-audit: no model: set the model param or NIBT_MODEL to one of: """ + " ".join(MODELS) + r""" (exit 2)" >&2
    exit 2
fi
"""

# How an exit code reads in the task log (the run summary JSON is just above it).
OUTCOME = r"""
case $rc in
    0) echo "nibt-audit: dt=$run_date succeeded: $output/_SUCCESS" ;;
    3) echo "nibt-audit: dt=$run_date PARTIAL (exit 3): some tasks failed; the run summary" \
            "above lists them under \"failures\" (also in $output/_summary.json). A retry" \
            "or a rerun of this date recomputes only those tasks." >&2 ;;
    2) echo "nibt-audit: dt=$run_date refused its configuration (exit 2): fix the params" \
            "or the worker's settings." >&2 ;;
    4) echo "nibt-audit: dt=$run_date committed every task, but its report" \
            "(report.enabled=true) FAILED (exit 4)." >&2 ;;
    *) echo "nibt-audit: dt=$run_date failed with exit code $rc." >&2 ;;
esac
exit $rc
"""

AUDIT_LOCAL = PRELUDE + NEED_MODEL + r"""
"${NIBT_AUDIT_BIN:-nibt-audit}" "input=$(hq_input "$input")" "output=$(hq "$output")" \
    "model=$model" run.progress=false "${extra[@]}" </dev/null
rc=$?
""" + OUTCOME

# The report compares the date with the latest earlier one that has _SUCCESS, unless the
# compare param is off (Jinja renders it True / False).
COMPARE = r"""
compare=()
case ${NIBT_COMPARE:-True} in 0 | false | False) ;; *) compare=(baseline=previous) ;; esac
"""

REPORT_LOCAL = PRELUDE + COMPARE + r"""
"${NIBT_REPORT_BIN:-nibt-report}" "results=$(hq "$output")" "output=$(hq "$report_dir")" \
    "${compare[@]}" </dev/null
rc=$?
[ $rc -eq 0 ] && echo "nibt-report: dt=$run_date written to $report_dir"
exit $rc
"""

AUDIT_RAY = PRELUDE + NEED_MODEL + r"""
"$NIBT_REPO/jobs/ray/submit.sh" audit "$run_date" </dev/null
rc=$?
""" + OUTCOME

REPORT_RAY = PRELUDE + COMPARE + r"""
"$NIBT_REPO/jobs/ray/submit.sh" report "$run_date" "${compare[@]}" </dev/null
"""


def bash(task_id: str, command: str, env: dict[str, str]) -> BashOperator:
    """A bash step whose exit code decides the task: every non-zero code fails it."""
    return BashOperator(task_id=task_id, bash_command=command, env=env, append_env=True,
                        skip_on_exit_code=None, do_xcom_push=False)


def dag(dag_id: str, description: str, ray: bool) -> DAG:
    """One of the two variants: the same schedule, params and retry policy."""
    return DAG(
        dag_id=dag_id,
        description=description,
        doc_md=__doc__,
        schedule=CronDataIntervalTimetable(os.environ.get("NIBT_AIRFLOW_SCHEDULE", "0 0 * * *"),
                                           timezone="UTC"),
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,  # past dates: `airflow backfill create`, explicitly
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params=params(ray),
        template_undefined=jinja2.StrictUndefined,
        tags=["nibt-audit"],
    )


with dag("nibt_audit_local", "nibt-audit on this worker (embedded Ray), then nibt-report",
         ray=False):
    bash("audit", AUDIT_LOCAL, TASK_ENV) >> bash("report", REPORT_LOCAL, TASK_ENV)

with dag("nibt_audit_ray", "nibt-audit and nibt-report as jobs on a Ray cluster", ray=True):
    ray_env = {**TASK_ENV, "NIBT_RAY_ADDRESS": "{{ params.ray_address }}", "NIBT_REPO": REPO}
    bash("audit", AUDIT_RAY, ray_env) >> bash("report", REPORT_RAY, ray_env)
