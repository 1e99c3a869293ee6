from __future__ import annotations

import os

import pytest

from pipeline.config import ConfigError, StorageSettings
from pipeline.io.storage import filesystem, list_inputs, put_atomic


def test_list_prefix_glob_file_and_list(tmp_path):
    for name in ("a.parquet", "b.parquet", "sub/c.parquet", "notes.txt", ".hidden.parquet"):
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    s = StorageSettings()
    names = lambda files: [os.path.relpath(f.uri, tmp_path) for f in files]  # noqa: E731
    assert names(list_inputs(str(tmp_path), s)) == ["a.parquet", "b.parquet", "sub/c.parquet"]
    assert names(list_inputs(str(tmp_path / "*.parquet"), s)) == ["a.parquet", "b.parquet"]
    assert names(list_inputs([str(tmp_path / "a.parquet"), str(tmp_path / "sub")], s)) == [
        "a.parquet", "sub/c.parquet"]
    with pytest.raises(ConfigError, match="does not exist"):
        list_inputs(str(tmp_path / "missing"), s)
    with pytest.raises(ConfigError, match="no Parquet files"):
        list_inputs(str(tmp_path / "*.csv"), s)


def test_put_atomic_leaves_no_temp_in_place(tmp_path):
    fs, path = filesystem(str(tmp_path / "out" / "parts" / "x.parquet"), StorageSettings())
    put_atomic(fs, path, b"data")
    assert (tmp_path / "out" / "parts").is_dir()
    assert os.listdir(tmp_path / "out" / "parts") == ["x.parquet"]
    assert (tmp_path / "out" / "parts" / "x.parquet").read_bytes() == b"data"


def test_objects_written_by_another_process_are_seen_after_a_listing(s3_endpoint):
    """The driver lists `parts/` before the run, actors (other processes, here another
    client) write new parts, then the driver's report opens them: a cached listing
    must not hide them (s3fs raised FileNotFoundError in the demo's rerun)."""
    import s3fs

    from pipeline.io.storage import list_names

    s = StorageSettings(endpoint_url=s3_endpoint)
    other = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint},
                              skip_instance_cache=True)
    other.mkdir("listing")
    other.pipe("listing/out/parts/old.parquet", b"old")
    fs, path = filesystem("s3://listing/out", s)
    assert list_names(fs, path + "/parts") == ["old.parquet"]
    other.pipe("listing/out/parts/new.parquet", b"new")
    fs, path = filesystem("s3://listing/out/parts/new.parquet", s)
    assert fs.cat_file(path) == b"new"
    assert fs.exists(path)


def test_the_write_probe_leaves_nothing_and_names_an_unwritable_output(tmp_path, s3_endpoint):
    from pipeline.io.storage import check_writable

    s = StorageSettings(endpoint_url=s3_endpoint)
    fs, path = filesystem(str(tmp_path / "out"), s)
    check_writable(fs, path + "/parts", str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out" / "parts") == []  # made, probed, emptied
    for uri in ("/proc/nope/out", "s3://no-such-bucket-here/out"):
        fs, path = filesystem(uri, s)
        with pytest.raises(ConfigError, match=f"^output: cannot write to {uri}: "):
            check_writable(fs, path + "/parts", uri)
    fs, path = filesystem("s3://probe-bucket/out", s)
    fs.mkdir("probe-bucket")
    check_writable(fs, path + "/parts", "s3://probe-bucket/out")
    assert fs.find("probe-bucket") == []

def test_a_call_to_an_endpoint_that_never_answers_has_a_bound():
    """Hand computation of the defaults: 2 s3fs tries x (3 attempts x 20 s read timeout
    + botocore's backoff of at most 1 + 2 s) + s3fs's 0.1 + 0.17 s = 126.27 s."""
    assert StorageSettings().worst_case_s() == pytest.approx(126.27)
    assert StorageSettings().worst_case_s() < 180  # the run's bound, with room to spare


def test_listing_a_silent_endpoint_ends_in_a_named_error_within_the_bound():
    """2 attempts x 2 s3fs tries = 4 requests (one connection each: a timed-out
    connection is dropped), each waiting its 1 s read timeout."""
    import time

    from tests.silent import SilentEndpoint

    endpoint = SilentEndpoint()
    with endpoint as url:
        s = StorageSettings(endpoint_url=url, max_attempts=2, read_timeout_s=1,
                            connect_timeout_s=1)
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as e:
            list_inputs("s3://bucket/in/", s)
        seconds = time.monotonic() - t0
        connections = endpoint.connections
    assert f"storage endpoint {url} did not answer" in str(e.value)
    assert "input: cannot list s3://bucket/in/" in str(e.value)
    assert connections == 4
    assert 4 * 1.0 <= seconds <= s.worst_case_s() + 5


def test_a_put_to_a_silent_endpoint_ends_within_the_bound():
    """botocore's Expect: 100-continue would make a PUT wait for ever (aiohttp sets no
    timeout on that answer); without it, the read timeout and the tries bound it."""
    import time

    from pipeline.io.storage import check_writable
    from tests.silent import SilentEndpoint

    endpoint = SilentEndpoint()
    with endpoint as url:
        s = StorageSettings(endpoint_url=url, max_attempts=2, read_timeout_s=1,
                            connect_timeout_s=1)
        fs, path = filesystem("s3://bucket/out", s)
        t0 = time.monotonic()
        with pytest.raises(ConfigError) as e:
            check_writable(fs, f"{path}/parts", "s3://bucket/out", s)
        seconds = time.monotonic() - t0
        connections = endpoint.connections
    assert f"output: cannot write to s3://bucket/out: storage endpoint {url} did not answer" \
        in str(e.value)
    assert connections == 4
    assert seconds <= s.worst_case_s() + 5
