"""Skip what is committed: the plan's tasks against the ledger.

A task is committed when the ledger holds an entry for it (``pipeline.io.ledger``);
one committed with rows that failed in the engine (status ``error``) runs again.
When the ledger's newest file has a frontier (its run did not end cleanly), the
frontier's parts not in the ledger are looked for, one ranged footer read each:
those a worker committed after the last checkpoint are recorded and skipped.
No listing of ``parts/``, and no footer of a part the ledger already records, is
read: resuming costs the ledger's few files plus at most the frontier. When a
ledger file could not be read, every task the ledger does not hold is looked for
the same way (one request each): what that file held is found again.

An output written before the ledger existed has none: its ``_manifest.json`` of
the same fingerprint, whose parts were inline, seeds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import StorageSettings
from pipeline.io.images import ERROR
from pipeline.io.ledger import ENTRY_SCHEMA, Commit, Ledger, latest, to_table
from pipeline.io.manifest import MANIFEST
from pipeline.io.parts import list_parts, part_path, read_part_footers
from pipeline.io.storage import filesystem, join, read_bytes
from pipeline.job.plan import Task

log = logging.getLogger("nibt-audit")


@dataclass
class Resume:
    """What the plan leaves to do."""

    todo: list[Task]
    committed: pa.Table  # ledger entries of the plan's tasks skipped as committed
    redo_error_rows: int = 0  # committed with rows in status error: run again
    recovered: int = 0  # committed after the last checkpoint, found from the frontier
    probed: int = 0  # parts looked for (one request each)
    imported: int = 0  # taken from a manifest written before the ledger existed
    commits: list[Commit] = field(default_factory=list)  # to record: recovered, imported


def commit_of(task: Task, rows: int, counts: dict[str, int], batch_size: int,
              size: int | None) -> Commit:
    """The ledger entry of ``task`` committed with ``rows`` rows."""
    return Commit(task.task_id, int(rows), size, int(batch_size or 0), dict(counts))


def _found(tasks: list[Task], output: str, storage: StorageSettings, fp: str,
           in_flight: int) -> list[Commit]:
    """Commits of ``tasks`` whose parts are there, from one footer read each."""
    footers = read_part_footers([(part_path(output, t.task_id), None) for t in tasks],
                                storage, in_flight)
    out = []
    for t, footer in zip(tasks, footers):
        if isinstance(footer, FileNotFoundError):
            continue
        if isinstance(footer, BaseException):
            log.warning("part of task %s not readable (%s: %s): it runs again", t.task_id,
                        type(footer).__name__, str(footer)[:200])
            continue
        rows, meta = footer
        if meta.get("task_id") != t.task_id or meta.get("fingerprint") != fp:
            log.warning("part of task %s does not say it is that task under these settings: "
                        "it runs again", t.task_id)
            continue
        out.append(commit_of(t, rows, meta.get("status_counts") or {},
                             meta.get("batch_size") or 0, None))
    return out


def _imported(tasks: list[Task], fs: fsspec.AbstractFileSystem, out_path: str,
              fp: str) -> list[Commit]:
    """Commits listed inline by a manifest of the same fingerprint (earlier releases)."""
    import json

    try:
        header = json.loads(read_bytes(fs, join(out_path, MANIFEST)))
    except FileNotFoundError:
        return []
    except Exception as e:
        log.warning("%s not readable (%s): committed parts are not taken from it", MANIFEST, e)
        return []
    if header.get("fingerprint") != fp or not isinstance(header.get("parts"), list):
        return []
    by_id = {t.task_id: t for t in tasks}
    return [commit_of(by_id[p["task_id"]], p["rows"], p.get("status_counts") or {},
                      p.get("batch_size") or 0, None)
            for p in header["parts"] if p.get("task_id") in by_id]


def resume(tasks: list[Task], ledger: Ledger, output: str, storage: StorageSettings, fp: str,
           overwrite: bool, verify: bool = False) -> Resume:
    """Split ``tasks`` (failed plans left out) into those to run and those committed.

    ``verify``: the parts are also listed, and a task whose part is gone runs again.
    """
    fs, out_path = filesystem(output, storage)
    runnable = [t for t in tasks if not t.error]
    if overwrite:
        ledger.reset()
        return Resume(runnable, ENTRY_SCHEMA.empty_table())
    entries = ledger.load()
    commits: list[Commit] = []
    imported = 0
    if not ledger.files and not entries.num_rows:
        commits = _imported(runnable, fs, out_path, fp)
        imported = len(commits)
    if ledger.unreadable:
        held = pc.is_in(pa.array([t.task_id for t in runnable], pa.string()),
                        value_set=entries.column("task_id")).to_pylist()
        probe = [t for t, h in zip(runnable, held) if not h]
        log.warning("ledger: %d file(s) not readable; looking for the parts of the %d tasks "
                    "the rest does not hold", len(ledger.unreadable), len(probe))
    else:
        frontier = pa.array(ledger.frontier, pa.string())
        frontier = set(frontier.filter(pc.invert(pc.is_in(
            frontier, value_set=entries.column("task_id")))).to_pylist())
        probe = [t for t in runnable if t.task_id in frontier]
    if probe:
        commits += _found(probe, output, storage, fp, storage.requests_in_flight)
    if commits:
        entries = latest([entries, to_table(commits, ledger.next_seq)])
    ids = pa.array([t.task_id for t in runnable], pa.string())
    in_plan = entries.filter(pc.is_in(entries.column("task_id"), value_set=ids))
    if verify:
        there = pa.array(sorted(list_parts(fs, out_path)), pa.string())
        gone = in_plan.num_rows
        in_plan = in_plan.filter(pc.is_in(in_plan.column("task_id"), value_set=there))
        if gone - in_plan.num_rows:
            log.warning("%d committed part(s) are gone from parts/: their tasks run again",
                        gone - in_plan.num_rows)
    errors = pc.struct_field(in_plan.column("status_counts"), ERROR)
    clean = in_plan.filter(pc.equal(errors, 0))
    done = pc.is_in(ids, value_set=clean.column("task_id")).to_pylist()
    todo = [t for t, skip in zip(runnable, done) if not skip]
    return Resume(todo, clean, redo_error_rows=in_plan.num_rows - clean.num_rows,
                  recovered=len(commits) - imported, probed=len(probe), imported=imported,
                  commits=commits)
