#!/usr/bin/env bash
# nibt-audit for crontab: audit one run date, then report on it; never two runs at once.
#
#   nibt-audit-daily.sh [YYYY-MM-DD] [HYDRA_OVERRIDE ...]     (default date: today)
#
# The run writes <NIBT_OUTPUT_ROOT>/dt=<date>: rerunning or backfilling a date resumes
# that date's output (committed tasks are skipped), so retries are safe and cheap.
#
# Exit codes:
#   0  every task committed (and the report written)
#   3  partial: some tasks failed (listed under "failures" in <output>/_summary.json)
#   2  refused before any work: bad configuration (this script's settings too: no
#      NIBT_MODEL), a model or layer the engine cannot use, an unlistable input or one
#      whose columns do not fit, an output that cannot be written
#   1  crash
#   4  the audit succeeded but the report failed (rerun: the audit skips everything);
#      also the audit's own exit with report.enabled=true in NIBT_AUDIT_ARGS
#   75 skipped: another run holds the lock; nothing was done (EX_TEMPFAIL)
#   other: the audit was killed by a signal (128 + n)
#
# Settings (environment, or the environment file):
#   NIBT_INPUT        input prefix / glob / file / list; "{date}" becomes the run date
#   NIBT_OUTPUT_ROOT  root of the dated outputs (local path or s3://)
#   NIBT_MODEL        model option, required (conf/model/: demo, vit_b_32, ...); no default
#   NIBT_AUDIT_ARGS   extra Hydra overrides for the audit, separated by spaces
#   NIBT_REPORT       1 (default) runs nibt-report after a complete audit; 0 does not
#   NIBT_REPORT_ROOT  reports go to <root>/dt=<date> (default: <output>/_report)
#   NIBT_REPORT_ARGS  extra arguments for nibt-report
#   NIBT_COMPARE      1 (default): the report compares the date with the latest earlier date
#                     under NIBT_OUTPUT_ROOT that has _SUCCESS, when there is one
#                     (nibt-report baseline=previous); 0 does not
#   NIBT_ENV_FILE     file of VAR=value lines (credentials, settings); loaded, never shown
#   NIBT_CRON_LOG_DIR this script's logs, <dir>/dt=<date>/<UTC time>.log; the audit's own
#                     log goes under <dir>/nibt-audit/ (default: ~/.local/state/nibt-audit)
#   NIBT_LOCK_FILE    default: <NIBT_CRON_LOG_DIR>/nibt-audit-daily.lock
#   NIBT_LOCK_WAIT    seconds to wait for the lock (default 0: exit 75 at once)
#   NIBT_AUDIT_BIN    default: nibt-audit on PATH
#   NIBT_REPORT_BIN   default: nibt-report on PATH
set -uo pipefail
set +x # never trace: the environment file holds credentials
umask 027

die() {
    echo "nibt-audit-daily: $*" >&2
    exit 2
}

