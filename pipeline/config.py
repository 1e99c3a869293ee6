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
from pathlib import Path
from typing import Any

import pipeline

#: Output schema version: bump when the columns' meaning changes.
SCHEMA_VERSION = 1
_ENGINE_SOURCES = ("towers.py", "nibt.py", "metrics.py", "decode.py", "attribute.py", "model.py")


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
    """Which CLIP, which weights, and how the engine runs (``model/`` group)."""

    name: str = "nibt-demo"
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
    compile: bool = False  # torch.compile the towers' suffixes (pays off on GPUs, long warm-up)

    def __post_init__(self) -> None:
        _require(bool(self.name), "model.name", "must name an open_clip model")
        _require(self.steps >= 1, "model.steps", f"must be >= 1, got {self.steps}")
        _require(
            self.schedule in ("uniform", "log"), "model.schedule",
            f"must be 'uniform' or 'log', got {self.schedule!r}",
        )
        _require(
            self.precision in ("auto", "fp32", "bf16", "fp16"), "model.precision",
            f"must be auto, fp32, bf16 or fp16, got {self.precision!r}",
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


@dataclass
class StorageSettings:
    """How to reach object storage (``storage/`` group). No credentials here."""

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False
    max_attempts: int = 10

    def __post_init__(self) -> None:
        check_no_credentials("storage.endpoint_url", self.endpoint_url)
        _require(self.max_attempts >= 1, "storage.max_attempts", "must be >= 1")

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
            "config_kwargs": {"retries": {"max_attempts": self.max_attempts, "mode": "standard"}},
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
    # beside a GPU, 1 on CPU (where decoding would take cores from the compute) or
    # under worker_memory_headroom_mb (the second task would eat the headroom).
    tasks_per_actor: int | None = None
    temp_dir: str | None = None
    namespace: str = "nibt-audit"
    # Cap on the memory a worker may allocate beyond what it holds once the model is
    # loaded (RLIMIT_DATA). A batch that would exceed it fails to allocate and is
    # split, instead of the kernel killing the worker. null: no cap.
    worker_memory_headroom_mb: int | None = None

    def __post_init__(self) -> None:
        _require(
            self.num_actors is None or self.num_actors >= 1, "cluster.num_actors", "must be >= 1"
        )
        _require(
            self.worker_memory_headroom_mb is None or self.worker_memory_headroom_mb > 0,
            "cluster.worker_memory_headroom_mb", "must be > 0",
        )
        _require(self.decode_threads is None or self.decode_threads >= 1,
                 "cluster.decode_threads", "must be >= 1")
        _require(self.decode_processes is None or self.decode_processes >= 0,
                 "cluster.decode_processes", "must be >= 0 (0: decode in threads)")
        _require(self.tasks_per_actor is None or self.tasks_per_actor >= 1,
                 "cluster.tasks_per_actor", "must be >= 1")
        check_no_credentials("cluster.address", self.address)


@dataclass
class RunSettings:
    """How the job splits, retries and resumes (``run/`` group)."""

    rows_per_task: int = 1024
    max_task_retries: int = 2
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        _require(self.rows_per_task >= 1, "run.rows_per_task", "must be >= 1")
        _require(self.max_task_retries >= 0, "run.max_task_retries", "must be >= 0")


def code_version() -> str:
    """Package version plus a hash of the modules that compute results."""
    h = hashlib.sha256()
    root = Path(pipeline.__file__).parent
    for name in _ENGINE_SOURCES:
        p = root / name
        if p.exists():
            h.update(p.read_bytes())
    return f"{pipeline.__version__}+{h.hexdigest()[:10]}"


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
