"""What a worker reports for one task: small, it travels back to the driver.

Plain Python (no torch), so the dispatcher, the driver and actors that run no
engine share it with the worker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TaskResult:
    """One task's outcome: committed (``ok``) with its counts, or failed with the reason."""

    task_id: str
    uri: str
    row_start: int
    row_end: int
    ok: bool
    rows_out: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    part: str | None = None
    part_bytes: int = 0  # size of the part object written
    error: str | None = None
    retryable: bool = False
    pid: int = 0
    peak_rss_mb: float = 0.0
    batch_splits: int = 0  # batches split in halves after running out of memory
    compute_seconds: float = 0.0  # time spent attributing and scoring (the engine's share)
    batch_size: int = 0  # pairs per batch the actor used (set, or chosen for its memory)
    error_rows: int = 0  # rows that failed in the engine (status ``error``)
    device_fallbacks: int = 0  # JPEGs data.decode=device left to the CPU decoder

    def to_dict(self) -> dict:
        return asdict(self)
