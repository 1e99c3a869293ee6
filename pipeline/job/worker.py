"""One worker: the model loaded once; per task read -> decode -> attribute -> score -> write.

``TaskRunner`` is plain Python (the job wraps it in a Ray actor), so it can be
tested and profiled without Ray. Reading and decoding run in background threads
and stay one batch ahead of the model (a bounded queue), so the engine does not
wait for storage or image codecs.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import torch

from pipeline.config import DataSettings, ModelSettings, StorageSettings
from pipeline.decode.build import Decoding, build_decoder
from pipeline.engine import device_health
from pipeline.engine.layers import bottleneck_layers
from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT, default_budget_mb
from pipeline.io import webdataset as wds
from pipeline.io.images import ERROR, OK, Decoded
from pipeline.io.parts import PartBuilder, commit_part, normalise_carried
from pipeline.io.shards import TaskError, iter_rows
from pipeline.io.storage import filesystem
from pipeline.io.weights import weights_fetcher
from pipeline.job import faults
from pipeline.job.attribute import Attributor, Staged, Stager, auto_batch_size
from pipeline.job.plan import Task
from pipeline.job.procstats import peak_rss_mb
from pipeline.job.provenance import library_versions
from pipeline.job.results import TaskResult

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """One batch as the model needs it, prepared off the compute thread."""

    rows: list[Decoded]
    ids: list[str]
    first_row: int
    carried: pa.RecordBatch | None
    ok: list[int] = field(default_factory=list)  # rows that decoded
    pixels: torch.Tensor | None = None  # [len(ok), ...], pinned when the model is on a GPU
    tokens: torch.Tensor | None = None
    truncated: list[bool] = field(default_factory=list)
    fallbacks: int = 0  # JPEGs the device decoder left to the CPU
    staged: Staged | None = None  # pixels and tokens on their way to the device


def _prefetch(it: Iterator[Any], depth: int, pool: ThreadPoolExecutor) -> Iterator[Any]:
    """Run ``it`` on ``pool``'s thread, ``depth`` items ahead; re-raise its errors."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    future = pool.submit(produce)
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a producer waiting on a full queue
                q.get_nowait()
        future.result()


def _explain(rows: list[Decoded], notes: list[str | None]) -> None:
    """Add to each failed row's error why its shard member was missing (``notes``)."""
    for dec, why in zip(rows, notes):
        if why and dec.status != OK:
            dec.error = f"{dec.error} ({why})" if dec.error else why


#: Share of an actor's declared memory one engine chunk may use on CPU (the model, the
#: decoders, the task's rows and Python take the rest).
CPU_BUDGET_SHARE = 0.25


