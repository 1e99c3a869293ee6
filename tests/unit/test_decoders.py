"""Thread and process decoders against a plain loop over ``decode_pair``.

The process decoder runs spawned processes (one start per test module where it
can), so the preprocess used here is a module-level class: it must pickle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.decode import pool as decode_pool
from pipeline.decode.pool import CRASHED, HUNG, ProcessDecoder, ThreadDecoder
from pipeline.io.images import BAD_CAPTION, BAD_IMAGE, OK, decode_pair
from tests import images as im
from tests.procs import running, wait_gone

POISON_WIDTH = 37  # an image this wide kills the decode process (a stand-in codec crash)
HANG_WIDTH = 39  # an image this wide never finishes decoding (a stand-in stuck codec)
SLOW_WIDTH = 41  # an image this wide takes 0.2 s


class Prep:
    """Resize to 8x8 and return uint8 [8, 8, 3] (as SplitPreprocess does); a
    ``POISON_WIDTH``-wide image kills the process it runs in, a ``HANG_WIDTH``-wide
    one hangs it, a ``SLOW_WIDTH``-wide one is slow (none of them in this process)."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if os.environ.get("NIBT_TEST_IN_PARENT") != "1":
            if img.width == POISON_WIDTH:
                os.kill(os.getpid(), signal.SIGSEGV)
            if img.width == HANG_WIDTH:
                time.sleep(3600)
            if img.width == SLOW_WIDTH:
                time.sleep(0.2)
        return torch.from_numpy(np.array(img.resize((8, 8), Image.BILINEAR), dtype=np.uint8))


def png_of_width(width: int) -> bytes:
    return im.encode(Image.new("RGB", (width, 9), (9, 9, 9)), "PNG")


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
    os.environ["NIBT_TEST_IN_PARENT"] = "1"  # the oracle runs here: no crash, no hang
    try:
        return [decode_pair(i, c, Prep()) for i, c in zip(images, captions)]
    finally:
        del os.environ["NIBT_TEST_IN_PARENT"]


def vit_b_32_tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module", params=[True, False], ids=["shared-memory", "pickled"])
def procs(request):
    """Pixels back through shared memory (the default), or pickled (the fallback
    when /dev/shm is small); one pool each for the module (a start imports torch in
    two processes). It tokenises as the worker's does."""
    from pipeline.engine.model import CaptionEncoder

    tok = vit_b_32_tokenizer()
    d = ProcessDecoder(Prep(), 10_000_000, 4096, processes=2, chunk_rows=4, row_timeout_s=3,
                       tokenize=CaptionEncoder(tok, 77, tok.sot_token_id, tok.eot_token_id),
                       shared=request.param)
    assert (d.pool.buffers is not None) == request.param
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
    b = procs.pool.buffers
    if b is not None:  # one per chunk in flight for the one reader; used, all back, no name left
        assert len(b.names) == 2 * procs.processes and len(b.free) == len(b.names)
        assert not [n for n in b.names if os.path.exists(f"/dev/shm/{n}")]
    # a batch smaller than the processes, and one with no ok row
    check(procs.decode(images[:1], captions[:1]), expected[:1])
    bad = procs.decode([b"x", None], ["a", "b"])
    assert [r.status for r in bad.rows] == [BAD_IMAGE, BAD_IMAGE] and bad.pixels is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_row_that_crashes_or_hangs_its_process_is_reported_and_the_rest_go_on(procs):
    images, captions = rows()
    images[6], images[14] = png_of_width(POISON_WIDTH), png_of_width(HANG_WIDTH)
    restarts = procs.restarts
    t = time.monotonic()
    out = procs.decode(images, captions)
    # the hung chunk waits 3 s per row (4 rows), its replay 3 s for the hung row
    assert time.monotonic() - t < 60
    assert procs.restarts >= restarts + 1
    expected = oracle(images, captions)
    expected[6].status, expected[6].error, expected[6].pixels = BAD_IMAGE, CRASHED, None
    expected[14].status, expected[14].error = BAD_IMAGE, HUNG.format(3)
    expected[14].pixels = None
    for e in (expected[6], expected[14]):
        e.caption = ""
    check(out, expected)
    # the restarted pool keeps working
    images2, captions2 = rows()
    check(procs.decode(images2, captions2), oracle(images2, captions2))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_innocent_row_is_blamed_for_another_calls_crash():
    """Two decode calls at once (two tasks of one actor): one holds a row that crashes
    its process, again and again; the other's rows are all fine and slow, so they
    are in flight whenever the pool breaks. None of them may be reported crashed."""
    d = ProcessDecoder(Prep(), 10_000_000, 4096, processes=2, chunk_rows=2)
    innocent = [png_of_width(SLOW_WIDTH)] * 8
    results: list = []
    stop = threading.Event()

    def crasher() -> None:
        while not stop.is_set():
            d.decode([png_of_width(POISON_WIDTH)], ["boom"])

    thread = threading.Thread(target=crasher)
    thread.start()
    try:
        for _ in range(3):
            results.append(d.decode(innocent, ["fine"] * len(innocent)))
    finally:
        stop.set()
        thread.join(timeout=300)
        d.close()
    assert d.restarts >= 1
    assert [r.status for out in results for r in out.rows] == [OK] * 24


