"""Typed, validated settings for each Hydra group, and the results fingerprint.

Each ``conf/<group>/*.yaml`` names one of these dataclasses as ``_target_``;
``hydra.utils.instantiate`` builds it and ``__post_init__`` refuses bad values
with a ``ConfigError`` that names the setting. Credentials are never settings:
they come from the environment, AWS config files or an instance role, so
nothing written from these objects can contain one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

#: Output schema version: bump when the columns' meaning changes.
SCHEMA_VERSION = 1


class ConfigError(ValueError):
    """A setting or an input location is unusable (exit code 2)."""


def _require(cond: bool, setting: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{setting}: {message}")


_USERINFO = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@", re.I)


def check_no_credentials(setting: str, value: str | None) -> None:
    """Refuse URLs with embedded credentials (``scheme://user:secret@host``)."""
    if value and _USERINFO.match(str(value)):
        raise ConfigError(
            f"{setting}: credentials embedded in a URL are refused; use the environment, "
            "~/.aws/credentials or an instance role"
        )


@dataclass
class ModelSettings:
    """Which CLIP, which weights, and how the engine runs (``model/`` group).

    ``name`` has no default: no run falls back to a model nobody chose. Layers
    left null follow the named model (see ``pipeline.engine.layers``).
    """

    name: str
    pretrained: str | None = "shipped"
    pretrained_sha256: str | None = None  # checked for weight files (local or remote)
    layer: int | None = None
    image_layer: int | None = None
    text_layer: int | None = None
    steps: int = 10
    schedule: str = "uniform"
    precision: str = "auto"  # auto: bf16 when the actors have GPUs, else fp32
    # Pairs per batch. None: as many as fit one chunk of the memory budget (NIBT.
    # pairs_per_chunk), 8 to 1,024: 8 for ViT-B-32 on CPU, ~1,000 on a big GPU.
    batch_size: int | None = None
    memory_budget_mb: float | None = None  # None: 512 on CPU, half the free GPU memory
    chunk_rows: int | None = None
    seed: int = 0
    compile: bool = False  # torch.compile each chunk's step, static shapes (long first batches)

    def __post_init__(self) -> None:
        _require(bool(self.name), "model.name", "must name an open_clip model")
        _require(self.steps >= 1, "model.steps", f"must be >= 1, got {self.steps}")
        _require(
            self.schedule in ("uniform", "log"), "model.schedule",
            f"must be 'uniform' or 'log', got {self.schedule!r}",
        )
        _require(
            self.precision != "fp16", "model.precision",
            "fp16 is refused: its gradients underflow without loss scaling, and the engine "
            "takes gradients; use bf16 (same speed on GPUs that have it) or fp32",
        )
        _require(
            self.precision in ("auto", "fp32", "bf16"), "model.precision",
            f"must be auto, fp32 or bf16, got {self.precision!r}",
        )
        _require(self.batch_size is None or self.batch_size >= 1, "model.batch_size",
                 f"must be >= 1 or null, got {self.batch_size}")
        _require(self.memory_budget_mb is None or self.memory_budget_mb > 0,
                 "model.memory_budget_mb", "must be > 0")
        if self.pretrained is not None and str(self.pretrained).lower() in ("null", "none", ""):
            self.pretrained = None
        check_no_credentials("model.pretrained", self.pretrained)


#: Values of ``data.decode``.
DECODE_PATHS = ("exact", "fast", "device")


@dataclass
class DataSettings:
    """Which input columns hold what (``data/`` group)."""

    image_column: str = "image"
    caption_column: str = "caption"
    id_column: str | None = None
    keep_columns: list[str] = field(default_factory=list)
    max_pixels: int = 64_000_000
    max_caption_chars: int = 4096
    # How images become the model's pixels (docs/performance.md, "Decoding"):
    # exact: open_clip's own PIL steps on the full image (bit for bit its transform);
    # fast: JPEGs decoded at a reduced DCT scale and resized with torch's antialiased
    #   bicubic (pixels within a few levels of exact), other images as exact;
    # device: JPEGs decoded in batches by torchvision on the actor's device (nvJPEG
    #   on a GPU) and resized there, other images as fast.
    decode: str = "fast"

    def __post_init__(self) -> None:
        self.keep_columns = list(self.keep_columns or [])
        _require(self.max_pixels > 0, "data.max_pixels", "must be > 0")
        _require(self.max_caption_chars > 0, "data.max_caption_chars", "must be > 0")
        _require(self.decode in DECODE_PATHS, "data.decode",
                 f"must be one of {', '.join(DECODE_PATHS)}, got {self.decode!r}")

    def read_columns(self) -> list[str]:
        cols = [self.image_column, self.caption_column]
        if self.id_column:
            cols.append(self.id_column)
        return list(dict.fromkeys(cols + self.keep_columns))


#: s3fs's own retries of a whole call (each made of ``max_attempts`` botocore
#: attempts): one more covers a body cut off mid-read, which botocore does not retry.
S3FS_CALL_TRIES = 2


@dataclass
class StorageSettings:
    """How to reach object storage (``storage/`` group). No credentials here.

    Every request has a bound: ``connect_timeout_s`` to connect, ``read_timeout_s``
    for each read of the answer, ``max_attempts`` attempts (botocore's standard
    retries: throttling, 5xx, dropped connections, timeouts), and s3fs tries each
    call ``S3FS_CALL_TRIES`` times. An endpoint that accepts connections and never
    answers fails a call after ``worst_case_s()`` (126 s with the defaults).
    """

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    max_attempts: int = 3
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 20.0
    # Requests the driver keeps in flight when it reads many small objects (input
    # footers while planning, part footers when resuming) and its connection pool.
    requests_in_flight: int = 64

    def __post_init__(self) -> None:
        check_no_credentials("storage.endpoint_url", self.endpoint_url)
        _require(self.requests_in_flight >= 1, "storage.requests_in_flight", "must be >= 1")
        _require(self.max_attempts >= 1, "storage.max_attempts", "must be >= 1")
        _require(self.connect_timeout_s > 0, "storage.connect_timeout_s", "must be > 0")
        _require(self.read_timeout_s > 0, "storage.read_timeout_s", "must be > 0")

    def worst_case_s(self) -> float:
        """Longest one storage call can take against an endpoint that never answers:
        every attempt waits its read timeout, plus botocore's backoff between attempts
        (at most 1, 2, 4, ... s, capped at 20) and s3fs's between its tries (0.1, 0.17 s)."""
        backoff = sum(min(20.0, 2.0 ** i) for i in range(self.max_attempts - 1))
        per_try = self.max_attempts * max(self.read_timeout_s, self.connect_timeout_s) + backoff
        return S3FS_CALL_TRIES * per_try + sum(min(1.7 ** i * 0.1, 15)
                                               for i in range(S3FS_CALL_TRIES))

    def endpoint(self) -> str:
        """The endpoint requests go to, for error messages."""
        if self.endpoint_url:
            return self.endpoint_url
        return f"AWS S3 ({self.region or 'default region'})"

    def options(self, uri: str) -> dict[str, Any]:
        """fsspec storage options for ``uri`` (empty for local paths)."""
        if not str(uri).startswith(("s3://", "s3a://")):
            return {}
        client: dict[str, Any] = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        return {
            "anon": self.anon,
            # other processes (the actors) write under the output while the driver holds
            # this filesystem: a cached listing would hide their parts from the report
            "use_listings_cache": False,
            "client_kwargs": client,
            "config_kwargs": {
                "connect_timeout": self.connect_timeout_s,
                "read_timeout": self.read_timeout_s,
                # total_max_attempts counts the first attempt (botocore's max_attempts
                # would not: 10 meant 11 requests)
                "retries": {"total_max_attempts": self.max_attempts, "mode": "standard"},
                # botocore's default pool (10) would cap the requests in flight
                "max_pool_connections": self.requests_in_flight,
            },
        }


@dataclass
class ClusterSettings:
    """Where the actors run (``cluster/`` group)."""

    address: str | None = None
    num_actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float | None = None
    decode_threads: int | None = None  # None: 2 beside CPU compute (threads decode there)
    # Decode processes per actor. None: beside a GPU, the actor's CPUs less one (none
    # share the compute thread's GIL); on CPU, 0 (threads, see decode_threads).
    decode_processes: int | None = None
    # Tasks in flight per actor: with 2, the next task reads and decodes while the
    # current one's batch is on the GPU (one batch computes at a time). None: 2
    # beside a GPU, 1 on CPU (where decoding would take cores from the compute).
    tasks_per_actor: int | None = None
    temp_dir: str | None = None
    namespace: str = "nibt-audit"
    # Memory each actor declares to Ray (MB): Ray places actors by it, and the engine's
    # chunk budget on CPU stays within a share of it; an actor that still overruns is
    # ended by Ray's memory monitor (or the cgroup) and its task retried elsewhere.
    # null: each node's memory, as Ray counts it, shared among the actors it holds.
    memory_per_actor_mb: float | None = None
    # Seconds an actor may take to start (load the model) or to come back after a
    # restart; past it the actor is given up and its tasks go to the others.
    actor_start_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        _require(self.actor_start_timeout_s > 0, "cluster.actor_start_timeout_s", "must be > 0")
        _require(
            self.num_actors is None or self.num_actors >= 1, "cluster.num_actors", "must be >= 1"
        )
        _require(self.memory_per_actor_mb is None or self.memory_per_actor_mb > 0,
                 "cluster.memory_per_actor_mb", "must be > 0 or null")
        _require(self.decode_threads is None or self.decode_threads >= 1,
                 "cluster.decode_threads", "must be >= 1")
        _require(self.decode_processes is None or self.decode_processes >= 0,
                 "cluster.decode_processes", "must be >= 0 (0: decode in threads)")
        _require(self.tasks_per_actor is None or self.tasks_per_actor >= 1,
                 "cluster.tasks_per_actor", "must be >= 1")
        check_no_credentials("cluster.address", self.address)


#: The automatic task timeout: a fixed part, and how far past the slowest rate seen.
TASK_TIMEOUT_BASE_S, TASK_TIMEOUT_SLOW_FACTOR = 300.0, 4.0
#: ``run.rows_per_task`` when unset: beside a GPU, tens of seconds of engine work per
#: task (ViT-B-32 at 3,000-6,000 pairs/s: 11-22 s) against a handful of storage
#: requests; on CPU, where ViT-B-32 attributes ~3.4 pairs/s, minutes per task.
ROWS_PER_TASK_GPU, ROWS_PER_TASK_CPU = 65_536, 1_024


@dataclass
class RunSettings:
    """How the job splits, retries, resumes and keeps its books (``run/`` group)."""

    # Rows per task (tasks follow row-group boundaries and never span files). None:
    # ROWS_PER_TASK_GPU when the actors get GPUs, else ROWS_PER_TASK_CPU.
    rows_per_task: int | None = None
    max_task_retries: int = 2
    overwrite: bool = False
    progress: bool = True
    # Seconds a task may run before its actor is killed and the task retried. null:
    # sized from the task's rows (see ``task_timeout``).
    task_timeout_s: float | None = None
    task_timeout_per_row_s: float = 2.0
    # The record of committed parts (``<output>/_ledger/``) is written whenever either
    # is reached, so a driver that dies loses at most this much bookkeeping.
    checkpoint_every_s: float = 30.0
    checkpoint_every_tasks: int = 1000
    # Seconds between the aggregate progress lines in the log (failures: each at once).
    log_every_s: float = 30.0
    # The ledger is the record of committed parts. true: also list parts/ and run again
    # the tasks whose part is gone (removed by hand); one request per 1,000 parts.
    verify_parts: bool = False

    def __post_init__(self) -> None:
        _require(self.rows_per_task is None or self.rows_per_task >= 1, "run.rows_per_task",
                 "must be >= 1 or null (sized for the actors' devices)")
        _require(self.checkpoint_every_s > 0, "run.checkpoint_every_s", "must be > 0")
        _require(self.checkpoint_every_tasks >= 1, "run.checkpoint_every_tasks", "must be >= 1")
        _require(self.log_every_s > 0, "run.log_every_s", "must be > 0")
        _require(self.max_task_retries >= 0, "run.max_task_retries", "must be >= 0")
        _require(self.task_timeout_s is None or self.task_timeout_s > 0, "run.task_timeout_s",
                 "must be > 0 or null (sized from the task's rows)")
        _require(self.task_timeout_per_row_s > 0, "run.task_timeout_per_row_s", "must be > 0")

    def task_rows(self, gpu: bool) -> int:
        """Rows per task: as set, else sized for the actors' device."""
        if self.rows_per_task is not None:
            return self.rows_per_task
        return ROWS_PER_TASK_GPU if gpu else ROWS_PER_TASK_CPU

    def task_timeout(self, rows: int, slowest_s_per_row: float = 0.0) -> float:
        """Seconds a task of ``rows`` rows may take: ``task_timeout_s`` when set, else
        ``TASK_TIMEOUT_BASE_S`` plus ``task_timeout_per_row_s`` per row, the per-row
        figure raised to ``TASK_TIMEOUT_SLOW_FACTOR`` times the slowest rate seen in the
        run (a large model on CPU must not time out for being slow, only for stalling)."""
        if self.task_timeout_s is not None:
            return float(self.task_timeout_s)
        per_row = max(self.task_timeout_per_row_s, TASK_TIMEOUT_SLOW_FACTOR * slowest_s_per_row)
        return TASK_TIMEOUT_BASE_S + rows * per_row


def fingerprint(parts: dict[str, Any]) -> str:
    """A stable hash of everything that changes results."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def public(obj: Any) -> Any:
    """A JSON-ready view of settings dataclasses (they hold no secrets by design)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: public(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [public(o) for o in obj]
    if isinstance(obj, dict):
        return {k: public(v) for k, v in obj.items()}
    return obj
