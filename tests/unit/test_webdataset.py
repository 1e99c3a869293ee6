"""WebDataset shards read into samples: grouping by key, which member is the image and the
caption, kept JSON fields, every bad case named, damage caught wherever it falls.

The oracle is hand-built tar archives (the standard library's writer, ``tests.data``) and
the expected rows written out by hand."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, DataSettings, StorageSettings
from pipeline.io import webdataset as wds
from pipeline.io.footers import FooterCache
from pipeline.io.storage import file_tag, filesystem, list_inputs
from pipeline.job.plan import SHARD_BYTES_PER_ROW, Task, plan_shards, shard_task_id, task_id
from tests.data import member_offsets, png, tar_bytes

WDS = DataSettings(format="webdataset")


def shard(tmp_path, members, name="s.tar") -> tuple[Task, str]:
    path = tmp_path / name
    path.write_bytes(tar_bytes(members))
    info = os.stat(path)
    tag = file_tag({"mtime": info.st_mtime})
    return Task("t", str(path), info.st_size, tag, (), 0, 0, shard=True), str(path)


def as_dicts(rows) -> list[dict]:
    kept = rows.carried.to_pylist() if rows.carried is not None else [{}] * len(rows)
    return [{"key": k, "image": i, "caption": c, "note": n, **x}
            for k, i, c, n, x in zip(rows.ids, rows.images, rows.captions, rows.notes, kept)]


def read(path: str, task: Task, data=WDS, batch_rows=64) -> list:
    fs, p = filesystem(path, StorageSettings())
    return list(wds.iter_sample_rows(fs, p, task, data, batch_rows))


def rows(tmp_path, members, data=WDS, batch_rows=64) -> list[dict]:
    task, path = shard(tmp_path, members)
    return [r for b in read(path, task, data, batch_rows) for r in as_dicts(b)]


@pytest.mark.parametrize(("name", "key", "ext"), [
    ("000123.jpg", "000123", "jpg"),
    ("a/b/000123.seg.png", "a/b/000123", "seg.png"),
    ("./000123.txt", "000123", "txt"),
    ("README", "README", ""),
    ("d/.hidden.jpg", "d/.hidden.jpg", ""),
])
def test_a_members_key_is_its_name_up_to_the_first_dot_of_its_basename(name, key, ext):
    assert wds.split_name(name) == (key, ext)


def test_samples_group_consecutive_members_and_pick_image_and_caption(tmp_path):
    img_a, img_b, img_c = png(1), png(2), png(3)
    got = rows(tmp_path, [
        ("0001.jpg", img_a), ("0001.txt", b"a red circle"), ("0001.json", b'{"uid": "u1"}'),
        ("0002.png", b"second choice"), ("0002.JPEG", img_b), ("0002.txt", "caf\u00e9".encode()),
        ("0003.webp", img_c),  # no caption
        ("0004.txt", b"no image"), ("0004.json", b"{}"),
        ("dir/0005.jpg", img_a), ("dir/0005.txt", b""),  # empty caption: decoded as bad_caption
    ])
    assert [r["key"] for r in got] == ["0001", "0002", "0003", "0004", "dir/0005"]
    assert [r["image"] for r in got] == [img_a, img_b, img_c, None, img_a]  # jpeg before png
    assert [r["caption"] for r in got] == [b"a red circle", "caf\u00e9".encode(), None,
                                             b"no image", b""]
    assert [r["note"] for r in got] == [
        None, None, "no txt member (members: 0003.webp)",
        "no image member (jpg, jpeg, png, webp; members: 0004.txt, 0004.json)", None]


def test_a_key_seen_again_later_is_another_sample_and_a_name_twice_spoils_its_sample(tmp_path):
    got = rows(tmp_path, [("a.jpg", png(1)), ("a.txt", b"x"), ("b.jpg", png(2)),
                          ("b.txt", b"y"), ("b.txt", b"z"), ("a.jpg", png(3)), ("a.txt", b"w")])
    assert [r["key"] for r in got] == ["a", "b", "a"]
    assert got[1]["image"] is None and "b.txt appear twice" in got[1]["note"]
    assert got[2]["image"] == png(3) and got[2]["caption"] == b"w"


def test_kept_json_fields_are_text_whatever_each_sample_holds(tmp_path):
    meta = {"uid": "u1", "width": 640, "boxes": [[1, 2], [3, 4]], "nsfw": False, "gone": None}
    data = DataSettings(format="webdataset", keep_columns=["uid", "width", "boxes", "nsfw",
                                                           "gone", "absent"])
    task, path = shard(tmp_path, [("a.jpg", png(1)), ("a.txt", b"x"),
                                  ("a.json", json.dumps(meta).encode()),
                                  ("b.jpg", png(2)), ("b.txt", b"y"),
                                  ("b.json", b'{"uid": 7, "width": "wide"}'),
                                  ("c.jpg", png(3)), ("c.txt", b"z")])  # no json
    (batch,) = read(path, task, data)
    kept = batch.carried
    assert kept.schema == pa.schema([(c, pa.string()) for c in data.keep_columns])
    assert kept.to_pylist() == [
        {"uid": "u1", "width": "640", "boxes": "[[1, 2], [3, 4]]", "nsfw": "false",
         "gone": None, "absent": None},
        {"uid": "7", "width": "wide", "boxes": None, "nsfw": None, "gone": None,
         "absent": None},
        dict.fromkeys(data.keep_columns),
    ]
    assert batch.notes == [None, None, None]  # the caption is the txt


def test_a_caption_from_a_json_field(tmp_path):
    data = DataSettings(format="webdataset", caption_json_field="caption")
    got = rows(tmp_path, [
        ("a.jpg", png(1)), ("a.json", b'{"caption": "a dog on grass"}'),
        ("b.jpg", png(1)), ("b.json", b'{"text": "elsewhere"}'),
        ("c.jpg", png(1)), ("c.json", b'{"caption": 42}'),
        ("d.jpg", png(1)), ("d.json", b"{not json"),
        ("e.jpg", png(1)), ("e.txt", b"a txt is not read"),
        ("f.jpg", png(1)), ("f.json", b'["a list"]'),
    ], data=data)
    assert [r["caption"] for r in got] == [b"a dog on grass"] + [None] * 5
    notes = [r["note"] for r in got]
    assert notes[0] is None
    assert notes[1] == "json field 'caption' is missing"
    assert notes[2] == "json field 'caption' is 42, not text"
    assert notes[3].startswith("member d.json is not valid JSON")
    assert notes[4] == "no json member (members: e.jpg, e.txt)"
    assert notes[5] == "member f.json holds a JSON list, not an object"


def test_batches_hold_at_most_batch_rows_samples(tmp_path):
    members = [(f"{i:04d}.{ext}", png(i) if ext == "png" else b"c")
               for i in range(10) for ext in ("png", "txt")]
    task, path = shard(tmp_path, members)
    assert [len(b) for b in read(path, task, batch_rows=4)] == [4, 4, 2]


def test_links_directories_and_oversized_members(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        d = tarfile.TarInfo("images")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        link = tarfile.TarInfo("images/a.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "elsewhere.jpg"
        tar.addfile(link)
        for name, data in [("images/a.txt", b"x"), ("images/b.jpg", b"y" * 2000),
                           ("images/b.txt", b"z")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "odd.tar"
    path.write_bytes(buf.getvalue())
    monkeypatch.setattr(wds, "MAX_MEMBER_BYTES", 1000)
    task = Task("t", str(path), path.stat().st_size, file_tag({"mtime": path.stat().st_mtime}),
                (), 0, 0, shard=True)
    got = as_dicts(read(str(path), task)[0])
    assert [r["key"] for r in got] == ["images/a", "images/b"]  # the directory is no sample
    assert got[0]["image"] is None and "not a regular file" in got[0]["note"]
    assert got[1]["image"] is None
    assert got[1]["note"] == "member images/b.jpg is 2000 bytes, over the limit of 1000 (not read)"


# ------------------------------------------------------------------ damage
MEMBERS = [(f"{i:04d}.{ext}", png(i) if ext == "png" else f"caption {i}".encode())
           for i in range(6) for ext in ("png", "txt")]


def read_until_damage(tmp_path, archive: bytes) -> tuple[list[str], wds.ShardError | None]:
    path = tmp_path / "cut.tar"
    path.write_bytes(archive)
    task = Task("t", str(path), len(archive), file_tag({"mtime": path.stat().st_mtime}), (), 0,
                0, shard=True)
    fs, p = filesystem(str(path), StorageSettings())
    keys: list[str] = []
    try:
        for b in wds.iter_sample_rows(fs, p, task, WDS, 2):
            keys += b.ids
    except wds.ShardError as e:
        assert not e.retryable
        return keys, e
    return keys, None


def test_a_whole_shard_reads_to_its_end(tmp_path):
    keys, err = read_until_damage(tmp_path, tar_bytes(MEMBERS))
    assert err is None and keys == [f"{i:04d}" for i in range(6)]


@pytest.mark.parametrize("where", ["inside 0003.png", "at the header of 0003.png",
                                   "inside the header of 0003.png", "before the end block"])
def test_a_shard_cut_short_anywhere_fails_naming_where(tmp_path, where):
    whole = tar_bytes(MEMBERS)
    header, data = member_offsets(whole)["0003.png"]
    end = member_offsets(whole)["0005.txt"][1] + 512  # after the last member's data
    cut = {"inside 0003.png": data + 100, "at the header of 0003.png": header,
           "inside the header of 0003.png": header + 200, "before the end block": end}[where]
    keys, err = read_until_damage(tmp_path, whole[:cut])
    assert err is not None, "a cut-short shard must not read as complete"
    assert str(tmp_path / "cut.tar") in str(err) and f"of {cut}" in str(err)
    assert "nothing from this shard is committed" in str(err)
    # the batches before the damage came out (the task then fails as a whole)
    assert keys == [f"{i:04d}" for i in range(len(keys))] and len(keys) <= 5


def test_a_corrupt_header_in_the_middle_fails_the_shard(tmp_path):
    whole = bytearray(tar_bytes(MEMBERS))
    header, _ = member_offsets(bytes(whole))["0002.txt"]
    whole[header + 148:header + 156] = b"9999999\0"  # a checksum that does not add up
    keys, err = read_until_damage(tmp_path, bytes(whole))
    assert err is not None and f"at byte {header} " in str(err)
    assert "2 whole sample(s)" in str(err)


# ------------------------------------------------------------------ planning
@pytest.mark.parametrize(("head", "size", "says"), [
    (b"", 0, "an empty file"),
    (gzip.compress(tar_bytes(MEMBERS[:2]))[:512], 4096, "gzip-compressed"),
    (b"PAR1" + bytes(508), 4096, "a Parquet file"),
    (b"hello", 5, "shorter than one tar header"),
    (b"<html>" + b"x" * 506, 4096, "no tar header"),
])
def test_what_is_not_a_tar_is_said(head, size, says):
    assert says in wds.head_problem(head, size)


def test_a_tar_head_and_an_empty_archive_pass():
    assert wds.head_problem(tar_bytes(MEMBERS)[:512], 10240) is None
    assert wds.head_problem(tar_bytes([]), 10240) is None


def test_shards_plan_one_task_each_with_their_own_ids(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"{i:05d}.tar").write_bytes(tar_bytes(MEMBERS[2 * i:2 * i + 2]))
    (tmp_path / "in" / "00000.parquet").write_bytes(b"img2dataset's metadata beside the shards")
    (tmp_path / "in" / "00000_stats.json").write_text("{}")
    (tmp_path / "in" / "cut.tar").write_bytes(tar_bytes(MEMBERS)[:3000])
    storage = StorageSettings()
    files = list_inputs(str(tmp_path / "in"), storage, "webdataset")
    assert [os.path.basename(f.uri) for f in files] == [
        "00000.tar", "00001.tar", "00002.tar", "cut.tar"]
    tasks = plan_shards(files, storage, "fp")
    assert [t.shard and t.row_groups == () and t.rows == 0 for t in tasks] == [True] * 4
    assert [t.error for t in tasks[:3]] == [None] * 3
    assert "not a whole number of 512-byte tar blocks" in tasks[3].error
    assert [t.task_id for t in tasks] == [t.task_id for t in plan_shards(files, storage, "fp")]
    assert len({t.task_id for t in tasks}) == 4
    assert tasks[0].task_id != plan_shards(files, storage, "fp2")[0].task_id
    f = files[0]
    assert tasks[0].task_id == shard_task_id(f, "fp") != task_id(f, 0, 0, "fp")
    assert tasks[0].timeout_rows == -(-f.size // SHARD_BYTES_PER_ROW)
    assert tasks[0].input_fingerprint == f"{f.uri}|{f.size}|{f.tag}|tar"


def test_a_file_that_is_not_a_tar_is_refused_by_name(tmp_path):
    good = tmp_path / "good.tar"
    good.write_bytes(tar_bytes(MEMBERS[:2]))
    bad = tmp_path / "table.tar"
    pq.write_table(pa.table({"url": ["http://x"]}), bad)
    storage = StorageSettings()
    with pytest.raises(ConfigError) as e:
        plan_shards(list_inputs([str(good), str(bad)], storage, "webdataset"), storage, "fp")
    assert str(bad) in str(e.value) and "a Parquet file" in str(e.value)
    assert str(good) not in str(e.value)


def test_the_saved_plan_spares_a_rerun_every_read(tmp_path, monkeypatch):
    for i in range(3):
        (tmp_path / f"{i}.tar").write_bytes(tar_bytes(MEMBERS[2 * i:2 * i + 2]))
    storage = StorageSettings()
    files = list_inputs(str(tmp_path), storage, "webdataset")
    fs, out = filesystem(str(tmp_path / "out"), storage)
    cache = FooterCache(fs, out, "_ledger/shards.parquet")
    first = plan_shards(files, storage, "fp", cache=cache)
    cache.save()
    reads = []
    real = wds.read_heads
    monkeypatch.setattr(wds, "read_heads", lambda items, *a: reads.append(items) or real(items, *a))
    again = plan_shards(files, storage, "fp",
                        cache=FooterCache(fs, out, "_ledger/shards.parquet").load())
    assert again == first and not any(reads)  # no shard read
    os.utime(files[1].uri.removeprefix("file://"), ns=(1, 1))  # a changed shard is read again
    changed = list_inputs(str(tmp_path), storage, "webdataset")
    plan_shards(changed, storage, "fp", cache=FooterCache(fs, out, "_ledger/shards.parquet").load())
    assert [u for u, _, _ in reads[-1]] == [changed[1].uri]


# ------------------------------------------------------------------ settings
def test_webdataset_settings_are_checked():
    with pytest.raises(ConfigError, match="data.format: must be one of parquet, webdataset"):
        DataSettings(format="tfrecord")
    with pytest.raises(ConfigError, match="data.id_column: WebDataset samples are identified"):
        DataSettings(format="webdataset", id_column="uid")
    with pytest.raises(ConfigError, match="data.image_extensions"):
        DataSettings(format="webdataset", image_extensions=[])
    with pytest.raises(ConfigError, match="data.caption_extension"):
        DataSettings(format="webdataset", caption_extension="")
    assert DataSettings(format="webdataset", image_extensions=[".JPG"]).image_extensions == ["jpg"]


def test_a_parquet_audit_hashes_the_data_settings_it_always_did():
    """The fingerprint's view of the default data settings is the set of keys Parquet audits
    hashed before WebDataset was read: their committed parts stay theirs."""
    assert DataSettings().fingerprinted() == {
        "image_column": "image", "caption_column": "caption", "id_column": None,
        "keep_columns": [], "max_pixels": 64_000_000, "max_caption_chars": 4096,
        "decode": "fast"}
    view = DataSettings(format="webdataset", caption_json_field="caption").fingerprinted()
    assert view["format"] == "webdataset" and view["caption_json_field"] == "caption"
    assert "image_column" not in view and "id_column" not in view



# ------------------------------------------------------------------ header forms
LONG = "a-folder-name-long-enough/" * 6 + "sample-0001"  # 167 characters before the dot


@pytest.mark.parametrize("form", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar-prefix", "gnu-longname", "pax"])
def test_long_and_non_ascii_names_in_every_header_form(tmp_path, form):
    """The names the standard library's writer stores (a ustar prefix, a GNU long-name
    member, a pax record) come back whole."""
    names = [f"{LONG}.jpg", f"{LONG}.txt", "caf\u00e9-\u00fc.png", "caf\u00e9-\u00fc.txt"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=form, encoding="utf-8") as tar:
        for i, name in enumerate(names):
            data = png(i) if name.endswith(("jpg", "png")) else f"caption {i}".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "names.tar"
    path.write_bytes(buf.getvalue())
    task = Task("t", str(path), path.stat().st_size, file_tag({"mtime": path.stat().st_mtime}),
                (), 0, 0, shard=True)
    got = [r for b in read(str(path), task) for r in as_dicts(b)]
    assert [r["key"] for r in got] == [LONG, "caf\u00e9-\u00fc"]
    assert [r["caption"] for r in got] == [b"caption 1", b"caption 3"]
    assert got[0]["image"] == png(0) and all(r["note"] is None for r in got)


def test_a_checksum_summed_over_signed_bytes_is_accepted(tmp_path):
    """Some old writers summed the header's bytes as signed chars; tarfile accepts both."""
    archive = bytearray(tar_bytes([("caf\u00e9.png", png(1)), ("caf\u00e9.txt", b"x")]))
    header = archive[:512]
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 256
    archive[148:156] = b"%06o\0 " % (signed & 0o777777)
    path = tmp_path / "signed.tar"
    path.write_bytes(bytes(archive))
    task = Task("t", str(path), len(archive), file_tag({"mtime": path.stat().st_mtime}), (), 0,
                0, shard=True)
    assert [r["key"] for b in read(str(path), task) for r in as_dicts(b)] == ["caf\u00e9"]


