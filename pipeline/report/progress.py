"""How far a pass over the parts has got, told while it runs.

A report over billions of rows runs for minutes on a cluster and hours on one
machine; whoever watches it (a terminal, a cron log, an Airflow task's log) must
see that it moves and when it will end. The driver counts each task's parts and
rows as it merges the task's result (in task order, so the count never runs
ahead of what is merged), and:

* logs a line every ``report.log_every_s`` seconds (parts, rows, rows/s over the
  last interval, an estimate of the time left), and one when the pass ends;
* draws a bar on standard error when ``report.progress`` is set and standard
  error is a terminal (a log file gets the lines only).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

log = logging.getLogger("nibt-report")


def _rows(entries: Sequence[dict[str, Any]]) -> int:
    return sum(int(e.get("rows") or 0) for e in entries)


def _duration(seconds: float) -> str:
    """``seconds`` as ``1 h 02 min``, ``3 min 05 s``, ``42 s`` or ``4.2 s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s" if seconds >= 10 else f"{seconds:.1f} s"


class PassProgress:
    """Parts and rows of one pass done so far, out of its ``entries`` (manifest parts)."""

    def __init__(self, name: str, entries: Sequence[dict[str, Any]], every_s: float = 30.0,
                 bar: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.every_s, self.clock = name, every_s, clock
        self.parts_total, self.rows_total = len(entries), _rows(entries)
        self.parts = self.rows = 0
        self.started = self._last = clock()
        self._rows_at_last = 0
        self.tqdm: Any = None  # the bar, when drawn
        if bar and sys.stderr is not None and sys.stderr.isatty():
            from tqdm import tqdm

            self.tqdm = tqdm(total=self.rows_total, unit="row", unit_scale=True,
                             desc=f"nibt-report {name}", file=sys.stderr, dynamic_ncols=True,
                             mininterval=1.0, smoothing=0.1, leave=False)

    def add(self, entries: Sequence[dict[str, Any]]) -> None:
        """A task's parts merged; logs the line when ``every_s`` has passed."""
        rows = _rows(entries)
        self.parts += len(entries)
        self.rows += rows
        if self.tqdm is not None:
            self.tqdm.update(rows)
        now = self.clock()
        if now - self._last >= self.every_s and self.parts < self.parts_total:
            rate = (self.rows - self._rows_at_last) / max(now - self._last, 1e-9)
            left = (f", about {_duration((self.rows_total - self.rows) / rate)} left"
                    if rate > 0 else "")
            log.info("report: %s: %d of %d parts (%.1f%%), %s of %s rows; %s rows/s over "
                     "the last %s%s", self.name, self.parts, self.parts_total,
                     100.0 * self.rows / max(self.rows_total, 1), f"{self.rows:,}",
                     f"{self.rows_total:,}", f"{rate:,.0f}", _duration(now - self._last), left)
            self._last, self._rows_at_last = now, self.rows

    def close(self) -> None:
        """The pass's last line (what it read, how long it took) once every part is in;
        the bar goes either way."""
        if self.tqdm is not None:
            self.tqdm.close()
            self.tqdm = None
        if self.parts < self.parts_total:  # the pass ended early: its error says why
            return
        took = self.clock() - self.started
        log.info("report: %s: done, %d parts, %s rows in %s (%s rows/s)", self.name,
                 self.parts, f"{self.rows:,}", _duration(took),
                 f"{self.rows / max(took, 1e-9):,.0f}")


def watched(name: str, tasks: Sequence[Any], results: Iterator[Any], every_s: float = 30.0,
            bar: bool = True) -> Iterator[tuple[Any, Any]]:
    """``(task, result)`` of a pass, counted as the caller takes them (each task's
    ``entries``); the pass's last line once they are all taken."""
    progress = PassProgress(name, [e for t in tasks for e in t.entries], every_s, bar)
    try:
        for task, result in zip(tasks, results):
            yield task, result
            progress.add(task.entries)
    finally:
        progress.close()
