"""Thread and process decoders against a plain loop over ``decode_pair``.

The process decoder runs spawned processes (one start per test module), so the
preprocess used here is a module-level class: it must pickle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.io.images import BAD_CAPTION, BAD_IMAGE, OK, decode_pair
from pipeline.job.decode_pool import CRASHED, ProcessDecoder, ThreadDecoder
from tests import images as im
from tests.procs import running, wait_gone

POISON_WIDTH = 37  # an image this wide kills the decode process (a stand-in codec crash)


class Prep:
    """Resize to 8x8 and return uint8 [8, 8, 3] (as SplitPreprocess does); a
    ``POISON_WIDTH``-wide image kills the process it runs in."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.width == POISON_WIDTH and os.environ.get("NIBT_TEST_IN_PARENT") != "1":
            os.kill(os.getpid(), signal.SIGSEGV)
        return torch.from_numpy(np.array(img.resize((8, 8), Image.BILINEAR), dtype=np.uint8))


def rows() -> tuple[list, list]:
    rng = np.random.default_rng(0)
    images, captions = [], []
    for i in range(23):
        arr = rng.integers(0, 255, (10 + i % 5, 12 + i % 7, 3), dtype=np.uint8)
        images.append(im.encode(Image.fromarray(arr), "PNG" if i % 2 else "JPEG"))
        captions.append(f"a photo number {i}")
    images[3] = b"not an image"
    captions[5] = "   "
    images[8], captions[8] = None, None
    images[11] = im.cmyk_jpeg()
    images[17] = {"bytes": im.rgba_png()}
    return images, captions


def oracle(images: list, captions: list) -> list:
    return [decode_pair(i, c, Prep()) for i, c in zip(images, captions)]


@pytest.fixture(scope="module", params=[True, False], ids=["shared-memory", "pickled"])
def procs(request):
    """Pixels back through shared memory (the default), or pickled (the fallback
    when /dev/shm is small)."""
    d = ProcessDecoder(Prep(), 10_000_000, 4096, processes=2, chunk_rows=4,
                       shared=request.param)
    assert (d.buffers is not None) == request.param
    yield d
    d.close()


def check(out, expected) -> None:
    assert [r.status for r in out.rows] == [e.status for e in expected]
    assert [r.error for r in out.rows] == [e.error for e in expected]
    assert [r.caption for r in out.rows] == [e.caption for e in expected]
    ok = [i for i, e in enumerate(expected) if e.status == OK]
    assert out.ok == ok
    want = torch.stack([torch.as_tensor(expected[i].pixels) for i in ok])
    assert out.pixels.dtype == torch.uint8 and torch.equal(out.pixels, want)


def test_thread_decoder_equals_the_loop():
    images, captions = rows()
    d = ThreadDecoder(Prep(), 10_000_000, 4096, threads=3)
    try:
        check(d.decode(images, captions), oracle(images, captions))
    finally:
        d.close()


def test_process_decoder_equals_the_loop(procs):
    images, captions = rows()
    expected = oracle(images, captions)
    assert {e.status for e in expected} == {OK, BAD_IMAGE, BAD_CAPTION}
    check(procs.decode(images, captions), expected)
    if procs.buffers is not None:  # used, yet no name left in /dev/shm
        assert procs.buffers.names and len(procs.buffers.free) == len(procs.buffers.names)
        assert not [n for n in procs.buffers.names if os.path.exists(f"/dev/shm/{n}")]
    # a batch smaller than the processes, and one with no ok row
    check(procs.decode(images[:1], captions[:1]), expected[:1])
    bad = procs.decode([b"x", None], ["a", "b"])
    assert [r.status for r in bad.rows] == [BAD_IMAGE, BAD_IMAGE] and bad.pixels is None


def test_a_row_that_crashes_its_process_is_reported_and_the_rest_go_on(procs):
    images, captions = rows()
    poison = im.encode(Image.new("RGB", (POISON_WIDTH, 9), (9, 9, 9)), "PNG")
    images[6] = poison
    restarts = procs.restarts
    out = procs.decode(images, captions)
    assert out.rows[6].status == BAD_IMAGE and out.rows[6].error == CRASHED
    assert procs.restarts >= restarts + 2  # the chunk's crash, then the row's own
    os.environ["NIBT_TEST_IN_PARENT"] = "1"  # the oracle runs here: no crash
    try:
        expected = oracle(images, captions)
    finally:
        del os.environ["NIBT_TEST_IN_PARENT"]
    expected[6].status, expected[6].error, expected[6].pixels = BAD_IMAGE, CRASHED, None
    expected[6].caption = ""
    check(out, expected)
    # the restarted pool keeps working
    images2, captions2 = rows()
    check(procs.decode(images2, captions2), oracle(images2, captions2))


def test_a_killed_parent_leaves_no_decode_process_or_buffer():
    """Buffers are unlinked once the processes hold them (nothing to leak in
    /dev/shm); the processes exit when their parent is SIGKILLed."""
    code = textwrap.dedent("""
        import os, sys, time
        from tests.unit.test_decoders import Prep
        from pipeline.job.decode_pool import ProcessDecoder
        from tests.unit.test_decoders import rows
        d = ProcessDecoder(Prep(), 10_000_000, 4096, processes=2, chunk_rows=4)
        d.decode(*rows())
        print(" ".join(str(p) for p in d.pool._processes), flush=True)
        print(" ".join(d.buffers.names), flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    children = [int(x) for x in p.stdout.readline().split()]
    buffers = p.stdout.readline().split()
    assert len(children) == 2 and all(running(c) for c in children)
    assert buffers and not [b for b in buffers if os.path.exists(f"/dev/shm/{b}")]
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not wait_gone(children)


def test_processes_tokenise_as_open_clip():
    """Oracle: open_clip's own tokenizer on the ok rows' captions, in row order
    (across chunks); a caption over the context is cut to end-of-text and flagged."""
    import open_clip

    from pipeline.engine.model import CaptionEncoder

    tok = open_clip.get_tokenizer("ViT-B-32")
    images, captions = rows()
    captions[2] = " ".join(["word"] * 120)  # over 77 tokens
    d = ProcessDecoder(Prep(), 10_000_000, 4096, processes=2, chunk_rows=4,
                       tokenize=CaptionEncoder(tok, 77, tok.sot_token_id, tok.eot_token_id))
    try:
        out = d.decode(images, captions)
    finally:
        d.close()
    ok_captions = [captions[i] for i in out.ok]
    assert out.ok == [i for i, e in enumerate(oracle(images, captions)) if e.status == OK]
    assert np.array_equal(out.tokens, tok(ok_captions).numpy())
    assert out.truncated == [i == 2 for i in out.ok]
