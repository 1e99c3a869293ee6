"""The ledger of committed parts: checkpoints, merges, frontier and bad files, against a
dict of each task's last commit kept by hand."""

from __future__ import annotations

import logging
import os
import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.config import StorageSettings
from pipeline.io.ledger import ENTRY_SCHEMA, Commit, Ledger
from pipeline.io.storage import filesystem


def commit(i: int, rows: int = 10, error: int = 0) -> Commit:
    return Commit(f"t{i:05d}", rows + i % 3, 600 * rows + i, 8, {"ok": rows - error,
                                                                  "error": error})


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def ledger_at(tmp_path, **kw) -> Ledger:
    fs, root = filesystem(str(tmp_path / "out"), StorageSettings())
    return Ledger(fs, root, "fp", **kw)


def as_dict(table) -> dict[str, dict]:
    return {r["task_id"]: r for r in table.to_pylist()}


def files(tmp_path) -> list[str]:
    d = tmp_path / "out" / "_ledger" / "fp"
    return sorted(os.listdir(d)) if d.exists() else []


def test_checkpoints_and_merges_keep_each_task_s_last_commit(tmp_path):
    """Many checkpoints, merged three at a time; tasks committed again (after error rows)
    keep their last commit; the number of files stays logarithmic."""
    rng = random.Random(3)
    ledger = ledger_at(tmp_path, fanout=3).start()
    want: dict[str, Commit] = {}
    for step in range(40):
        for _ in range(rng.randrange(1, 6)):
            c = commit(rng.randrange(60), error=rng.choice([0, 0, 1]))
            ledger.add(c)
            want[c.task_id] = c
        ledger.checkpoint([f"t{step:05d}"])
    assert ledger.close()
    got = as_dict(ledger_at(tmp_path).load())
    assert set(got) == set(want)
    for tid, c in want.items():
        g = got[tid]
        assert (g["rows"], g["bytes"], g["batch_size"]) == (c.rows, c.bytes, c.batch_size)
        assert g["status_counts"]["error"] == c.status_counts["error"]
    names = files(tmp_path)
    # 41 segments in base 3: at most 2 files a level
    assert len(names) <= 2 * 4, names
    assert any(n.startswith("L2-") for n in names), names
    assert as_dict(ledger.recorded()).keys() == want.keys()


def test_frontier_is_the_newest_file_s_and_empty_after_a_clean_end(tmp_path):
    ledger = ledger_at(tmp_path, fanout=2).start()
    for i in range(3):
        ledger.add(commit(i))
        ledger.checkpoint([f"t{i + 1:05d}", f"t{i + 2:05d}"])
    ledger._queue.put(None)  # the driver dies here: no close
    ledger._thread.join(30)
    again = ledger_at(tmp_path)
    again.load()
    assert again.frontier == ["t00003", "t00004"]  # kept through the merges
    again.start()
    again.add(commit(9))
    assert again.close()
    last = ledger_at(tmp_path)
    assert set(as_dict(last.load())) == {"t00000", "t00001", "t00002", "t00009"}
    assert last.frontier == []


def test_due_by_count_and_by_time(tmp_path):
    clock = Clock()
    ledger = ledger_at(tmp_path, every_s=30, every_tasks=3, clock=clock)
    assert not ledger.due()
    clock.t = 100  # time alone, with nothing recorded: not due
    assert not ledger.due()
    ledger.add(commit(0))
    assert ledger.due()  # something waits and 30 s passed since the last checkpoint
    ledger.checkpoint([])
    ledger.add(None)  # a failed task counts too
    ledger.add(commit(1))
    clock.t = 129
    assert not ledger.due()
    ledger.add(commit(2))
    assert ledger.due()


def test_an_unreadable_file_is_skipped_with_a_warning(tmp_path, caplog):
    ledger = ledger_at(tmp_path, fanout=100).start()
    for i in range(3):
        ledger.add(commit(i))
        ledger.checkpoint([])
    assert ledger.close()
    d = tmp_path / "out" / "_ledger" / "fp"
    (d / "L0-000000000001-000000000001.parquet").write_bytes(b"PAR1 cut short")
    with caplog.at_level(logging.WARNING, logger="nibt-audit"):
        got = as_dict(ledger_at(tmp_path).load())
    assert set(got) == {"t00000", "t00002"}
    assert "L0-000000000001" in caplog.text and "not readable" in caplog.text
    again = ledger_at(tmp_path)
    again.load()
    assert again.unreadable == ["L0-000000000001-000000000001.parquet"]
    again.start().add(commit(1))  # what it held, recorded anew
    assert again.close()
    assert "L0-000000000001-000000000001.parquet" not in files(tmp_path)
    assert set(as_dict(ledger_at(tmp_path).load())) == {"t00000", "t00001", "t00002"}


def test_a_merge_cut_short_leaves_inputs_that_are_ignored(tmp_path):
    """A merged file written, its inputs not yet deleted: the inputs are covered by it."""
    ledger = ledger_at(tmp_path, fanout=2).start()
    ledger.add(commit(0))
    ledger.checkpoint([])
    ledger.add(commit(1))
    ledger.checkpoint([])
    ledger._queue.put(None)
    ledger._thread.join(30)
    d = tmp_path / "out" / "_ledger" / "fp"
    assert files(tmp_path) == ["L1-000000000000-000000000001.parquet"]
    merged = pq.read_table(d / "L1-000000000000-000000000001.parquet")
    # put one input back, with a stale value: the merged file covers its range
    stale = merged.filter(pc.equal(merged.column("task_id"), "t00000"))
    stale = stale.set_column(ENTRY_SCHEMA.get_field_index("rows"), "rows", pa.array([999]))
    pq.write_table(stale, d / "L0-000000000000-000000000000.parquet")
    again = ledger_at(tmp_path)
    got = as_dict(again.load())
    assert got["t00000"]["rows"] == 10  # commit(0): 10 rows
    assert [f.name for f in again.files] == ["L1-000000000000-000000000001.parquet"]
    assert again.next_seq == 2


def test_reset_forgets_everything(tmp_path):
    ledger = ledger_at(tmp_path).start()
    ledger.add(commit(0))
    assert ledger.close()
    again = ledger_at(tmp_path)
    assert again.load().num_rows == 1
    again.reset()
    assert files(tmp_path) == [] and ledger_at(tmp_path).load().num_rows == 0


def test_unknown_status_is_refused(tmp_path):
    ledger = ledger_at(tmp_path)
    ledger.add(Commit("x", 1, 1, 1, {"weird": 1}))
    with pytest.raises(ValueError, match="weird"):
        ledger.checkpoint([])


def test_a_run_with_nothing_to_record_writes_nothing(tmp_path):
    ledger = ledger_at(tmp_path).start()
    ledger.add(commit(0))
    ledger.checkpoint(["t00001"])
    assert ledger.close()  # the clean end: written, its frontier empty
    before = files(tmp_path)
    again = ledger_at(tmp_path)
    again.load()
    again.start().checkpoint([])
    assert again.close()
    assert files(tmp_path) == before and again.segments_written == 0


def test_a_second_writer_fails_loudly_instead_of_overwriting(tmp_path, caplog):
    first, second = ledger_at(tmp_path).start(), ledger_at(tmp_path).start()
    first.add(commit(0))
    assert first.close()
    second.add(commit(1))
    with caplog.at_level(logging.ERROR, logger="nibt-audit"):
        assert not second.close()
    assert "another run is writing this output's ledger" in caplog.text
    assert set(as_dict(ledger_at(tmp_path).load())) == {"t00000"}  # the first's, intact
