"""How the report reads the parts: each part object at most once per pass, in one GET, at
most 4 times in all (a comparison's reads included); a part that cannot be read ends the
report with exit 4 naming it, and nothing is published."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter

import pytest
from hydra import compose, initialize_config_dir

from benchmarks import report as bench
from pipeline.cli.report import CONF_DIR, EXIT_UNREADABLE, run_from_config
from pipeline.config import StorageSettings
from pipeline.devtools.s3local import StoreControl
from pipeline.io.results import PartUnreadable
from pipeline.report import ReportSettings, build_report, passes
from tests.report.builders import random_rows, write_input, write_results


@pytest.mark.parametrize("workers", [1, 2])
def test_a_comparison_reads_each_part_object_at_most_4_times(tmp_path, s3_endpoint,
                                                             monkeypatch, workers):
    """Two audits on S3 (the local store, its requests counted): every part of the current
    audit is read in exactly 3 GETs (the guess's sample, every part at this size; the first
    pass; the last), every part of the baseline in at most 3; with a guess that misses every
    word, 4 (the spatial pass too); no part is ever asked for its size first. Six tasks a
    pass, in one process or two workers: a part read ahead of its task is not read again."""
    monkeypatch.setattr(passes, "TASK_ROWS", 1)  # tasks of 4 parts
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    bucket = f"nibt-report-reads-{workers}"
    fs.mkdir(bucket)
    for name, seed in (("cur", 0), ("base", 1)):
        bench.make_results(str(tmp_path / name), 24_000, None, seed=seed, part_rows=1_000)
        fs.put(str(tmp_path / name) + "/", f"{bucket}/{name}", recursive=True)
    store = StoreControl(s3_endpoint)

    def reads(out: str) -> dict[str, list[int]]:
        store.reset()
        report = build_report(f"s3://{bucket}/cur", str(tmp_path / out),
                              ReportSettings(words_min_count=5, workers=workers),
                              StorageSettings(endpoint_url=s3_endpoint),
                              baseline=f"s3://{bucket}/base")
        assert report["space"]["explained"], "the co-occurrence pass ran (on both audits)"
        gets = Counter()
        for (op, key), n in store.requests().items():
            m = re.match(rf"{bucket}/(cur|base)/parts/", key)
            if m:
                assert op == "GET", (op, key)
                gets[m.group(1), key] += n
        per = {a: sorted(n for (b, _), n in gets.items() if b == a) for a in ("cur", "base")}
        assert len(per["cur"]) == len(per["base"]) == 24
        return per

    per_audit = reads("out")
    assert set(per_audit["cur"]) == {3} and max(per_audit["base"]) <= 3
    guess = passes.guess_words
    monkeypatch.setattr(passes, "guess_words", lambda *a: guess(*a)[:0])
    per_audit = reads("missed")
    assert set(per_audit["cur"]) == {4} and max(per_audit["base"]) <= 4


def _parts_on_s3(tmp_path, endpoint: str, bucket: str, seed: int):
    """24 synthetic parts of 100 rows in ``bucket/r`` on the local S3 store: its filesystem,
    storage settings, URI and manifest entries."""
    import s3fs

    from pipeline.io.manifest import read_manifest

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir(bucket)
    bench.make_results(str(tmp_path / "r"), 2_400, None, seed=seed, part_rows=100)
    fs.put(str(tmp_path / "r") + "/", f"{bucket}/r", recursive=True)
    storage, uri = StorageSettings(endpoint_url=endpoint), f"s3://{bucket}/r"
    return fs, storage, uri, read_manifest(uri, storage, parts=True)["parts"]


def test_parts_read_ahead_are_taken_and_those_never_asked_for_dropped(tmp_path, s3_endpoint,
                                                                      monkeypatch):
    """``read_ahead`` then ``prefetched`` over the same parts on S3: one GET a part, the
    tables those of pyarrow's own read of the files. Beyond ``AHEAD_HELD`` reads waiting,
    the oldest are dropped: their parts are read again when asked for, none is lost."""
    import pyarrow.parquet as pq

    from pipeline.io import results
    from tests.procs import wait_for

    fs, storage, uri, entries = _parts_on_s3(tmp_path, s3_endpoint, "nibt-read-ahead", 3)
    columns = ["id", "score"]
    store = StoreControl(s3_endpoint)

    def gets() -> dict[str, int]:
        return {k.rsplit("/", 1)[1]: n for (op, k), n in store.requests().items()
                if op == "GET" and k.startswith("nibt-read-ahead/r/parts/")}

    store.reset()
    results.read_ahead(uri, storage, entries[:8], columns)  # its first AHEAD_PARTS parts
    assert wait_for(lambda: len(gets()) == results.AHEAD_PARTS == 4, 30)  # before anyone asks
    got = list(results.prefetched(uri, storage, entries[:8], columns))
    for e, t in zip(entries[:8], got, strict=True):
        assert t.equals(pq.read_table(tmp_path / "r" / e["path"], columns=columns))
    assert sorted(gets().values()) == [1] * 8

    monkeypatch.setattr(results, "AHEAD_HELD", 4)
    store.reset()
    results.read_ahead(uri, storage, entries[8:16], columns)  # a task that never comes
    assert wait_for(lambda: len(gets()) == 4, 30), gets()
    results.read_ahead(uri, storage, entries[16:24], columns)  # 8 waiting: 4 dropped
    got = list(results.prefetched(uri, storage, entries[8:24], columns))
    assert [t.num_rows for t in got] == [100] * 16
    n = gets()
    assert [n[e["path"].rsplit("/", 1)[1]] for e in entries[8:24]] == [2] * 4 + [1] * 12


def test_the_read_window_holds_at_most_its_bytes_of_part_objects(tmp_path, s3_endpoint):
    """On S3 with parts the manifest lists with their sizes: a window of 2.5 parts' bytes
    has read 2 parts (not its 16) when the first is taken, the next as each is taken; the
    reads ahead of a task hold a quarter of it (one part, the oldest dropped and read again).
    Without a bound in bytes the window is 16 parts."""

    from pipeline.io import results
    from tests.procs import wait_for

    fs, storage, uri, entries = _parts_on_s3(tmp_path, s3_endpoint, "nibt-window", 4)
    sizes = [fs.size(f"nibt-window/r/{e['path']}") for e in entries]
    assert [e["bytes"] for e in entries] == sizes  # as an audit lists them
    budget = int(2.5 * sum(sizes) / len(sizes))
    assert sum(sizes[:2]) <= budget < min(a + b + c for a, b, c in zip(sizes, sizes[1:],
                                                                         sizes[2:]))
    store = StoreControl(s3_endpoint)

    def gets() -> int:
        return sum(n for (op, k), n in store.requests().items()
                   if op == "GET" and k.startswith("nibt-window/r/parts/"))

    def settled(n: int) -> bool:  # n GETs, and no more after a pause
        return wait_for(lambda: gets() >= n, 30) and not wait_for(lambda: gets() > n, 0.5)

    for bound, window in ((budget, 2), (None, 16)):
        store.reset()
        it = results.prefetched(uri, storage, entries, ["id"], budget=bound)
        assert next(it).num_rows == 100 and settled(window), (bound, gets())
        assert next(it).num_rows == 100 and settled(window + 1), (bound, gets())
        assert sum(t.num_rows for t in it) == 2_200 and gets() == 24

    store.reset()
    results.read_ahead(uri, storage, entries[:8], ["id"], budget=4 * budget)  # 2.5 parts held
    assert settled(2)
    results.read_ahead(uri, storage, entries[8:16], ["id"], budget=4 * budget)
    assert settled(4)  # two more started, the oldest two dropped
    assert sum(t.num_rows for t in results.prefetched(uri, storage, entries[:16], ["id"],
                                                      budget=4 * budget)) == 1_600
    n = {k.rsplit("/", 1)[1]: c for (op, k), c in store.requests().items() if op == "GET"}
    assert [n[e["path"].rsplit("/", 1)[1]] for e in entries[:16]] == [2] * 2 + [1] * 14


@pytest.fixture()
def small(tmp_path):
    src = str(tmp_path / "input.parquet")
    write_input(src, 60)
    rows = random_rows(60, seed=4, bad_every=10)
    write_results(str(tmp_path / "res"), [rows[:20], rows[20:40], rows[40:]], src)
    return tmp_path


def _run(*overrides: str) -> int:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return run_from_config(compose(config_name="report", overrides=list(overrides)))


@pytest.mark.parametrize(("damage", "workers"), [("truncated", 2), ("gone", 1)])
def test_a_part_that_cannot_be_read_is_exit_4_and_nothing_is_published(small, capsys,
                                                                       monkeypatch, damage,
                                                                       workers):
    monkeypatch.setattr(passes, "TASK_ROWS", 1)  # three tasks: the pool's path with 2 workers
    monkeypatch.setattr(passes, "TASK_PARTS", 1)
    out = small / "out"
    args = (f"results={small / 'res'}", f"output={out}", "report.words_min_count=2",
            f"report.workers={workers}")
    assert _run(*args) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    part = small / "res" / "parts" / "task0001.parquet"
    if damage == "gone":
        os.remove(part)
    else:
        part.write_bytes(part.read_bytes()[:200])
    capsys.readouterr()
    assert _run(*args) == EXIT_UNREADABLE
    err = capsys.readouterr().err
    assert "parts/task0001.parquet" in err and "no report was published" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]


def test_the_report_on_a_ray_cluster_is_the_report_of_one_process(small, monkeypatch):
    """``cluster=local`` (an embedded Ray, as ``cluster=existing`` joins one): the passes as
    Ray tasks give the same bytes."""
    monkeypatch.setattr(passes, "TASK_ROWS", 1)
    monkeypatch.setattr(passes, "TASK_PARTS", 1)
    common = (f"results={small / 'res'}", "report.words_min_count=2")
    assert _run(*common, f"output={small / 'one'}", "report.workers=1") == 0
    assert _run(*common, f"output={small / 'ray'}", "cluster=local") == 0
    for name in ("report.json", "flags.parquet", "aggregates/words.parquet"):
        assert (small / "ray" / name).read_bytes() == (small / "one" / name).read_bytes(), name
    assert json.loads((small / "ray" / "report.json").read_text())["overview"]["rows"] == 60
    shutil.rmtree(small / "ray")


@pytest.mark.parametrize("damage", ["gone", "truncated"])
def test_a_part_on_s3_that_cannot_be_read_is_named_and_nothing_is_published(tmp_path,
                                                                            s3_endpoint, damage):
    """Parts on S3 are read through obstore: a part object that is gone or cut short ends the
    report with the part named, as on local disk."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    bucket = f"nibt-report-damage-{damage}"
    fs.mkdir(bucket)
    bench.make_results(str(tmp_path / "res"), 6_000, None, part_rows=1_000)
    fs.put(str(tmp_path / "res") + "/", f"{bucket}/res", recursive=True)
    key = f"{bucket}/res/parts/task00002.parquet"
    if damage == "gone":
        fs.rm(key)
    else:
        fs.pipe(key, fs.cat_file(key)[:200])
    with pytest.raises(PartUnreadable, match="parts/task00002.parquet") as got:
        build_report(f"s3://{bucket}/res", str(tmp_path / "out"),
                     ReportSettings(words_min_count=5, workers=1),
                     StorageSettings(endpoint_url=s3_endpoint))
    # the manifest lists each part's size, as an audit's does: a part cut short is told by it
    assert ("FileNotFoundError" if damage == "gone" else "200 bytes, the manifest lists"
            ) in str(got.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _count_rows(uri: str, out) -> None:
    from pipeline.io.results import read_results

    out.put(read_results(uri, columns=["id"]).num_rows)


def test_a_process_forked_after_reads_reads_on_its_own_threads(tmp_path):
    """The read threads are made again in a forked child (a fork copies the pool but not its
    threads: reads sent to it would wait for ever)."""
    import multiprocessing

    from pipeline.io.results import read_results

    bench.make_results(str(tmp_path / "r"), 3_000, None, seed=5, part_rows=500)
    uri = str(tmp_path / "r")
    assert read_results(uri, columns=["id"]).num_rows == 3_000  # this process's threads made
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_count_rows, args=(uri, out))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive and child.exitcode == 0
    assert out.get(timeout=5) == 3_000
