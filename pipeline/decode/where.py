"""Where a worker's decoding runs, as a count of processes: plain arithmetic, so that the
cluster plan (and ``nibt-report``, which plans with it) need not import torch.

On a CPU the engine's operations are long, so decode threads beside them share the
GIL at little cost. Beside a GPU the compute thread launches thousands of short
kernels per batch and retakes the GIL for each; decode threads would hold it for
their Python work, so decoding goes to processes of its own.
"""

from __future__ import annotations


def decode_processes(configured: int | None, threads: int, gpus: float) -> int:
    """Decode processes per actor: as configured, else beside a GPU one per CPU the
    actor reserved but the compute thread's (at least one), on a CPU none (threads)."""
    if configured is not None:
        return configured
    return max(1, threads - 1) if gpus > 0 else 0
