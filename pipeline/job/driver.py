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
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import fsspec

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
from pipeline.io.images import ERROR
from pipeline.io.manifest import PartEntry, write_manifest, write_summary
from pipeline.io.parts import PARTS_DIR, error_counts, footers, part_rel
from pipeline.io.schema import RESULT_COLUMNS
from pipeline.io.shards import schema_problem
from pipeline.io.storage import (
    check_writable,
    filesystem,
    join,
    list_inputs,
    list_names,
    remove_stale_temps,
)
from pipeline.job.actors import PoolRun, run_on_actors
from pipeline.job.cluster import ray_session
from pipeline.job.plan import plan
from pipeline.job.procstats import peak_rss_mb
from pipeline.job.provenance import (
    library_versions,
    provenance,
    resolve_model,
    results_fingerprint,
)
from pipeline.job.stop import Stopped, StopSignals
from pipeline.job.worker import TaskResult

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


def run_job(s: JobSettings) -> tuple[int, dict[str, Any]]:
    """Run the audit; returns (exit code, summary). Raises ConfigError for bad settings.

    On a joined cluster the session spans the whole run (the cluster is asked
    whether actors get GPUs before the fingerprint is made); an embedded Ray
    starts only when there is work to do. SIGTERM / SIGINT stop it cleanly
    (``pipeline.job.stop``): exit code 128 + the signal.
    """
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with StopSignals() as stop:
        try:
            with ray_session(s.cluster) if _joined(s) else contextlib.nullcontext():
                return _run(s, stop, started)
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


def _run(s: JobSettings, stop: StopSignals, started: str) -> tuple[int, dict[str, Any]]:
    t0 = time.time()
    given = s  # the settings as given, recorded beside what they resolved to
    s = dataclasses.replace(s, model=resolve_precision(s.model, actors_get_gpus(s)))
    rm = resolve_model(s.model, s.storage)
    # the actors use the layers resolved here, so what is recorded is what ran
    s = dataclasses.replace(s, model=dataclasses.replace(
        s.model, image_layer=rm.image_layer, text_layer=rm.text_layer))
    log.info("model %s, weights %s, image layer %d of %d, text layer %d of %d, %d steps (%s), %s",
             s.model.name, rm.weights, rm.image_layer, rm.depths[0], rm.text_layer, rm.depths[1],
             s.model.steps, s.model.schedule, s.model.precision)
    files = list_inputs(s.input, s.storage)
    fp, _ = results_fingerprint(s.model, s.data, rm)
    d = s.data
    tasks = plan(files, lambda uri: filesystem(uri, s.storage), s.run.rows_per_task, fp,
                 check=lambda schema: schema_problem(
                     schema, d.image_column, d.caption_column,
                     [c for c in d.read_columns() if c not in (d.image_column, d.caption_column)]))
    out_fs, out_path = filesystem(s.output, s.storage)
    remove_stale_temps(out_fs, join(out_path, PARTS_DIR))  # left by writers killed mid-write
    check_writable(out_fs, join(out_path, PARTS_DIR), s.output)
    existing = set(list_names(out_fs, join(out_path, PARTS_DIR)))
    broken = [t for t in tasks if t.error]
    committed = [t for t in tasks if not t.error and f"{t.task_id}.parquet" in existing
                 and not s.run.overwrite]
    committed_meta = dict(zip([t.task_id for t in committed], footers(
        out_fs, [join(out_path, part_rel(t.task_id)) for t in committed])))
    # rows in status error failed in the engine (a fault of the worker, not of the data):
    # their task runs again
    skipped = [t for t in committed
               if not committed_meta[t.task_id][1].get("status_counts", {}).get(ERROR)]
    skipped_ids = {t.task_id for t in skipped}
    todo = [t for t in tasks if not t.error and t.task_id not in skipped_ids]
    rows_in = sum(t.rows for t in tasks)
    log.info("%d files, %d tasks (%d rows): %d to run (%d of them committed with error rows), "
             "%d already committed, %d unreadable", len(files), len(tasks), rows_in, len(todo),
             len(committed) - len(skipped), len(skipped), len(broken))
    metadata = provenance(s.model, rm, fp, s.data.decode)

    stop.interruptible = False  # from here a stop abandons tasks and commits what was done
    pool, not_run = PoolRun(), {t.task_id for t in todo}
    if todo and not stop.event.is_set():
        with _progress(sum(t.rows for t in todo), s.run.progress) as bar:
            pool = run_on_actors(s, todo, metadata, stop.event, bar)
        not_run = {t.task_id for t in pool.outcome.not_run}  # left by a stop
    results: list[TaskResult] = pool.outcome.results
    retries = pool.outcome.retries
    n_actors, decoders, run_seconds = pool.actors, pool.decode_processes, pool.run_seconds

    by_id = {r.task_id: r for r in results}
    skipped_meta = {t.task_id: committed_meta[t.task_id] for t in skipped}
    entries: list[PartEntry] = []
    failures: list[dict[str, Any]] = []
    status_counts: Counter = Counter()
    for t in tasks:
        r = by_id.get(t.task_id)
        if t.task_id in skipped_meta:
            rows, meta = skipped_meta[t.task_id]
            counts, batch = meta.get("status_counts", {}), meta.get("batch_size")
        elif r is not None and r.ok:
            rows, counts, batch = r.rows_out, r.status_counts, r.batch_size
        elif t.task_id in not_run:  # stopped before it finished: not a failure
            continue
        else:
            err = t.error if t.error else (r.error if r else "not run")
            failures.append({"task_id": t.task_id, "source": t.uri, "row_start": t.row_start,
                             "row_end": t.row_end, "error": err})
            continue
        status_counts.update(counts)
        entries.append(PartEntry(t.task_id, part_rel(t.task_id), rows, t.uri, t.row_start,
                                 t.row_end, t.input_fingerprint, dict(counts), batch))

    sizes = [e.batch_size for e in entries if e.batch_size]
    metadata["batch_size"] = max(sizes) if sizes else s.model.batch_size  # each part: its own
    bad_files = unusable_files(out_fs, out_path, entries)
    settings = _settings(given)
    write_manifest(out_fs, out_path, {"fingerprint": fp, "metadata": metadata,
                                      "settings": settings}, entries)
    rows_run = sum(r.rows_out for r in results if r.ok)
    compute = sum(r.compute_seconds for r in results if r.ok)
    partial = bool(failures or status_counts.get(ERROR))
    code = stop.exit_code if stop.signum else EXIT_PARTIAL if partial else EXIT_OK
    status = "stopped" if stop.signum else "partial" if partial else "succeeded"
    summary = {
        "exit_code": code,
        "status": status,
        "started_at": started,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows_in": rows_in,
        "rows_out": sum(e.rows for e in entries),
        "rows_run": rows_run,
        "files_total": len(files),
        "files_empty": len({f.uri for f in files} - {t.uri for t in tasks}),
        "tasks_total": len(tasks),
        "tasks_run": len(todo),
        "tasks_skipped": len(skipped),
        "tasks_failed": len(failures),
        "tasks_not_run": len(not_run),  # left by a stop; the next run does them
        # committed with rows that failed in the engine on every try: the next run redoes them
        "tasks_with_error_rows": sum(1 for e in entries if e.status_counts.get(ERROR)),
        "tasks_retried": retries,
        "status_counts": dict(sorted(status_counts.items())),
        "seconds": round(time.time() - t0, 2),
        "pairs_per_second": round(rows_run / run_seconds, 3) if rows_run and run_seconds else 0.0,
        "batch_splits": sum(r.batch_splits for r in results if r.ok),
        "batch_size": max((r.batch_size for r in results if r.ok), default=0),
        # the engine's own rate inside this run, and the share of actor time it took:
        # the rest is reading, decoding, writing and Ray
        "compute_seconds": round(compute, 2),
        "engine_pairs_per_second": round(rows_run / compute, 3) if compute else 0.0,
        "engine_share_of_actor_time": (round(compute / (run_seconds * n_actors), 3)
                                       if compute and n_actors else 0.0),
        "actors": n_actors,
        "decode_processes": decoders,  # per actor; 0: decoded in threads
        "driver_peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": max((r.peak_rss_mb for r in results if r.ok), default=0.0),
        "failures": failures,
        "bad_files": bad_files,
        "fingerprint": fp,
        "provenance": metadata,
        "versions": versions(),
        "settings": settings,
    }
    if stop.signum:
        summary["stopped_by"] = stop.name
        log.warning("stopped by %s: %d task(s) committed by this run, %d left for the next run "
                    "(manifest and summary written)", stop.name, sum(r.ok for r in results),
                    len(not_run))
    elif s.report is not None and getattr(s.report, "enabled", False):
        summary["report"] = _build_report(s)
        if code == EXIT_OK and "error" in summary["report"]:
            code = summary["exit_code"] = EXIT_REPORT
    # a failed report leaves the audit complete: _SUCCESS still describes the results
    write_summary(out_fs, out_path, summary, success=code in (EXIT_OK, EXIT_REPORT))
    return code, summary


