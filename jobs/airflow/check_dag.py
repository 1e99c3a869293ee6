"""Check jobs/airflow/dags with Apache Airflow itself (run by check.sh in Airflow's venv).

1. The DAG folder imports into a ``DagBag`` with no import errors, and both DAGs have
   the promised shape (audit >> report, one active run, retries with backoff, params).
2. ``dag.test()`` runs ``nibt_audit_local`` end to end on tiny local data: both tasks
   succeed and the dated output is committed.
3. With an input that has a broken shard, the audit exits 3: the audit task fails,
   the report does not run, the run fails, and the task's log holds the run summary.
4. Without a model (no ``model`` param, no ``NIBT_MODEL``) the audit task fails at
   once (exit 2, the options listed), nothing is written, the report does not run.
5. Scheduled comparison: a run for the day after the first run's date succeeds and
   its report compares with that date (the latest earlier one with ``_SUCCESS``).
6. With ``--ray-address`` (a Ray head on 127.0.0.1), ``nibt_audit_ray`` submits both
   steps as Ray jobs for a pinned ``run_date`` and succeeds.

``dag.test()`` returns normally whatever its tasks did, so every task's state is
checked. Prints one JSON line of results; exits non-zero on the first failed check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DAG_IDS = ("nibt_audit_local", "nibt_audit_ray")


def check(cond: bool, what: str) -> None:
    """Fail the check with ``what`` unless ``cond``."""
    if not cond:
        print(f"airflow-check FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def check_shape(dags_folder: str, retries: int) -> dict[str, Any]:
    """Import the folder as the DAG processor does and check both DAGs' structure."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=dags_folder)
    check(not bag.import_errors, f"import errors: {bag.import_errors}")
    check(set(DAG_IDS) <= set(bag.dag_ids), f"DAGs found: {bag.dag_ids}")
    for dag_id in DAG_IDS:
        dag = bag.get_dag(dag_id)
        check(dag.max_active_runs == 1, f"{dag_id}: max_active_runs {dag.max_active_runs}")
        check(not dag.catchup, f"{dag_id}: catchup")
        check(set(dag.task_ids) == {"audit", "report"}, f"{dag_id}: tasks {dag.task_ids}")
        audit = dag.get_task("audit")
        check(audit.downstream_task_ids == {"report"}, f"{dag_id}: audit >> report")
        check(audit.retries == retries and bool(audit.retry_exponential_backoff),
              f"{dag_id}: retries {audit.retries}, backoff {audit.retry_exponential_backoff}")
        check({"input", "output_root", "model", "run_date"} <= set(dag.params),
              f"{dag_id}: params {list(dag.params)}")
        check("data_interval_start" in audit.env["NIBT_RUN_DATE"], f"{dag_id}: run date")
        report = dag.get_task("report")
        check("compare" in dag.params and "baseline=previous" in report.bash_command
              and report.env.get("NIBT_COMPARE") == "{{ params.compare }}",
              f"{dag_id}: the report does not compare with the previous date")
    return bag.get_dag("nibt_audit_local")


def check_comparison(dag, conf: dict[str, Any], root: Path, first: str,
                     mark: str | None) -> dict[str, Any]:
    """The day after ``first``: both tasks succeed and the report compares with ``first``."""
    from datetime import timedelta

    nxt = (datetime.strptime(first, "%Y-%m-%d") + timedelta(days=1)).strftime("%Y-%m-%d")
    t0 = time.time()
    dr = dag.test(logical_date=datetime(2026, 12, 3, tzinfo=timezone.utc),
                  run_conf={**conf, "run_date": nxt}, mark_success_pattern=mark)
    got = states(dr)
    out = {"states": got, "seconds": round(time.time() - t0, 1), "date": nxt}
    check(got == {"audit": "success", "report": "success"}, f"comparison run: task states {got}")
    if mark is None:
        report = json.loads((root / f"dt={nxt}" / "_report" / "report.json").read_text())
        check(report.get("baseline") == f"{root}/dt={first}" and "comparison" in report,
              f"comparison run: baseline {report.get('baseline')}, expected dt={first}")
        out["baseline"] = report["baseline"]
        out["changes"] = len(report["comparison"]["findings"])
    return out


def states(dr) -> dict[str, str]:
    """Task id -> final state of a DagRun returned by ``dag.test()``."""
    return {ti.task_id: str(getattr(ti.state, "value", ti.state))
            for ti in dr.get_task_instances()}


def run_date_of(dr) -> str:
    """The date a run audits: its data interval's start (the DAG's own rule)."""
    return dr.data_interval_start.strftime("%Y-%m-%d")


def main() -> int:
    """Run the three checks; print their results as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dags", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--partial-input", required=True)
    ap.add_argument("--output-root", required=True)
    ap.add_argument("--overrides", default="")
    ap.add_argument("--ray-address", help="also run nibt_audit_ray against this Ray head")
    ap.add_argument("--report", choices=["run", "skip"], default="run",
                    help="skip: mark the report task successful without running it")
    args = ap.parse_args()
    result: dict[str, Any] = {}

    t0 = time.time()
    dag = check_shape(args.dags, int(os.environ.get("NIBT_AIRFLOW_RETRIES", "2")))
    result["dagbag_s"] = round(time.time() - t0, 1)

    conf = {"input": args.input, "output_root": args.output_root, "model": "demo",
            "overrides": args.overrides}
    mark = "report" if args.report == "skip" else None
    t0 = time.time()
    dr = dag.test(logical_date=datetime(2026, 11, 29, tzinfo=timezone.utc), run_conf=conf,
                  mark_success_pattern=mark)
    got = states(dr)
    result["ok_run"] = {"states": got, "seconds": round(time.time() - t0, 1)}
    check(got == {"audit": "success", "report": "success"}, f"local run: task states {got}")
    check(str(getattr(dr.state, "value", dr.state)) == "success", f"local run: {dr.state}")
    output = Path(args.output_root) / f"dt={run_date_of(dr)}"
    summary = json.loads((output / "_SUCCESS").read_text())
    check(summary["status"] == "succeeded" and summary["rows_out"] > 0, f"summary {summary}")
    if args.report == "run":
        check((output / "_report" / "report.html").is_file(), "no report.html")
    result["ok_run"]["output"] = str(output)

    t0 = time.time()
    conf = {**conf, "input": args.partial_input, "run_date": "2026-11-20"}
    dr = dag.test(logical_date=datetime(2026, 11, 30, tzinfo=timezone.utc), run_conf=conf)
    got = states(dr)
    result["partial_run"] = {"states": got, "seconds": round(time.time() - t0, 1)}
    check(got == {"audit": "failed", "report": "upstream_failed"},
          f"partial run: task states {got}")
    check(str(getattr(dr.state, "value", dr.state)) == "failed", f"partial run: {dr.state}")
    output = Path(args.output_root) / "dt=2026-11-20"  # the run_date param wins
    summary = json.loads((output / "_summary.json").read_text())
    check(summary["status"] == "partial" and summary["tasks_failed"] == 1, f"summary {summary}")
    check(not (output / "_SUCCESS").exists(), "a partial run wrote _SUCCESS")
    result["partial_run"]["output"] = str(output)

    result["comparison_run"] = check_comparison(
        dag, {**conf, "input": args.input}, Path(args.output_root),
        Path(result["ok_run"]["output"]).name[3:], mark)

    # no model: the param's default is null unless NIBT_MODEL gives one (unset here). A
    # fresh DAG: dag.test() leaves the previous run_conf's params on the tasks it ran.
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=args.dags).get_dag("nibt_audit_local")
    check(dag.params["model"] is None, f"model param default {dag.params['model']!r}")
    t0 = time.time()
    conf = {k: v for k, v in conf.items() if k != "model"} | {"run_date": "2026-11-22"}
    dr = dag.test(logical_date=datetime(2026, 12, 2, tzinfo=timezone.utc), run_conf=conf)
    got = states(dr)
    result["no_model_run"] = {"states": got, "seconds": round(time.time() - t0, 1)}
    check(got == {"audit": "failed", "report": "upstream_failed"},
          f"run without a model: task states {got}")
    check(not (Path(args.output_root) / "dt=2026-11-22").exists(),
          "a run without a model wrote output")

    if args.ray_address:
        ray_dag = DagBag(dag_folder=args.dags).get_dag("nibt_audit_ray")
        conf = {"input": args.input, "output_root": args.output_root, "model": "demo",
                "overrides": args.overrides, "run_date": "2026-11-21",
                "ray_address": args.ray_address}
        t0 = time.time()
        dr = ray_dag.test(logical_date=datetime(2026, 12, 1, tzinfo=timezone.utc), run_conf=conf,
                          mark_success_pattern=mark)
        got = states(dr)
        result["ray_run"] = {"states": got, "seconds": round(time.time() - t0, 1)}
        check(got == {"audit": "success", "report": "success"}, f"ray run: task states {got}")
        output = Path(args.output_root) / "dt=2026-11-21"
        summary = json.loads((output / "_SUCCESS").read_text())
        check(summary["settings"]["cluster"]["address"] == "auto", "ray run: not on the cluster")
        if args.report == "run":
            check((output / "_report" / "report.html").is_file(), "ray run: no report.html")
        result["ray_run"]["output"] = str(output)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