class TaskRunner:
    """Holds the model and runs whole tasks, writing one part each.

    ``decoders`` builds the batch decoder from the loaded model and the data settings
    (``decode.build.build_decoder``: threads, processes or the device); a test or a
    benchmark may hand another."""

    def __init__(
        self,
        model: ModelSettings,
        data: DataSettings,
        storage: StorageSettings,
        output: str,
        metadata: dict[str, Any],
        threads: int | None = None,
        decode_threads: int | None = None,
        decode_processes: int = 0,
        device: str | None = None,
        memory_mb: float | None = None,
        gpu_share: float = 1.0,
        decoders: Callable[..., Decoding] = build_decoder,
    ) -> None:
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        gpu = dev.startswith("cuda")
        if gpu:
            # Beside a GPU the host's work is launching kernels and decoding (in threads
            # or processes): one torch thread, not an OpenMP team per thread.
            torch.set_num_threads(1)
        elif threads:
            # Ray sets OMP_NUM_THREADS=1 in workers: use the CPUs this worker reserved.
            torch.set_num_threads(int(threads))
        self.model, self.data, self.storage = model, data, storage
        precision = model.precision
        if precision == "auto":  # the job resolves it; a bare runner decides by its device
            precision = "bf16" if dev.startswith("cuda") else "fp32"
        self.clip = load_clip(
            model.name, model.pretrained, device=dev, precision=precision,
            seed=model.seed, fetch=weights_fetcher(storage),
            sha256=model.pretrained_sha256,
        )
        budget = model.memory_budget_mb
        if budget is None and gpu and 0 < gpu_share < 1:  # actors sharing a GPU share its memory
            budget = default_budget_mb(self.clip.device) * gpu_share
        elif budget is None and not gpu and memory_mb:  # within what the actor declared
            budget = min(default_budget_mb(self.clip.device), memory_mb * CPU_BUDGET_SHARE)
        image_layer, text_layer = bottleneck_layers(  # the job passes them resolved
            model.name, self.clip.weights, (self.clip.image.depth, self.clip.text.depth),
            model.layer, model.image_layer, model.text_layer)
        self.engine = faults.wrap_engine(NIBT(  # itself unless the test hook is on
            self.clip, steps=model.steps, schedule=model.schedule,
            image_layer=image_layer, text_layer=text_layer,
            chunk_rows=model.chunk_rows, memory_budget_mb=budget, compile=model.compile,
        ))
        self.stager = Stager(self.clip.device)
        self.attributor = Attributor(self.clip, self.engine)
        self.batch_size = model.batch_size or auto_batch_size(self.engine)
        log.info("batch size %d pairs%s", self.batch_size, "" if model.batch_size else " (auto)")
        decoding = decoders(self.clip, data, decode_processes, threads, decode_threads)
        self.decoder, self.split = decoding.decoder, decoding.split
        self.output = output
        # what this worker runs with, as used: over the job's values
        self.metadata = {**metadata, **self.engine.config(), "batch_size": self.batch_size,
                         **library_versions()}
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nibt-read")
        # threads that fetch a shard's chunks ahead, started once for every task (not one
        # pool per shard), enough for two tasks in flight (each asks for its first chunk and
        # the READ_AHEAD after it at once)
        self.shard_reads = ThreadPoolExecutor(max_workers=2 * (wds.READ_AHEAD + 1),
                                              thread_name_prefix="nibt-shard-read")
        self.grid = self.clip.image.grid
        self._warm_up()
        with contextlib.suppress(Exception):  # storage client set up now, not in the first task
            out_fs, out_path = filesystem(output, storage)
            out_fs.exists(out_path)
        self._compute = threading.Lock()

    def _warm_up(self) -> None:
        """One small batch through the engine, so that one-time costs (kernel
        selection, allocator growth) fall before the first task, not in it."""
        h, w = self.clip.image.image_size
        n = min(self.batch_size, 2)
        pixels = torch.zeros(n, 3, h, w, device=self.clip.device)
        tokens, _ = self.clip.encode_captions(["a photo of a warm-up"] * n)
        self.attributor(pixels, tokens.to(self.clip.device))

    def close(self) -> None:
        """Stop the decode workers and the reader (a killed actor's decode processes
        exit by themselves, see ``decoders``)."""
        self.decoder.close()
        self.reader.shutdown(wait=True)
        self.shard_reads.shutdown(wait=True)
        gc.collect()  # runs multiprocessing's finalizers: its named semaphores are unlinked

    def ready(self) -> int:
        """The worker's process id, once the model is loaded."""
        return os.getpid()

    # ------------------------------------------------------------------ steps
    def _batches(self, task: Task, fs, path: str) -> Iterator[_Batch]:
        row = task.row_start
        batches = (wds.iter_sample_rows(fs, path, task, self.data, self.batch_size,
                                        self.shard_reads) if task.shard
                   else iter_rows(fs, path, task, self.data, self.batch_size))
        for rows in batches:
            decoded = self.decoder.decode(rows.images, rows.captions)
            if rows.notes is not None:
                _explain(decoded.rows, rows.notes)
            ids = [f"{task.uri}#{row + i}" for i in range(len(rows))]
            for i, v in enumerate(rows.ids or ()):
                if v is not None:
                    ids[i] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            batch = _Batch(decoded.rows, ids, row, rows.carried, decoded.ok, decoded.pixels,
                           fallbacks=decoded.fallbacks)
            if decoded.tokens is not None:  # tokenised by the decode processes
                batch.tokens, batch.truncated = torch.from_numpy(decoded.tokens), decoded.truncated
            elif batch.ok:
                batch.tokens, batch.truncated = self.clip.encode_captions(
                    [decoded.rows[i].caption for i in batch.ok])
            if batch.ok:  # the copy to the device starts here, beside the compute
                batch.staged = self.stager.stage(batch.pixels, batch.tokens)
            yield batch
            row += len(rows)

    def _attribute(self, batch: _Batch, part: PartBuilder, counts: Counter) -> tuple[float, int]:
        """Attribute one batch into ``part``; returns (compute seconds, batch splits)."""
        results: dict[int, Any] = {}
        truncated: dict[int, bool] = {}
        spent, splits = 0.0, 0
        if batch.ok:
            # one batch on the device at a time: a second task running on this actor
            # reads and decodes meanwhile (see ``run``)
            with self._compute:
                pixels, tokens = self.stager.take(batch.staged)
                if self.split is not None:
                    pixels = self.split.normalise(pixels)
                t0 = time.perf_counter()
                before = self.attributor.splits
                computed = self.attributor.compute(pixels, tokens)
                spent, splits = time.perf_counter() - t0, self.attributor.splits - before
            # per-pair results outside the lock: the other task's batch computes meanwhile
            scored = self.attributor.results(computed)
            for i, r, t in zip(batch.ok, scored, batch.truncated):
                results[i] = r
                truncated[i] = t
        gh, gw = self.grid
        for i, dec in enumerate(batch.rows):
            row = {"id": batch.ids[i], "row": batch.first_row + i,
                   "status": dec.status, "error": dec.error}
            r = results.get(i)
            if isinstance(r, Exception):
                row["status"], row["error"] = ERROR, f"{type(r).__name__}: {r}"
            elif r is not None:
                row.update(vars(r))  # shallow: asdict would deep-copy the arrays
                row.update(grid_h=gh, grid_w=gw, caption_truncated=truncated[i])
            counts[row["status"]] += 1
            part.add(row)
        part.seal(ERROR)
        return spent, splits

    # ------------------------------------------------------------------- task
    def run(self, task: Task, final: bool = True) -> TaskResult:
        """Process one task end to end; errors become a failed result, never a crash.

        Rows that fail in the engine (status ``error``: out of memory at one pair, a
        device error) are a fault of the worker, not of the data: unless this is the
        task's ``final`` attempt, nothing is committed and the result asks for a retry.
        On the final attempt they are committed with status ``error`` (the run then
        exits 3 and the next run recomputes the task).
        """
        t0 = time.perf_counter()
        compute, splits, fallbacks = 0.0, 0, 0
        base = {"task_id": task.task_id, "uri": task.uri, "row_start": task.row_start,
                "row_end": task.row_end, "pid": os.getpid()}
        if task.error:
            return TaskResult(ok=False, error=task.error, retryable=False, **base)
        try:
            with faults.task_scope(task.uri, task.row_start):  # inert unless the test hook is on
                fs, path = filesystem(task.uri, self.storage)
                part = PartBuilder(task.uri)
                counts: Counter = Counter()
                for batch in _prefetch(self._batches(task, fs, path), 2, self.reader):
                    if batch.carried is not None:
                        part.add_carried(batch.carried)
                    spent, split = self._attribute(batch, part, counts)
                    compute, splits = compute + spent, splits + split
                    fallbacks += batch.fallbacks
            errors = counts.get(ERROR, 0)
            if errors and not final:
                return TaskResult(ok=False, retryable=True, error_rows=errors,
                                  device_fallbacks=fallbacks,
                                  error=f"{errors} of {part.rows} rows failed in the engine "
                                        f"({part.first_error}); nothing committed",
                                  seconds=time.perf_counter() - t0, **base)
            carried_schema = None
            if self.data.keep_columns:
                first = part.carried[0].schema if part.carried else None
                carried_schema = normalise_carried(first, self.data.keep_columns) if first else None
                part.carried = [b.cast(carried_schema) for b in part.carried]
            row_end = task.row_start + part.rows if task.shard else task.row_end
            meta = dict(self.metadata, task_id=task.task_id, source=task.uri,
                        row_start=task.row_start, row_end=row_end,
                        input_fingerprint=task.input_fingerprint, status_counts=dict(counts))
            out_fs, out_path = filesystem(self.output, self.storage)
            table = part.table(meta, carried_schema)
            path_written, size = commit_part(out_fs, out_path, task.task_id, table)
            secs = time.perf_counter() - t0
            log.info("task %s: %d rows in %.1fs (%s)", task.task_id, part.rows, secs, dict(counts))
            return TaskResult(ok=True, rows_out=part.rows, status_counts=dict(counts),
                              seconds=secs, part=path_written, part_bytes=size,
                              peak_rss_mb=peak_rss_mb(),
                              batch_splits=splits, compute_seconds=compute,
                              batch_size=self.batch_size, error_rows=errors,
                              device_fallbacks=fallbacks, **base)
        except TaskError as e:
            return TaskResult(ok=False, error=str(e), retryable=e.retryable,
                              seconds=time.perf_counter() - t0, **base)
        except Exception as e:
            if device_health.is_fatal(e, self.clip.device):  # a broken context: restart
                device_health.end_process(e)
            return TaskResult(ok=False, error=f"{type(e).__name__}: {e}", retryable=True,
                              seconds=time.perf_counter() - t0, **base)
