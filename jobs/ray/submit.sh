#!/usr/bin/env bash
# Run nibt-audit (or its report) for one run date on an existing Ray cluster with
# `ray job submit`, wait for it, and exit with the job's own code.
#
#   NIBT_RAY_ADDRESS=http://ray-head:8265 NIBT_INPUT=s3://lake/cc3m/ \
#   NIBT_OUTPUT_ROOT=s3://lake/audits/cc3m jobs/ray/submit.sh audit 2026-11-29 [HYDRA_OVERRIDE ...]
#   ... jobs/ray/submit.sh report 2026-11-29
#
# The run writes <NIBT_OUTPUT_ROOT>/dt=<date>, so a rerun or a backfill of a date
# resumes that date's output (committed tasks are skipped). The job joins the
# cluster (cluster=existing: 1-4 actors per GPU, one per 4 of its CPUs).
#
# Exit codes: 0 succeeded, 3 partial (some tasks failed), 4 the audit succeeded but
# its report (report.enabled=true) failed, 2 refused before any work (bad configuration,
# e.g. no NIBT_MODEL; a model, layer, input schema or output the audit cannot use),
# 1 crash / stopped / not submitted, 75 a job for the same step and date is
# already running and NIBT_RAY_IF_RUNNING=skip (nothing submitted).
# `ray job submit` alone exits 1 for every failure and 0 for a stopped job: the
# real code comes from the job's driver_exit_code (jobstate.py).
#
# Settings (environment):
#   NIBT_RAY_ADDRESS     the cluster's job API (falls back to RAY_ADDRESS), e.g. http://head:8265
#   NIBT_INPUT           input prefix / glob / file; "{date}" is replaced by the run date (audit)
#   NIBT_OUTPUT_ROOT     where dated outputs go (required)
#   NIBT_MODEL           model option, required for the audit (conf/model/: demo, vit_b_32, ...)
#   NIBT_AUDIT_ARGS      extra Hydra overrides for the audit, separated by spaces
#   NIBT_REPORT_ROOT     reports go to <root>/dt=<date> (default: <output>/_report)
#   NIBT_REPORT_ARGS     extra arguments for nibt-report
#   NIBT_RAY_RUNTIME_ENV runtime env YAML (default: runtime_env.yaml beside this script)
#   NIBT_RAY_WORKING_DIR overrides the runtime env's working_dir (default: the repository)
#   NIBT_RAY_ENTRYPOINT  the audit command on the cluster (default: python -m pipeline)
#   NIBT_RAY_REPORT_ENTRYPOINT  the report command (default: python -m pipeline.cli.report)
#   NIBT_RAY_BIN         the ray CLI (default: ray on PATH)
#   NIBT_RAY_PYTHON      a Python that imports ray (default: the python beside the ray CLI)
#   NIBT_RAY_IF_RUNNING  attach (default: follow the running job) or skip (exit 75)
#   NIBT_SUBMISSION_ID   default: nibt-<step>-<date>-<UTC time>-<pid>
# Credentials never go through here: the cluster's nodes have their own (instance
# role, or a Kubernetes Secret as environment variables, see rayjob.yaml).
set -uo pipefail
set +x

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=${NIBT_REPO:-$(cd "$here/../.." && pwd)}

die() {
    echo "submit.sh: $*" >&2
    exit 2
}

