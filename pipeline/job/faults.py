"""Test hook: faults injected into workers, for the reliability tests only.

Inert unless the environment variable ``NIBT_TEST_FAULTS`` is set: it names a
JSON file, read by the worker at the start of each task (the variable reaches Ray's
workers when it is set before Ray starts). No setting, command-line option or
config file reaches this hook. The file maps a fault to when it fires::

    {"engine_error": {"times": 1},
     "stall": {"times": 9, "source": "shard-2", "row_start": 8, "seconds": 3600}}

* ``engine_error``: every engine call of the task attempt raises a CUDA-like
  ``RuntimeError``, as a failing device would (its rows end in status ``error``);
* ``device_lost``: the task attempt's first engine call raises ``DeviceLost``, as a
  fatal CUDA error on a GPU does (the worker process ends; Ray restarts it);
* ``stall``: the task attempt sleeps ``seconds`` before reading, as an actor stuck
  on a read would;
* ``oom_above``: every engine call of the task attempt on more than ``pairs`` pairs
  raises CUDA's ``torch.OutOfMemoryError``, as a batch too big for the device does.

A fault fires for task attempts whose source contains ``source`` and whose first
row is ``row_start`` (both optional), at most ``times`` attempts over all workers
(counted by files created with O_EXCL beside the JSON file, so a retry on another
actor sees the count). Each such file holds the pid of the worker the fault fired
in, so that a test can tell which actors are inside a fault.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

ENV = "NIBT_TEST_FAULTS"
ENGINE_ERROR = "CUDA error: an illegal memory access was encountered (injected by NIBT_TEST_FAULTS)"

_scope = threading.local()


def enabled() -> bool:
    """Whether the hook is switched on in this process."""
    return bool(os.environ.get(ENV))


def _spec() -> dict[str, Any]:
    path = os.environ.get(ENV)
    if not path:
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def marker_dir(spec: str | os.PathLike) -> str:
    """Where the firings of the faults in the JSON file ``spec`` are counted."""
    return f"{os.fspath(spec)}.fired"


def fired_in(spec: str | os.PathLike, name: str) -> set[int]:
    """The pids of the workers fault ``name`` of ``spec`` has fired in so far."""
    try:
        paths = [os.path.join(marker_dir(spec), f) for f in os.listdir(marker_dir(spec))
                 if f.startswith(f"{name}-")]
    except FileNotFoundError:
        return set()
    pids = set()
    for path in paths:
        with open(path) as f:
            text = f.read()
        if text:  # empty for the moment between its creation and its write
            pids.add(int(text))
    return pids


def _take(name: str, times: int) -> bool:
    """Consume one of the ``times`` firings of fault ``name``; False once all are used."""
    state = marker_dir(os.environ[ENV])
    os.makedirs(state, exist_ok=True)
    for i in range(int(times)):
        try:
            fd = os.open(os.path.join(state, f"{name}-{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
        return True
    return False


def fired(uri: str, row_start: int) -> dict[str, dict[str, Any]]:
    """The faults that fire for this task attempt (empty when the hook is off)."""
    out = {}
    for name, rule in _spec().items():
        if rule.get("source") is not None and rule["source"] not in uri:
            continue
        if rule.get("row_start") is not None and int(rule["row_start"]) != row_start:
            continue
        if _take(name, rule.get("times", 1)):
            out[name] = rule
    return out


@contextlib.contextmanager
def task_scope(uri: str, row_start: int) -> Iterator[None]:
    """Around one task attempt, in the thread that runs it: decide its faults, stall
    if one says so; ``FaultyEngine`` reads the decision."""
    faults = fired(uri, row_start) if enabled() else {}
    _scope.faults = faults
    try:
        if "stall" in faults:
            time.sleep(float(faults["stall"].get("seconds", 3600)))
        yield
    finally:
        _scope.faults = {}


class FaultyEngine:
    """The engine, failing inside task attempts where ``engine_error`` fired."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def attribute(self, *args: Any, **kwargs: Any) -> Any:
        fired = getattr(_scope, "faults", {})
        if "engine_error" in fired:
            raise RuntimeError(ENGINE_ERROR)
        if "device_lost" in fired:
            from pipeline.engine.device_health import DeviceLost

            raise DeviceLost(f"cuda:0: {ENGINE_ERROR}")
        if "oom_above" in fired and len(args[0]) > int(fired["oom_above"]["pairs"]):
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory: {len(args[0])} pairs "
                                         "(injected by NIBT_TEST_FAULTS)")
        return self.engine.attribute(*args, **kwargs)


def wrap_engine(engine: Any) -> Any:
    """``engine`` itself, or wrapped in ``FaultyEngine`` when the hook is on."""
    return FaultyEngine(engine) if enabled() else engine
