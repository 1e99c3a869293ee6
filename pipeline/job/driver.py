"""The audit driver: check -> list -> plan -> skip committed -> actor pool -> retries -> commit.

Everything that can be known before a worker starts is checked first, on the
driver: the model (the engine can cut its towers, the layers are in range, the
weights resolve), the input columns (from the footers the plan reads) and that
the output can be written. A refusal raises ``ConfigError`` (exit 2).

Exit codes: 0 every task committed (and the report, if enabled, written);
3 finished with failed tasks or rows that failed in the engine; 4 every task
committed but the report failed; 2 refused before any work started (storage
that does not answer included); 1 unexpected crash; 128 + n stopped by signal n
(143 SIGTERM, 130 SIGINT). See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import fsspec
import pyarrow as pa

import pipeline
from pipeline.config import (
    ClusterSettings,
    ConfigError,
    DataSettings,
    ModelSettings,
    RunSettings,
    StorageSettings,
    check_no_credentials,
    public,
)
from pipeline.io.footers import FooterCache
from pipeline.io.images import ERROR
from pipeline.io.ledger import Ledger
from pipeline.io.manifest import write_manifest, write_summary
from pipeline.io.parts import PARTS_DIR
from pipeline.io.schema import RESULT_COLUMNS
from pipeline.io.shards import schema_problem
from pipeline.io.storage import check_writable, filesystem, join, list_inputs, remove_stale_temps
from pipeline.job.actors import PoolRun, run_on_actors
from pipeline.job.cluster import ray_session
from pipeline.job.commit import Committed
from pipeline.job.dispatch import Dispatcher
from pipeline.job.plan import Task, plan
from pipeline.job.procstats import peak_rss_mb
from pipeline.job.progress import Tally
from pipeline.job.provenance import (
    library_versions,
    provenance,
    resolve_model,
    results_fingerprint,
)
from pipeline.job.results import TaskResult
from pipeline.job.resume import Resume, commit_of, resume
from pipeline.job.stop import Stopped, StopSignals

log = logging.getLogger("nibt-audit")

EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_PARTIAL, EXIT_REPORT = 0, 1, 2, 3, 4


@dataclass
class JobSettings:
    """Everything one audit run needs."""

    input: Any
    output: str
    model: ModelSettings
    data: DataSettings
    storage: StorageSettings
    cluster: ClusterSettings
    run: RunSettings
    report: Any = None  # pipeline.report.settings.ReportSettings; not part of the fingerprint

    def __post_init__(self) -> None:
        if self.input in (None, "", "???") or self.output in (None, "", "???"):
            raise ConfigError("input and output are required: nibt-audit input=... output=...")
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        for item in items:
            check_no_credentials("input", item)
        check_no_credentials("output", self.output)
        for c in self.data.keep_columns:
            if c in RESULT_COLUMNS:
                raise ConfigError(f"data.keep_columns: {c!r} clashes with an output column; "
                                  "rename it")
        self.output = str(self.output).rstrip("/")


def versions() -> dict[str, str]:
    """Everything's version, for the summary."""
    import pyarrow

    out = {"nibt-audit": pipeline.__version__, "python": platform.python_version(),
           **library_versions(), "pyarrow": pyarrow.__version__}
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def resolve_precision(model: ModelSettings, gpu: bool) -> ModelSettings:
    """``precision=auto``: bf16 when the actors get GPUs, fp32 otherwise."""
    if model.precision != "auto":
        return model
    return dataclasses.replace(model, precision="bf16" if gpu else "fp32")


def _joined(s: JobSettings) -> bool:
    return bool(s.cluster.address or os.environ.get("RAY_ADDRESS"))


def actors_get_gpus(s: JobSettings) -> bool:
    """Whether actors will hold GPUs: asks the joined cluster, or CUDA on this machine."""
    if _joined(s):
        import ray

        return float(ray.cluster_resources().get("GPU", 0)) > 0
    import torch

    return torch.cuda.is_available()


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="pair", desc="nibt-audit", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, mininterval=1.0, smoothing=0.1)


