"""The fault-injection test hook is inert unless NIBT_TEST_FAULTS is set, and counts
its firings across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pipeline.job import faults


def test_the_hook_is_inert_without_its_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(faults.ENV, raising=False)
    engine = object()
    assert faults.wrap_engine(engine) is engine
    assert not faults.enabled()
    with faults.task_scope("s3://in/a.parquet", 0):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_fault_fires_the_given_times_over_all_processes(monkeypatch, tmp_path):
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps({"engine_error": {"times": 2, "source": "b.parquet"},
                                "stall": {"times": 5, "row_start": 8, "seconds": 0}}))
    monkeypatch.setenv(faults.ENV, str(spec))
    assert faults.fired("s3://in/a.parquet", 0) == {}  # neither matches
    assert list(faults.fired("s3://in/b.parquet", 0)) == ["engine_error"]
    code = ("import os; from pipeline.job import faults; "
            "print(sorted(faults.fired('s3://in/b.parquet', 8))); print(os.getpid())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=dict(os.environ), check=True)
    fired, other_pid = other.stdout.split("\n")[:2]
    assert fired == "['engine_error', 'stall']"  # the second of two
    assert list(faults.fired("s3://in/b.parquet", 8)) == ["stall"]  # engine_error used up
    # each firing is marked with the process it fired in
    assert faults.fired_in(spec, "engine_error") == {os.getpid(), int(other_pid)}
    assert faults.fired_in(spec, "stall") == {os.getpid(), int(other_pid)}
    assert faults.fired_in(tmp_path / "none.json", "stall") == set()


def test_an_engine_error_fails_only_inside_its_task(monkeypatch, tmp_path):
    spec = tmp_path / "faults.json"
    spec.write_text(json.dumps({"engine_error": {"times": 1}}))
    monkeypatch.setenv(faults.ENV, str(spec))

    class Engine:
        def attribute(self, *args):
            return "attributed"

    engine = faults.wrap_engine(Engine())
    assert engine.attribute() == "attributed"  # outside any task (the warm-up)
    with faults.task_scope("a.parquet", 0):
        try:
            engine.attribute()
            raise AssertionError("no fault")
        except RuntimeError as e:
            assert "CUDA error" in str(e)
    with faults.task_scope("a.parquet", 0):  # its one firing is used
        assert engine.attribute() == "attributed"
