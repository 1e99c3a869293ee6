"""The audit driver: list -> plan -> skip committed -> actor pool -> retries -> commit.

Exit codes: 0 every task committed; 3 finished with failed tasks or rows that
failed in the engine; 2 bad configuration or an input that cannot be listed
(storage that does not answer included); 1 unexpected crash; 128 + n stopped by
signal n (143 SIGTERM, 130 SIGINT). See docs/reliability.md.
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

from pipeline.config import (
    SCHEMA_VERSION,
    ClusterSettings,
    ConfigError,
    DataSettings,
    ModelSettings,
    RunSettings,
    StorageSettings,
    check_no_credentials,
    code_version,
    fingerprint,
    public,
)
from pipeline.io.images import ERROR
from pipeline.io.manifest import PartEntry, write_manifest, write_summary
from pipeline.io.parts import PARTS_DIR, footers, part_rel
from pipeline.io.schema import RESULT_COLUMNS
from pipeline.io.storage import filesystem, join, list_inputs, list_names, remove_stale_temps
from pipeline.io.weights import weights_fetcher
from pipeline.job.actors import PoolRun, run_on_actors
from pipeline.job.cluster import ray_session
from pipeline.job.plan import plan
from pipeline.job.procstats import peak_rss_mb
from pipeline.job.stop import Stopped, StopSignals
from pipeline.job.worker import TaskResult

log = logging.getLogger("nibt-audit")

EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_PARTIAL = 0, 1, 2, 3


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
    import open_clip
    import pyarrow
    import torch

    out = {"nibt-audit": code_version(), "python": platform.python_version(),
           "torch": torch.__version__, "open_clip": open_clip.__version__,
           "pyarrow": pyarrow.__version__}
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


def results_fingerprint(s: JobSettings) -> tuple[str, dict[str, Any]]:
    """Hash of everything that changes results, and what went into it."""
    import open_clip

    from pipeline.engine.model import register_configs, resolve_weights

    register_configs()
    m = s.model
    if m.name not in open_clip.list_models():
        raise ConfigError(f"model.name: {m.name!r} is not an open_clip model")
    try:
        _, weights = resolve_weights(m.pretrained, m.name, m.pretrained_sha256,
                                     weights_fetcher(s.storage))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model.pretrained: {e}") from None
    if weights == "random":
        weights = f"random(seed={m.seed})"
    parts = {
        "model": m.name,
        "model_config": open_clip.get_model_config(m.name),
        "weights": weights,
        "layer": [m.layer, m.image_layer, m.text_layer],
        "steps": m.steps,
        "schedule": m.schedule,
        "precision": m.precision,
        "data": {k: v for k, v in public(s.data).items()},
        "code_version": code_version(),
        "schema_version": SCHEMA_VERSION,
    }
    return fingerprint(parts), parts


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
    s = dataclasses.replace(s, model=resolve_precision(s.model, actors_get_gpus(s)))
    files = list_inputs(s.input, s.storage)
    fp, fp_parts = results_fingerprint(s)
    tasks = plan(files, lambda uri: filesystem(uri, s.storage), s.run.rows_per_task, fp)
    out_fs, out_path = filesystem(s.output, s.storage)
    remove_stale_temps(out_fs, join(out_path, PARTS_DIR))  # left by writers killed mid-write
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
    metadata = {"model": s.model.name, "weights": fp_parts["weights"], "steps": s.model.steps,
                "schedule": s.model.schedule, "precision": s.model.precision,
                "code_version": fp_parts["code_version"], "fingerprint": fp,
                "schema_version": SCHEMA_VERSION}

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
            counts = meta.get("status_counts", {})
        elif r is not None and r.ok:
            rows, counts = r.rows_out, r.status_counts
        elif t.task_id in not_run:  # stopped before it finished: not a failure
            continue
        else:
            err = t.error if t.error else (r.error if r else "not run")
            failures.append({"task_id": t.task_id, "source": t.uri, "row_start": t.row_start,
                             "row_end": t.row_end, "error": err})
            continue
        status_counts.update(counts)
        entries.append(PartEntry(t.task_id, part_rel(t.task_id), rows, t.uri, t.row_start,
                                 t.row_end, t.input_fingerprint, dict(counts)))

    settings = _settings(s)
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
        "fingerprint": fp,
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
    write_summary(out_fs, out_path, summary, success=code == EXIT_OK)
    return code, summary


def _build_report(s: JobSettings) -> dict[str, Any]:
    """The audit report under ``<output>/report``; its failure does not fail the audit."""
    from pipeline.report.build import build_report

    where = join(s.output, "report")
    try:
        report = build_report(s.output, where, s.report, s.storage)
        return {"path": where, "findings": len(report.get("findings", []))}
    except Exception as e:
        log.error("report failed: %s: %s", type(e).__name__, e)
        return {"path": where, "error": f"{type(e).__name__}: {e}"}