def run_job(s: JobSettings, runner: type | None = None) -> tuple[int, dict[str, Any]]:
    """Run the audit; returns (exit code, summary). Raises ConfigError for bad settings.

    On a joined cluster the session spans the whole run (the cluster is asked
    whether actors get GPUs before the fingerprint is made); an embedded Ray
    starts only when there is work to do. SIGTERM / SIGINT stop it cleanly
    (``pipeline.job.stop``): exit code 128 + the signal. ``runner``: the actor
    class (``TaskRunner`` by default; ``pipeline.job.null.NullRunner`` measures the
    control plane without an engine).
    """
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with StopSignals() as stop:
        try:
            with ray_session(s.cluster) if _joined(s) else contextlib.nullcontext():
                return _run(s, stop, started, runner)
        except Stopped:
            return _stopped_before_dispatch(s, stop, started)


def _stopped_before_dispatch(s: JobSettings, stop: StopSignals,
                             started: str) -> tuple[int, dict[str, Any]]:
    """A stop before any task ran: the summary says so; the manifest is left as it was."""
    log.warning("stopped by %s before any task was dispatched; nothing was run", stop.name)
    summary = {"exit_code": stop.exit_code, "status": "stopped", "stopped_by": stop.name,
               "started_at": started, "tasks_run": 0,
               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "settings": _settings(s), "versions": versions()}
    out_fs, out_path = filesystem(s.output, s.storage)
    write_summary(out_fs, out_path, summary, success=False)
    return stop.exit_code, summary


def _settings(s: JobSettings) -> dict[str, Any]:
    return {"input": s.input if isinstance(s.input, str) else list(s.input),
            "output": s.output, "model": public(s.model), "data": public(s.data),
            "storage": public(s.storage), "cluster": public(s.cluster), "run": public(s.run)}


def _resolve(s: JobSettings) -> tuple[JobSettings, Any, str]:
    """Precision and layers as the actors will use them, and the results fingerprint."""
    gpu = actors_get_gpus(s)
    s = dataclasses.replace(s, model=resolve_precision(s.model, gpu))
    rm = resolve_model(s.model, s.storage)
    # the actors use the layers resolved here, so what is recorded is what ran
    s = dataclasses.replace(s, model=dataclasses.replace(
        s.model, image_layer=rm.image_layer, text_layer=rm.text_layer),
        run=dataclasses.replace(s.run, rows_per_task=s.run.task_rows(gpu)))
    log.info("model %s, weights %s, image layer %d of %d, text layer %d of %d, %d steps (%s), %s",
             s.model.name, rm.weights, rm.image_layer, rm.depths[0], rm.text_layer, rm.depths[1],
             s.model.steps, s.model.schedule, s.model.precision)
    fp, _ = results_fingerprint(s.model, s.data, rm)
    return s, rm, fp


def _plan(s: JobSettings, fp: str, out_fs: fsspec.AbstractFileSystem, out_path: str) -> tuple:
    """List the inputs and plan their tasks, with the footers saved by the last run."""
    t0 = time.monotonic()
    files = list_inputs(s.input, s.storage)
    d = s.data
    cache = FooterCache(out_fs, out_path).load()
    reused = sum(cache.get(f) is not None for f in files)
    rows_per_task = int(s.run.rows_per_task or 0)  # resolved by _resolve
    tasks = plan(files, s.storage, rows_per_task, fp,
                 in_flight=s.storage.requests_in_flight, cache=cache,
                 check=lambda schema: schema_problem(
                     schema, d.image_column, d.caption_column,
                     [c for c in d.read_columns() if c not in (d.image_column, d.caption_column)]))
    cache.keep_only({f.uri for f in files})
    try:
        cache.save()
    except Exception as e:  # the next run reads the footers again
        log.warning("saved plan not written: %s: %s", type(e).__name__, e)
    log.info("planned %d files (%d footers read, %d from the saved plan) into %d tasks in "
             "%.1f s", len(files), len(files) - reused, reused, len(tasks),
             time.monotonic() - t0)
    return files, tasks


