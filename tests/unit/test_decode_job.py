"""The reliability suite's awkward rows through the whole job on every decode path.

Oracle: the statuses the reliability suite expects (``BAD_CASES``), and the exact
path's run: the fast and device paths must give every row the same status and
message, and the same caption flags.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.io.results import read_results
from pipeline.job.driver import EXIT_OK, run_job
from tests import images as im
from tests.data import png, write_table
from tests.jobutil import settings
from tests.reliability.test_faults import BAD_CASES


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    root = tmp_path_factory.mktemp("awkward")
    cases = [c[:4] for c in BAD_CASES] + [
        ("utf8_ok", png(7), b"a caf\xc3\xa9 photo", "ok"),
        ("utf8_bad", png(8), b"a \xff\xfe photo", "bad_caption"),
        ("camera_jpeg", im.photo_jpeg(3, (640, 480)), b"a photo", "ok"),
    ]
    table = pa.table({"id": [c[0] for c in cases],
                      "image": pa.array([c[1] for c in cases], pa.binary()),
                      "caption": pa.array([c[2] if not isinstance(c[2], str) else c[2].encode()
                                           for c in cases], pa.binary())})
    write_table(table, str(root / "awkward.parquet"))
    return root, {c[0]: c[3] for c in cases}


@pytest.mark.slow
def test_every_path_gives_every_row_the_exact_paths_status(ray_local, awkward, tmp_path):
    root, expected = awkward
    seen = {}
    for path in ("exact", "fast", "device"):
        out = str(tmp_path / path)
        code, summary = run_job(settings(str(root), out, data={"keep_columns": [],
                                                              "decode": path}))
        assert code == EXIT_OK, summary
        res = read_results(out).to_pydict()
        seen[path] = {i: (s, e, t) for i, s, e, t in zip(
            res["id"], res["status"], res["error"], res["caption_truncated"])}
        assert {i: v[0] for i, v in seen[path].items()} == expected, path
    assert seen["fast"] == seen["exact"]
    assert seen["device"] == seen["exact"]