def test_a_sparse_member_fails_the_shard_by_name(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("a.png")
        info.size = 512
        tar.addfile(info, io.BytesIO(png(1)[:512]))
        sparse = tarfile.TarInfo("b.png")
        sparse.type, sparse.size = tarfile.GNUTYPE_SPARSE, 0
        tar.addfile(sparse)
    path = tmp_path / "sparse.tar"
    path.write_bytes(buf.getvalue())
    task = Task("t", str(path), path.stat().st_size, file_tag({"mtime": path.stat().st_mtime}),
                (), 0, 0, shard=True)
    with pytest.raises(wds.ShardError, match="member b.png at byte 1024 is a GNU sparse file"):
        read(str(path), task)


def test_a_borrowed_pool_reads_the_same_and_stays_open(tmp_path, monkeypatch):
    """The worker lends its own threads (started before a memory cap): small chunks make
    the shard many reads, fetched ahead in them."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(wds, "READ_BYTES", 1024)
    task, path = shard(tmp_path, MEMBERS)
    fs, p = filesystem(path, StorageSettings())
    with ThreadPoolExecutor(2) as pool:
        lent = [r for b in wds.iter_sample_rows(fs, p, task, WDS, 4, pool) for r in as_dicts(b)]
        assert pool.submit(lambda: "still open").result() == "still open"
    assert lent == rows(tmp_path, MEMBERS)
    assert [r["image"] for r in lent] == [png(i) for i in range(6)]


class _RangedBytes:
    """A file read only by ranged reads (as an S3 file is), which waits in each read until
    ``together`` reads are in flight at once (a broken barrier when they never are), and
    notes how far ahead of the reader each read starts."""

    def __init__(self, data: bytes, together: int) -> None:
        import threading

        self.data, self.reader = data, None
        self.barrier = threading.Barrier(together, timeout=10) if together > 1 else None
        self.starts: list[int] = []
        self.lead: list[int] = []  # bytes past the reader's position, for each read

    def _fetch_range(self, start: int, end: int) -> bytes:
        self.starts.append(start)
        self.lead.append(start - self.reader.pos)
        if self.barrier is not None and len(self.starts) <= self.barrier.parties:
            self.barrier.wait()
        return self.data[start:end]


def test_a_shards_first_chunks_are_asked_for_together_and_no_more_than_the_bound():
    """The first chunk and the ``READ_AHEAD`` after it go out before the first is waited
    on (each first read waits for the others: asked one by one they would never meet);
    later reads stay within ``READ_AHEAD`` chunks past the reader. The members read are
    those ``tarfile`` reads from the same bytes."""
    from concurrent.futures import ThreadPoolExecutor

    members = [(f"{i:04d}.{ext}", os.urandom(700 + 37 * i) if ext == "jpg" else b"cap %d" % i)
               for i in range(40) for ext in ("jpg", "txt")]
    archive, chunk, depth = tar_bytes(members), 4096, 2
    assert len(archive) > (depth + 3) * chunk  # more chunks than are fetched at first
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    fh = _RangedBytes(archive, together=depth + 1)
    with ThreadPoolExecutor(depth + 1) as pool:
        fh.reader = ra = wds._ReadAhead(fh, len(archive), chunk, depth, pool)
        got = [(m.name, m.data) for _, m in wds._members(ra, "s.tar", len(archive))]
        ra.close()
    assert got == expected
    assert sorted(fh.starts) == list(range(0, len(archive), chunk))  # each byte once
    assert max(fh.lead) <= depth * chunk  # the buffers: the chunk parsed and ``depth`` more


def test_a_headers_checksum_is_judged_as_tarfile_judges_it():
    """The block's byte sum (taken in C) accepts and refuses the headers ``tarfile`` does:
    names of high bytes (the largest sums a block can have) and one byte changed anywhere."""
    import random

    rnd = random.Random(7)
    high = 0
    for i in range(200):
        def text(most: int) -> str:  # 2 UTF-8 bytes a character, most of them high
            return "".join(rnd.choice("\u07ff\u07ff\u00ffa") for _ in range(rnd.randint(most - 9, most)))

        info = tarfile.TarInfo(f"{text(76)}/{text(48)}.{i % 10}")  # a prefix and a name
        info.size, info.mtime = rnd.randint(0, 2**33 - 1), rnd.randint(0, 2**33 - 1)
        info.type, info.linkname = tarfile.SYMTYPE, text(49)
        info.uname, info.gname = text(15), text(15)
        block = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")[:512])
        high += sum(block) > 65521  # past what one adler32 sum holds
        if i % 2:  # one byte changed, the checksum field left as it was
            at = rnd.choice([j for j in range(512) if not 148 <= j < 156])
            block[at] = (block[at] + rnd.randint(1, 255)) % 256
        try:
            tarfile.TarInfo.frombuf(bytes(block), "utf-8", "surrogateescape")
            expected = True
        except tarfile.HeaderError:
            expected = False
        try:
            wds._header(bytes(block))
            got = True
        except tarfile.HeaderError:
            got = False
        assert got == expected, (i, bytes(block))
    assert high > 20
