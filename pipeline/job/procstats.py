"""Process figures for summaries and benchmarks."""

from __future__ import annotations

import contextlib
import ctypes
import resource


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Reads VmHWM, which belongs to the process image; ``ru_maxrss`` would report
    the parent's peak for a child started by fork + exec.
    """
    kb = _status_kb("VmHWM")
    if kb is not None:
        return round(kb / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _mmap_large_blocks(threshold: int = 1 << 20) -> None:
    """Serve blocks over ``threshold`` bytes with their own mappings (glibc).

    Freed large blocks then leave the address space at once; with glibc's
    default (a threshold that grows to 32 MB) they stay in the heap, still
    counted against RLIMIT_DATA, and a smaller retry after an out-of-memory
    error fails too.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)


def cap_data_memory(headroom_mb: int) -> int | None:
    """Let this process allocate at most ``headroom_mb`` more (RLIMIT_DATA).

    Allocations beyond it fail with an ordinary out-of-memory error that the
    caller can handle (split the batch) instead of the kernel's OOM killer
    ending the process. Returns the limit in bytes, or None where unsupported.
    """
    data_kb = _status_kb("VmData")
    if data_kb is None:
        return None
    _mmap_large_blocks()
    limit = (data_kb + headroom_mb * 1024) * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit
