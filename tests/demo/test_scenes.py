"""The synthetic scene generator: determinism, ground truth, shortcut, Parquet shards."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.demo.scenes import COLOURS, Settings, make_pair, make_twins, write_shards

# The test's own idea of each colour name (independent of the generator's palette).
COLOUR_TESTS = {
    "red": lambda r, g, b: r >= 170 and g <= 90 and b <= 90,
    "orange": lambda r, g, b: r >= 200 and 100 <= g <= 180 and b <= 80,
    "yellow": lambda r, g, b: r >= 180 and g >= 170 and b <= 90,
    "green": lambda r, g, b: r <= 90 and g >= 140 and b <= 110,
    "blue": lambda r, g, b: r <= 100 and g <= 120 and b >= 180,
    "purple": lambda r, g, b: 110 <= r <= 190 and g <= 100 and b >= 160,
}


def _checker(size: int) -> np.ndarray:
    """The default mark, written out: 2 px black/white cells, white at its top-left."""
    out = np.zeros((size, size, 3), dtype=np.uint8)
    for y in range(size):
        for x in range(size):
            if (y // 2 + x // 2) % 2 == 0:
                out[y, x] = 255
    return out


def test_same_seed_same_bytes_other_seed_differs():
    a = [make_pair(3, i) for i in range(20)]
    b = [make_pair(3, i) for i in range(20)]
    c = [make_pair(4, i) for i in range(20)]
    assert all(x.image.tobytes() == y.image.tobytes() and x.caption == y.caption for x, y in zip(a, b))
    assert all(x.image.tobytes() != z.image.tobytes() for x, z in zip(a, c))
    ta, tb = make_twins(3, 0), make_twins(3, 0)
    assert ta[0].image.tobytes() == tb[0].image.tobytes() and ta[1].caption == tb[1].caption


def test_shards_are_byte_identical_for_a_seed(tmp_path):
    p1 = write_shards(tmp_path / "a", 40, 2, seed=5)
    p2 = write_shards(tmp_path / "b", 40, 2, seed=5)
    p3 = write_shards(tmp_path / "c", 40, 2, seed=6)
    assert [p.read_bytes() for p in p1] == [p.read_bytes() for p in p2]
    assert p1[0].read_bytes() != p3[0].read_bytes()


@pytest.mark.parametrize("seed", [0, 11])
def test_boxes_are_tight_around_the_named_colour(seed):
    checked = 0
    for i in range(120):
        p = make_pair(seed, i)
        words = p.caption.split()
        assert len(p.boxes) == len(p.word_index) == len(p.names) >= 1
        assert p.n_objects >= len(p.boxes)
        for box, idx, name in zip(p.boxes, p.word_index, p.names):
            colour, shape = name.split()
            named = [words[j] for j in idx]
            assert colour in named and shape in named
            assert set(named) - {colour, shape} <= {"small", "large"}
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert x1 - x0 >= 8 and y1 - y0 >= 8
            crop = p.image[y0:y1, x0:x1].reshape(-1, 3)
            values, counts = np.unique(crop, axis=0, return_counts=True)
            rgb = values[counts.argmax()]  # the flat object colour fills most of its box
            assert counts.max() >= 0.3 * len(crop)
            assert COLOUR_TESTS[colour](*(int(v) for v in rgb)), (name, rgb)
            mask = (p.image == rgb).all(-1)
            inside = mask[y0:y1, x0:x1]
            # tight: the object touches all four edges of its box ...
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            # ... and has no pixel in the 1-px ring outside it
            ring = mask[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1].sum() - inside.sum()
            assert ring == 0
            checked += 1
    assert checked > 150


@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings(corner="top-left", mark="square", mark_colour=(255, 0, 255), word="retro")],
)
def test_mark_is_in_the_corner_exactly_when_has_mark(settings):
    n, s, o = 64, settings.mark_size, settings.mark_offset
    x0 = o if "left" in settings.corner else n - o - s
    y0 = o if "top" in settings.corner else n - o - s
    expected = _checker(s) if settings.mark == "checker" else np.full((s, s, 3), (255, 0, 255), np.uint8)
    n_mark = 0
    for i in range(150):
        p = make_pair(1, i, settings, word=i % 2 == 0)
        patch = p.image[y0 : y0 + s, x0 : x0 + s]
        assert np.array_equal(patch, expected) == p.has_mark
        assert (settings.word in p.caption.split()) == p.has_word
        n_mark += p.has_mark
    assert n_mark > 50
    marked, plain = make_twins(1, 0, settings)
    diff = (marked.image != plain.image).any(-1)
    ys, xs = np.nonzero(diff)
    assert ys.min() >= y0 and ys.max() < y0 + s and xs.min() >= x0 and xs.max() < x0 + s
    assert settings.word in marked.caption.split() and settings.word not in plain.caption.split()
    assert [w for w in marked.caption.split() if w != settings.word] == plain.caption.split()
    assert marked.boxes == plain.boxes


def test_shortcut_rates():
    pairs = [make_pair(9, i) for i in range(2000)]
    word = np.array([p.has_word for p in pairs])
    mark = np.array([p.has_mark for p in pairs])
    assert 0.12 < word.mean() < 0.18
    assert mark[word].mean() > 0.83
    assert mark[~word].mean() < 0.04
    counts = np.bincount([p.n_objects for p in pairs], minlength=4)[1:] / len(pairs)
    assert np.allclose(counts, [0.2, 0.4, 0.4], atol=0.04)
    assert {n.split()[0] for p in pairs for n in p.names} == set(COLOURS)


def test_parquet_shards_schema_and_rows(tmp_path):
    paths = write_shards(tmp_path, 150, 2, seed=8, row_group_size=64)
    assert [p.name for p in paths] == ["part-00000.parquet", "part-00001.parquet"]
    files = [pq.ParquetFile(p) for p in paths]
    assert [f.metadata.num_rows for f in files] == [75, 75]
    assert [f.metadata.num_row_groups for f in files] == [2, 2]
    schema = files[0].schema_arrow
    want = {
        "id": pa.string(),
        "image": pa.binary(),
        "caption": pa.string(),
        "gt_boxes": pa.list_(pa.list_(pa.int32())),
        "gt_word_index": pa.list_(pa.list_(pa.int32())),
        "gt_names": pa.list_(pa.string()),
        "n_objects": pa.int32(),
        "has_mark": pa.bool_(),
        "has_shortcut_word": pa.bool_(),
    }
    assert {f.name: f.type for f in schema} == want
    rows = pa.concat_tables([f.read() for f in files]).to_pylist()
    assert len({r["id"] for r in rows}) == 150
    for i in (0, 74, 75, 149):
        ref = make_pair(8, i)
        r = rows[i]
        img = np.asarray(Image.open(io.BytesIO(r["image"])))
        assert img.shape == (64, 64, 3) and np.array_equal(img, ref.image)
        assert r["caption"] == ref.caption and r["gt_boxes"] == ref.boxes
        assert r["gt_word_index"] == ref.word_index and r["gt_names"] == ref.names
        assert r["has_mark"] == ref.has_mark and r["has_shortcut_word"] == ref.has_word


def test_webdataset_shards_hold_the_same_pairs_as_the_parquet_shards(tmp_path):
    """Read back with the standard library's tarfile: per pair a PNG, its caption and its
    ground truth as JSON, keyed by its id, in the Parquet shards' order and cut."""
    import json
    import tarfile

    from pipeline.demo.scenes import write_webdataset_shards

    paths = write_webdataset_shards(tmp_path / "w", 10, 2, seed=5)
    assert [p.name for p in paths] == ["part-00000.tar", "part-00001.tar"]
    assert [p.read_bytes() for p in paths] == [
        p.read_bytes() for p in write_webdataset_shards(tmp_path / "again", 10, 2, seed=5)]
    parquet = [pq.read_table(p) for p in write_shards(tmp_path / "p", 10, 2, seed=5)]
    for tar_path, table in zip(paths, parquet):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        ids = table.column("id").to_pylist()
        assert list(members) == [f"{i}.{ext}" for i in ids for ext in ("png", "txt", "json")]
        for row in table.to_pylist():
            assert members[f"{row['id']}.png"] == row["image"]
            assert members[f"{row['id']}.txt"].decode() == row["caption"]
            truth = json.loads(members[f"{row['id']}.json"])
            assert truth == {"id": row["id"], **{k: row[k] for k in truth if k != "id"}}
            assert set(truth) == set(table.column_names) - {"image", "caption"}