def test_close_is_bounded_even_with_a_stuck_process(monkeypatch):
    """A process stuck in a codec does not hold ``close`` (or its caller) past its bound."""
    monkeypatch.setattr(decode_pool, "CLOSE_TIMEOUT_S", 1.0)
    d = ProcessDecoder(Prep(), 10_000_000, 4096, processes=1, row_timeout_s=600)
    pids = [p for p, _ in d.pool.procs]
    errors: list = []

    def stuck() -> None:
        try:
            d.decode([png_of_width(HANG_WIDTH)], ["x"])
        except RuntimeError as e:
            errors.append(e)

    thread = threading.Thread(target=stuck)
    thread.start()
    time.sleep(1.0)
    t = time.monotonic()
    d.close()
    thread.join(timeout=30)
    assert time.monotonic() - t < 15 and not thread.is_alive()
    assert "closed" in str(errors[0])
    assert not wait_gone(pids)


def test_a_killed_parent_leaves_no_decode_process_or_buffer():
    """Buffers are unlinked once the processes hold them (nothing to leak in
    /dev/shm), sized for the readers asked for; the processes exit when their
    parent is SIGKILLed."""
    code = textwrap.dedent("""
        import time
        from tests.unit.test_decoders import Prep, rows
        from pipeline.decode.pool import ProcessDecoder
        d = ProcessDecoder(Prep(), 10_000_000, 4096, processes=2, chunk_rows=4, readers=2)
        d.decode(*rows())
        print(" ".join(str(p) for p, _ in d.pool.procs), flush=True)
        print(" ".join(d.pool.buffers.names), flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    children = [int(x) for x in p.stdout.readline().split()]
    buffers = p.stdout.readline().split()
    assert len(children) == 2 and all(running(c) for c in children)
    assert len(buffers) == 8 and not [b for b in buffers if os.path.exists(f"/dev/shm/{b}")]
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not wait_gone(children)


def test_processes_tokenise_as_open_clip(procs):
    """Oracle: open_clip's own tokenizer on the ok rows' captions, in row order
    (across chunks); a caption over the context is cut to end-of-text and flagged."""
    tok = vit_b_32_tokenizer()
    images, captions = rows()
    captions[2] = " ".join(["word"] * 120)  # over 77 tokens
    out = procs.decode(images, captions)
    ok_captions = [captions[i] for i in out.ok]
    assert out.ok == [i for i, e in enumerate(oracle(images, captions)) if e.status == OK]
    assert np.array_equal(out.tokens, tok(ok_captions).numpy())
    assert out.truncated == [i == 2 for i in out.ok]
