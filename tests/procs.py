"""Process checks for tests that kill workers: is a process still running?"""

from __future__ import annotations

import time


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited child not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    """Wait up to ``seconds`` for ``pids`` to end; the ones still running."""
    deadline = time.time() + seconds
    while time.time() < deadline and any(running(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if running(p)]
