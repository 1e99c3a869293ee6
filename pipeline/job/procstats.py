"""Process figures for summaries and benchmarks."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Reads VmHWM, which belongs to the process image; ``ru_maxrss`` would report
    the parent's peak for a child started by fork + exec.
    """
    kb = status_kb("VmHWM")
    if kb is not None:
        return round(kb / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def status_kb(field: str, pid: int | str = "self") -> int | None:
    """A figure of ``/proc/<pid>/status`` in kB (``VmRSS``, ``VmHWM``); None where there is
    none (not Linux, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