run_date=${1:-$(date +%F)}
[[ $# -gt 0 ]] && shift
if ! [[ $run_date =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || [[ $(date -d "$run_date" +%F 2>/dev/null) != "$run_date" ]]; then
    die "bad run date '$run_date' (YYYY-MM-DD)"
fi

env_file_open=""
if [[ -n ${NIBT_ENV_FILE:-} ]]; then
    [[ -r $NIBT_ENV_FILE ]] || die "cannot read NIBT_ENV_FILE"
    (($(stat -c '8#%a' "$NIBT_ENV_FILE") & 8#077)) && env_file_open=1
    set -a
    # shellcheck disable=SC1090  # the operator's file
    . "$NIBT_ENV_FILE" >/dev/null 2>&1 || die "NIBT_ENV_FILE did not load"
    set +a
    set +x
fi

# The model options (conf/model/ of this checkout, or $NIBT_CONF_DIR/model), for a message.
model_options() {
    local dir f names=()
    dir=${NIBT_CONF_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/conf}/model
    for f in "$dir"/*.yaml; do [[ -e $f ]] && names+=("$(basename "$f" .yaml)"); done
    if [[ ${#names[@]} -gt 0 ]]; then echo "${names[*]}"; else echo "the files of conf/model/"; fi
}

[[ -n ${NIBT_INPUT:-} ]] || die "set NIBT_INPUT"
[[ -n ${NIBT_OUTPUT_ROOT:-} ]] || die "set NIBT_OUTPUT_ROOT"
[[ -n ${NIBT_MODEL:-} ]] || die "set NIBT_MODEL to a model option (there is no default): $(model_options)"
log_dir=${NIBT_CRON_LOG_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/nibt-audit}
lock_file=${NIBT_LOCK_FILE:-$log_dir/nibt-audit-daily.lock}
audit_bin=${NIBT_AUDIT_BIN:-nibt-audit}
report_bin=${NIBT_REPORT_BIN:-nibt-report}
command -v "$audit_bin" >/dev/null || die "no nibt-audit at '$audit_bin' (set NIBT_AUDIT_BIN)"
mkdir -p "$log_dir" "$(dirname "$lock_file")" || die "cannot create $log_dir"

# One run at a time: the lock is the open file descriptor 9, released when this script
# exits. Children get it closed (9>&-), so a process left behind cannot hold it.
# NIBT_LOCK_WAIT=seconds waits for the lock instead (a backfill loop beside the nightly run).
lock_wait=${NIBT_LOCK_WAIT:-0}
[[ $lock_wait =~ ^[0-9]+$ ]] || die "NIBT_LOCK_WAIT must be a number of seconds"
exec 9>>"$lock_file" || die "cannot open the lock file $lock_file"
if [[ $lock_wait -gt 0 ]]; then lock=(flock -w "$lock_wait" 9); else lock=(flock -n 9); fi
if ! "${lock[@]}"; then
    echo "nibt-audit-daily: dt=$run_date skipped: another run holds $lock_file" >&2
    exit 75
fi

input=${NIBT_INPUT//\{date\}/$run_date}
output="${NIBT_OUTPUT_ROOT%/}/dt=$run_date"
if [[ -n ${NIBT_REPORT_ROOT:-} ]]; then
    report_dir="${NIBT_REPORT_ROOT%/}/dt=$run_date"
else
    report_dir="$output/_report"
fi
mkdir -p "$log_dir/dt=$run_date" || die "cannot create $log_dir/dt=$run_date"
log_file="$log_dir/dt=$run_date/$(date -u +%Y%m%dT%H%M%SZ).log"
exec 3>&2 # kept for the one line that cron mails
exec >>"$log_file" 2>&1 || die "cannot write $log_file"
export NIBT_LOG_DIR=${NIBT_LOG_DIR:-$log_dir}

# A Hydra override value, quoted: outputs like .../dt=2026-11-29 contain "=".
hq() { printf "'%s'" "${1//\'/\\\'}"; }
# An input is quoted too, unless it is a list ('[s3://a/,s3://b/]').
hq_input() { if [[ $1 == \[* ]]; then printf '%s' "$1"; else hq "$1"; fi; }
redact() { sed -E 's#://[^/@[:space:]]+@#://***@#g' <<<"$*"; }
say() { echo "[$(date -u +%FT%TZ)] nibt-audit-daily: $*"; }

[[ -n $env_file_open ]] && say "warning: NIBT_ENV_FILE is readable by others: chmod 600 it"

child=""
# shellcheck disable=SC2329  # run by the trap below
forward() {
    say "received a stop signal; stopping the running step"
    [[ -n $child ]] && kill -TERM "$child" 2>/dev/null && wait "$child"
    say "dt=$run_date: exit 143 (stopped)"
    echo "nibt-audit-daily: dt=$run_date stopped by a signal, log $log_file" >&3
    exit 143
}
trap forward TERM INT HUP

read -r -a extra <<<"${NIBT_AUDIT_ARGS:-}"
audit=("$audit_bin" "input=$(hq_input "$input")" "output=$(hq "$output")" "model=$NIBT_MODEL"
    run.progress=false "${extra[@]}" "$@")
say "dt=$run_date: audit $(redact "${audit[*]:1}")"
"${audit[@]}" 9>&- 3>&- </dev/null &
child=$!
wait "$child"
code=$?
child=""
case $code in
    0) say "dt=$run_date: audit succeeded: $output/_SUCCESS" ;;
    3) say "dt=$run_date: audit PARTIAL: some tasks failed, see 'failures' in $output/_summary.json; rerun the date to retry them" ;;
    2) say "dt=$run_date: audit refused its configuration (exit 2)" ;;
    4) say "dt=$run_date: audit succeeded but its own report (report.enabled=true) FAILED (exit 4)" ;;
    *) say "dt=$run_date: audit failed with exit code $code" ;;
esac

if [[ $code -eq 0 && ${NIBT_REPORT:-1} != 0 ]]; then
    read -r -a report_extra <<<"${NIBT_REPORT_ARGS:-}"
    # what changed since the latest earlier date with _SUCCESS (none: a plain report)
    compare=()
    [[ ${NIBT_COMPARE:-1} != 0 ]] && compare=(baseline=previous)
    report=("$report_bin" "results=$(hq "$output")" "output=$(hq "$report_dir")" "${compare[@]}"
        "${report_extra[@]}")
    say "dt=$run_date: report $(redact "${report[*]:1}")"
    "${report[@]}" 9>&- 3>&- </dev/null &
    child=$!
    wait "$child"
    report_code=$?
    child=""
    if [[ $report_code -eq 0 ]]; then
        say "dt=$run_date: report written to $report_dir"
    else
        say "dt=$run_date: report FAILED with exit code $report_code"
        code=4
    fi
fi

say "dt=$run_date: exit $code"
if [[ $code -ne 0 ]]; then
    # one line for cron's mail; the details are in the log
    echo "nibt-audit-daily: dt=$run_date exit $code, log $log_file" >&3
fi
exit "$code"