def _run(s: JobSettings, stop: StopSignals, started: str,
         runner: type | None = None) -> tuple[int, dict[str, Any]]:
    """plan -> skip committed -> run -> commit -> summary."""
    t0 = time.time()
    given = s  # the settings as given, recorded beside what they resolved to
    s, rm, fp = _resolve(s)
    out_fs, out_path = filesystem(s.output, s.storage)
    remove_stale_temps(out_fs, join(out_path, PARTS_DIR))  # left by writers killed mid-write
    check_writable(out_fs, join(out_path, PARTS_DIR), s.output, s.storage)
    files, tasks = _plan(s, fp, out_fs, out_path)
    r = s.run
    ledger = Ledger(out_fs, out_path, fp, r.checkpoint_every_s, r.checkpoint_every_tasks,
                    in_flight=s.storage.requests_in_flight)
    todo = resume(tasks, ledger, s.output, s.storage, fp, r.overwrite, verify=r.verify_parts)
    broken = sum(1 for t in tasks if t.error)
    rows_in = sum(t.rows for t in tasks)
    log.info("%d files, %d tasks (%d rows): %d to run (%d of them committed with error rows), "
             "%d already committed, %d unreadable; %d committed after the last checkpoint "
             "found (%d parts looked for)", len(files), len(tasks), rows_in, len(todo.todo),
             todo.redo_error_rows, todo.committed.num_rows, broken, todo.recovered, todo.probed)
    metadata = provenance(s.model, rm, fp, s.data.decode)

    stop.interruptible = False  # from here a stop abandons tasks and commits what was done
    pool, tally = _dispatch(s, todo, ledger, metadata, stop, runner)
    not_run = [t.task_id for t in pool.outcome.not_run]
    written = ledger.close(frontier=not_run)
    done = Committed.of([todo.committed, ledger.recorded()], tasks)
    pa.default_memory_pool().release_unused()  # the copies made to order the entries
    settings = _settings(given)
    metadata = dict(metadata, batch_size=done.totals()["batch_size"] or s.model.batch_size)
    write_manifest(out_fs, out_path, {"fingerprint": fp, "metadata": metadata,
                                      "settings": settings}, done.batches())
    for t in tasks:  # unplannable files: failures of the run, not of a task
        if t.error:
            tally.add(t, TaskResult(t.task_id, t.uri, 0, 0, ok=False, error=t.error))
    summary = _summary(s, given, started, t0, files, tasks, todo, pool, tally, done, fp,
                       metadata, stop, ledger, written,
                       bad_files=done.unusable_files(out_fs, out_path))
    if not stop.signum and s.report is not None and getattr(s.report, "enabled", False):
        summary["report"] = _build_report(s)
        if summary["exit_code"] == EXIT_OK and "error" in summary["report"]:
            summary["exit_code"] = EXIT_REPORT
    code = summary["exit_code"]
    # a failed report leaves the audit complete: _SUCCESS still describes the results
    write_summary(out_fs, out_path, summary, success=code in (EXIT_OK, EXIT_REPORT))
    return code, summary


def _dispatch(s: JobSettings, todo: Resume, ledger: Ledger, metadata: dict[str, Any],
              stop: StopSignals, runner: type | None) -> tuple[PoolRun, Tally]:
    """Run the tasks to do on the actors, recording each as it finishes."""
    tally = Tally(len(todo.todo), sum(t.rows for t in todo.todo), s.run.log_every_s)
    window = 2 * s.run.checkpoint_every_tasks
    for c in todo.commits:  # found before the run: recorded with its first checkpoint
        ledger.add(c)
    ledger.start().checkpoint([t.task_id for t in todo.todo[:window]])

    def on_result(task: Task, res: TaskResult) -> None:
        tally.add(task, res)
        ledger.add(commit_of(task, res.rows_out, res.status_counts, res.batch_size,
                             res.part_bytes) if res.ok else None)

    def on_tick(d: Dispatcher) -> None:
        tally.tick(d.retries)
        if ledger.due():
            ledger.checkpoint(d.frontier(window))

    pool = PoolRun()
    if todo.todo and not stop.event.is_set():
        with _progress(sum(t.rows for t in todo.todo), s.run.progress) as bar:
            pool = run_on_actors(s, todo.todo, metadata, stop.event, bar, on_result=on_result,
                                 on_tick=on_tick, runner=runner)
        tally.tick(pool.outcome.retries, final=True)  # every run's log ends with where it got to
    elif todo.todo:  # stopped before dispatch: every task is left for the next run
        pool.outcome.not_run = list(todo.todo)
    return pool, tally