#: Statuses that, on every row of a file, point at the file or the settings
#: (a wrong column, a different encoding) rather than at a few bad rows.
FILE_WIDE = ("bad_image", "bad_caption")


def unusable_files(
    fs: fsspec.AbstractFileSystem, out_path: str, entries: list[PartEntry]
) -> list[dict[str, Any]]:
    """Input files none of whose committed rows could be used, each with the
    status all its rows got and the commonest error (read from its parts);
    logged as warnings. The run goes on: these rows have their status."""
    by_file: dict[str, list[PartEntry]] = {}
    for e in entries:
        by_file.setdefault(e.source, []).append(e)
    out = []
    for source, parts in by_file.items():
        rows = sum(e.rows for e in parts)
        counts: Counter = Counter()
        for e in parts:
            counts.update(e.status_counts)
        status = next((st for st in FILE_WIDE if rows and counts.get(st, 0) == rows), None)
        if status is None:
            continue
        errors: Counter = Counter()
        try:
            for e in parts:
                errors.update(error_counts(fs, join(out_path, e.path)))
        except Exception as err:  # the warning stands without its example
            log.warning("cannot read the errors of %s's parts: %s: %s", source,
                        type(err).__name__, err)
        error, n = errors.most_common(1)[0] if errors else (None, 0)
        log.warning("%s: all %d rows are %s; commonest error (%d rows): %s",
                    source, rows, status, n, error)
        out.append({"source": source, "rows": rows, "status": status,
                    "commonest_error": error, "commonest_error_rows": n})
    return out


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
