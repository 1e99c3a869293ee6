"""Process checks for tests that kill workers: is a process still running, which
workers are this test's own."""

from __future__ import annotations

import os
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


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (all its threads')."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    out = []
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def own_workers(title: str = "ray::TaskRunner.run") -> list[int]:
    """This test process's Ray workers showing ``title`` (an embedded Ray's workers are
    its descendants); never another process's, however alike (others' tests on the
    same machine run the same actors). Sorted by pid."""
    found = []
    for p in descendants(os.getpid()):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except FileNotFoundError:
            continue
        if cmd.startswith(title) and running(p):
            found.append(p)
    return sorted(found)


def wait_for(condition, seconds: float, step: float = 0.05):
    """``condition()``'s first true value within ``seconds`` (polled), else its last value:
    a bounded wait for what a test would otherwise sleep and hope for."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)