step=${1:-audit}
[[ $# -gt 0 ]] && shift
run_date=${1:-$(date +%F)}
[[ $# -gt 0 ]] && shift
[[ ${1:-} == -- ]] && shift

case $step in
    audit | report) ;;
    *) die "unknown step '$step' (audit or report)" ;;
esac
if ! [[ $run_date =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || [[ $(date -d "$run_date" +%F 2>/dev/null) != "$run_date" ]]; then
    die "bad run date '$run_date' (YYYY-MM-DD)"
fi
address=${NIBT_RAY_ADDRESS:-${RAY_ADDRESS:-}}
[[ -n $address ]] || die "set NIBT_RAY_ADDRESS (the cluster's job API, e.g. http://ray-head:8265)"
[[ -n ${NIBT_OUTPUT_ROOT:-} ]] || die "set NIBT_OUTPUT_ROOT"
output="${NIBT_OUTPUT_ROOT%/}/dt=$run_date"
ray_bin=${NIBT_RAY_BIN:-ray}
ray_path=$(command -v "$ray_bin") || die "no ray CLI '$ray_bin' (set NIBT_RAY_BIN)"
if [[ -n ${NIBT_RAY_PYTHON:-} ]]; then
    ray_py=$NIBT_RAY_PYTHON
else # the interpreter of the environment the ray CLI belongs to
    ray_dir=$(dirname "$(realpath "$ray_path")")
    for ray_py in "$ray_dir/python" "$ray_dir/python3" python3; do
        command -v "$ray_py" >/dev/null && break
    done
fi
runtime_env=$(realpath -e -- "${NIBT_RAY_RUNTIME_ENV:-$here/runtime_env.yaml}") ||
    die "no runtime env file '${NIBT_RAY_RUNTIME_ENV:-}'"

# A Hydra override value, quoted: outputs like .../dt=2026-11-29 contain "=".
hq() { printf "'%s'" "${1//\'/\\\'}"; }
# An input is quoted too, unless it is a list ('[s3://a/,s3://b/]').
hq_input() { if [[ $1 == \[* ]]; then printf '%s' "$1"; else hq "$1"; fi; }

if [[ $step == audit ]]; then
    [[ -n ${NIBT_INPUT:-} ]] || die "set NIBT_INPUT"
    if [[ -z ${NIBT_MODEL:-} ]]; then
        options=()
        for f in "$repo"/conf/model/*.yaml; do [[ -e $f ]] && options+=("$(basename "$f" .yaml)"); done
        die "set NIBT_MODEL to a model option (there is no default): ${options[*]:-the files of conf/model/}"
    fi
    input=${NIBT_INPUT//\{date\}/$run_date}
    read -r -a entry <<<"${NIBT_RAY_ENTRYPOINT:-python -m pipeline}"
    read -r -a extra <<<"${NIBT_AUDIT_ARGS:-}"
    entry+=("input=$(hq_input "$input")" "output=$(hq "$output")" "model=$NIBT_MODEL" cluster=existing
        run.progress=false "${extra[@]}" "$@")
else
    if [[ -n ${NIBT_REPORT_ROOT:-} ]]; then
        report="${NIBT_REPORT_ROOT%/}/dt=$run_date"
    else
        report="$output/_report"
    fi
    if [[ -n ${NIBT_RAY_REPORT_ENTRYPOINT:-} ]]; then
        read -r -a entry <<<"$NIBT_RAY_REPORT_ENTRYPOINT"
    else
        entry=(python -m pipeline.cli.report)
    fi
    read -r -a extra <<<"${NIBT_REPORT_ARGS:-}"
    entry+=("results=$(hq "$output")" "output=$(hq "$report")" "${extra[@]}" "$@")
fi

cd "$repo" || die "cannot enter $repo"  # runtime_env.yaml's working_dir "." is the repository
job_id=""
stop_job() {
    if [[ -n $job_id ]]; then
        echo "submit.sh: interrupted: stopping Ray job $job_id" >&2
        "$ray_bin" job stop --address "$address" --no-wait "$job_id" >&2 || true
    fi
    exit 143
}
trap stop_job TERM INT HUP

running=$("$ray_py" "$here/jobstate.py" active "$address" "$step" "$run_date") || {
    echo "submit.sh: cannot list the jobs of $address" >&2
    exit 1
}
if [[ -n $running ]]; then
    job_id=${running%%$'\n'*}
    if [[ ${NIBT_RAY_IF_RUNNING:-attach} == skip ]]; then
        echo "submit.sh: $step for dt=$run_date is already running as $job_id: skipped" >&2
        exit 75
    fi
    echo "submit.sh: $step for dt=$run_date is already running as $job_id: following it" >&2
    "$ray_bin" job logs --address "$address" --follow "$job_id" &
else
    job_id=${NIBT_SUBMISSION_ID:-nibt-$step-$run_date-$(date -u +%Y%m%dT%H%M%SZ)-$$}
    echo "submit.sh: submitting $step for dt=$run_date as $job_id (output $output)" >&2
    working_dir=()
    [[ -n ${NIBT_RAY_WORKING_DIR:-} ]] && working_dir=(--working-dir "$NIBT_RAY_WORKING_DIR")
    "$ray_bin" job submit --address "$address" --submission-id "$job_id" \
        --runtime-env "$runtime_env" "${working_dir[@]}" \
        --metadata-json "{\"nibt_step\": \"$step\", \"nibt_date\": \"$run_date\"}" \
        -- "${entry[@]}" &
fi
wait $!
trap - TERM INT HUP
"$ray_py" "$here/jobstate.py" result "$address" "$job_id"
