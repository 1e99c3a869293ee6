"""SIGTERM and SIGINT stop a run cleanly (what Airflow, Kubernetes, cron and Ctrl-C send).

Before any task is dispatched (listing, planning, the fingerprint) the handler
raises ``Stopped`` at once; from then on it only sets a flag: the dispatcher hands
out no new task, abandons those in flight, the driver kills the actors, shuts Ray
down and writes the manifest and the summary with status ``stopped``, and the
process exits ``128 + signal`` (143 for SIGTERM, 130 for SIGINT). A second
signal is noted and ignored: the stop is already bounded. A signal the process
was started with ignored stays ignored: that is how shells keep Ctrl-C in a
terminal away from background jobs (``nibt-audit ... &`` in a script, nohup).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A stop signal arrived before any task was dispatched (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Within the block, SIGTERM / SIGINT ask the run to stop (main thread only:
    elsewhere signals cannot be handled and the block does nothing)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.interruptible = True  # raise ``Stopped`` from the handler (before dispatch)
        self.repeated = 0
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process it ended."""
        return 128 + int(self.signum or 0)

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        """The signal handler (also callable directly, as tests do)."""
        if self.signum is not None:
            self.repeated += 1
            return
        self.signum = signum
        self.event.set()
        if self.interruptible:
            raise Stopped(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