def _summary(s: JobSettings, given: JobSettings, started: str, t0: float, files: list,
             tasks: list[Task], todo: Resume, pool: PoolRun, tally: Tally, committed: Committed,
             fp: str, metadata: dict[str, Any], stop: StopSignals, ledger: Ledger,
             ledger_written: bool, bad_files: list[dict[str, Any]]) -> dict[str, Any]:
    """The run summary (``_summary.json``, the last line of stdout)."""
    done = committed.totals()
    failed = tally.failed
    partial = bool(failed or done["status_counts"].get(ERROR))
    code = stop.exit_code if stop.signum else EXIT_PARTIAL if partial else EXIT_OK
    n_actors, run_seconds = pool.actors, pool.run_seconds
    rows_run, compute = tally.rows_run, tally.compute_seconds
    summary = {
        "exit_code": code,
        "status": "stopped" if stop.signum else "partial" if partial else "succeeded",
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows_in": sum(t.rows for t in tasks),
        "rows_out": done["rows_out"],
        "rows_run": rows_run,
        "files_total": len(files),
        "files_empty": len({f.uri for f in files} - {t.uri for t in tasks}),
        "tasks_total": len(tasks),
        "rows_per_task": s.run.rows_per_task,  # as resolved (run.rows_per_task null: by device)
        "tasks_run": len(todo.todo),
        "tasks_skipped": todo.committed.num_rows,
        "tasks_recovered": todo.recovered,  # committed after the last checkpoint, found
        "tasks_failed": failed,
        "tasks_not_run": len(pool.outcome.not_run),  # left by a stop; the next run does them
        # committed with rows that failed in the engine on every try: the next run redoes them
        "tasks_with_error_rows": done["tasks_with_error_rows"],
        "tasks_retried": pool.outcome.retries,
        "status_counts": done["status_counts"],
        "seconds": round(time.time() - t0, 2),
        "pairs_per_second": round(rows_run / run_seconds, 3) if rows_run and run_seconds else 0.0,
        "batch_splits": tally.batch_splits,
        # JPEGs data.decode=device decoded on the CPU after all (a run whose device path fell
        # back entirely must not look normal)
        "device_fallbacks": tally.device_fallbacks,
        "batch_size": tally.batch_size,
        # the engine's own rate inside this run, and the share of actor time it took:
        # the rest is reading, decoding, writing and Ray
        "compute_seconds": round(compute, 2),
        "engine_pairs_per_second": round(rows_run / compute, 3) if compute else 0.0,
        "engine_share_of_actor_time": (round(compute / (run_seconds * n_actors), 3)
                                       if compute and n_actors else 0.0),
        "actors": n_actors,
        "decode_processes": pool.decode_processes,  # per actor; 0: decoded in threads
        "driver_peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": tally.worker_peak_rss_mb,
        "ledger": {"segments_written": ledger.segments_written,
                   "all_written": ledger_written, "files": len(ledger.files)},
        "failures": tally.failures,  # the first MAX_LISTED_FAILURES; each is in the log
        "bad_files": bad_files,
        "fingerprint": fp,
        "provenance": metadata,
        "versions": versions(),
        "settings": _settings(given),
    }
    if stop.signum:
        summary["stopped_by"] = stop.name
        log.warning("stopped by %s: %d task(s) committed by this run, %d left for the next run "
                    "(manifest and summary written)", stop.name, tally.ok,
                    len(pool.outcome.not_run))
    return summary


def _build_report(s: JobSettings) -> dict[str, Any]:
    """The audit report under ``<output>/report``. Its failure is recorded here
    (``error``) and makes the exit code 4; the audit's results stay committed."""
    from pipeline.report.build import build_report

    where = join(s.output, "report")
    try:
        report = build_report(s.output, where, s.report, s.storage)
        return {"path": where, "findings": len(report.get("findings", []))}
    except Exception as e:
        log.error("report failed: %s: %s", type(e).__name__, e)
        return {"path": where, "error": f"{type(e).__name__}: {e}"}
