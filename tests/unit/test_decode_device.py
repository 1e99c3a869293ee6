"""The device path (``data.decode: device``) on a CPU: torchvision's decode_jpeg there.

Oracle: the exact path (``decode_pair`` with open_clip's PIL steps) row by row.
Every awkward row of the reliability suite, and JPEGs the device must leave to the
CPU (progressive, grey, CMYK, rotated, truncated, unidentifiable headers), keep
the exact path's status and message; a batch call that fails on one image (as
nvJPEG's does) costs that image a CPU decode and nothing else.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from pipeline.decode.device import DeviceDecoder
from pipeline.decode.pixels import fast_preprocess
from pipeline.decode.pool import ThreadDecoder
from pipeline.engine.model import CaptionEncoder
from pipeline.io.images import OK, decode_image, decode_pair
from tests import images as im
from tests.reliability.test_faults import BAD_CASES

LIMITS = (64_000_000, 4096)


@pytest.fixture(scope="module")
def fast():
    import open_clip

    prep = fast_preprocess(open_clip.create_model_and_transforms("ViT-B-32")[2])
    assert prep is not None
    return prep


def rows() -> tuple[list, list]:
    """The reliability suite's awkward rows, then JPEGs of every kind."""
    images = [c[1] for c in BAD_CASES] + [im.photo_jpeg(1, (64, 48)), im.photo_jpeg(2, (64, 48))]
    captions = [c[2] for c in BAD_CASES] + [b"a caf\xc3\xa9 photo", b"a \xff\xfe photo"]
    plain = [im.photo_jpeg(i, (320, 240)) for i in range(4)]
    photo = Image.fromarray(im.photo(9, (300, 200)))
    header_zeroed = bytearray(plain[0])
    header_zeroed[2:6] = b"\0\0\0\0"  # torchvision decodes it, PIL cannot identify it
    others = [
        im.encode(photo, "JPEG", progressive=True, quality=90),
        im.encode(photo.convert("L"), "JPEG", quality=90),
        bytes(header_zeroed),
        plain[1] + b"trailing bytes",
        plain[2][: len(plain[2]) - 300],  # truncated, no end-of-image marker
        {"bytes": plain[3]},
    ]
    images += plain + others
    captions += [f"photo {i}" for i in range(len(plain) + len(others))]
    captions[-2] = None  # a plain JPEG with a bad caption goes to the CPU whole
    return images, captions


def oracle(images, captions, prep) -> list:
    return [decode_pair(i, c, prep.split.image, *LIMITS) for i, c in zip(images, captions)]


def check(out, expected, fast, max_mean: float) -> None:
    assert [(r.status, r.error, r.caption) for r in out.rows] == \
        [(e.status, e.error, e.caption) for e in expected]
    ok = [i for i, e in enumerate(expected) if e.status == OK]
    assert out.ok == ok
    want = torch.stack([torch.as_tensor(expected[i].pixels) for i in ok])
    assert out.pixels.dtype == torch.uint8 and out.pixels.shape == want.shape
    diff = (out.pixels.int() - want.int()).abs().float()
    assert diff.mean() < max_mean, diff.mean()


def test_statuses_and_pixels_are_the_cpu_paths(fast):
    images, captions = rows()
    expected = oracle(images, captions, fast)
    assert {e.status for e in expected} == {"ok", "bad_image", "bad_caption"}
    cpu = ThreadDecoder(fast, *LIMITS, threads=2, draft=fast.draft_size)
    d = DeviceDecoder(cpu, fast.geometry, *LIMITS, device="cpu")
    try:
        out = d.decode(images, captions)
    finally:
        d.close()
    check(out, expected, fast, max_mean=1.0)
    assert d.fallbacks == 0 and out.tokens is None


class FailsWithOne:
    """decode_jpeg whose batch calls fail when one image is ``bad`` (as nvJPEG's
    batched decode does on one corrupt image), and which fails that image alone."""

    def __init__(self, bad: bytes) -> None:
        self.bad = torch.frombuffer(bytearray(bad), dtype=torch.uint8)
        self.calls: list[int] = []

    def __call__(self, data: list[torch.Tensor], **kw) -> list[torch.Tensor]:
        self.calls.append(len(data))
        if any(torch.equal(d, self.bad) for d in data):
            raise RuntimeError("nvjpegDecodeBatched failed")
        return decode_jpeg(data, **kw)


def test_one_image_the_batch_call_refuses_goes_to_the_cpu_alone(fast):
    images = [im.photo_jpeg(i, (320, 240)) for i in range(6)]
    captions = [f"photo {i}" for i in range(6)]
    stand_in = FailsWithOne(images[4])
    cpu = ThreadDecoder(fast, *LIMITS, threads=2, draft=fast.draft_size)
    d = DeviceDecoder(cpu, fast.geometry, *LIMITS, device="cpu", decode=stand_in, chunk=4)
    try:
        out = d.decode(images, captions)
    finally:
        d.close()
    check(out, oracle(images, captions, fast), fast, max_mean=1.0)
    assert d.fallbacks == 1
    assert stand_in.calls == [4, 2, 1, 1]  # chunk 1 whole; chunk 2 failed: one by one
    # the refused image took the CPU's fast path: the same pixels as a CPU decode
    alone = fast(decode_image(images[4], draft=fast.draft_size))
    assert torch.equal(out.pixels[4], torch.as_tensor(alone))


class TokenisingThreads(ThreadDecoder):
    """A CPU decoder that tokenises its ok rows, as the process decoder does."""

    def __init__(self, tokenize, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.tokenize, self.tokenizes = tokenize, True

    def decode(self, images, captions):
        out = super().decode(images, captions)
        if out.ok:
            out.tokens, out.truncated = self.tokenize([out.rows[i].caption for i in out.ok])
        return out


def test_tokens_follow_the_rows_across_both_decoders(fast):
    """Oracle: open_clip's tokenizer on the ok rows' captions in row order, whether a
    row was decoded on the device or by the CPU decoder."""
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-32")
    encode = CaptionEncoder(tok, 77, tok.sot_token_id, tok.eot_token_id)
    images, captions = rows()
    long = " ".join(["word"] * 100)
    for i in (4, len(BAD_CASES) + 2):  # a CMYK JPEG (CPU) and a plain one (device)
        captions[i] = long
    cpu = TokenisingThreads(encode, fast, *LIMITS, threads=2, draft=fast.draft_size)
    d = DeviceDecoder(cpu, fast.geometry, *LIMITS, device="cpu", tokenize=encode)
    try:
        out = d.decode(images, captions)
    finally:
        d.close()
    ok_captions = [out.rows[i].caption for i in out.ok]
    assert np.array_equal(out.tokens, tok(ok_captions).numpy())
    assert out.truncated == [len(c.split()) > 75 for c in ok_captions]


class Log:
    """What happened, in order: a stand-in CUDA stream's waits, decode calls, resizes."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def synchronize(self) -> None:  # the stand-in stream
        self.events.append("wait")

    def decode(self, data, **kw):
        self.events.append("decode")
        return decode_jpeg(data, **kw)


def test_each_decode_waits_for_the_last_chunks_resizes(fast, monkeypatch):
    """nvJPEG writes on a stream of its own into memory allocated on the decoder's: the
    decoder waits for its stream (chunk k's queued resizes, which read memory freed at
    once) before every decode call, and once more before handing the pixels over."""
    import pipeline.decode.device as dd

    log = Log()
    real = dd.resize_crop
    monkeypatch.setattr(dd, "resize_crop", lambda x, g: (log.events.append("resize"),
                                                         real(x, g))[1])
    images = [im.photo_jpeg(i, (320, 240)) for i in range(6)]
    captions = [f"photo {i}" for i in range(6)]
    cpu = ThreadDecoder(fast, *LIMITS, threads=1, draft=fast.draft_size)
    d = DeviceDecoder(cpu, fast.geometry, *LIMITS, device="cpu", decode=log.decode, chunk=4,
                      stream=log)
    try:
        out = d.decode(images, captions)
    finally:
        d.close()
    assert log.events == ["wait", "decode", *["resize"] * 4, "wait", "decode", *["resize"] * 2,
                          "wait"]
    check(out, oracle(images, captions, fast), fast, max_mean=1.0)
    assert out.fallbacks == 0


def test_fallbacks_are_counted_per_batch(fast):
    images = [im.photo_jpeg(i, (320, 240)) for i in range(6)]
    captions = [f"photo {i}" for i in range(6)]
    cpu = ThreadDecoder(fast, *LIMITS, threads=1, draft=fast.draft_size)
    d = DeviceDecoder(cpu, fast.geometry, *LIMITS, device="cpu", decode=FailsWithOne(images[4]))
    try:
        first, second = d.decode(images, captions), d.decode(images[:3], captions[:3])
    finally:
        d.close()
    assert (first.fallbacks, second.fallbacks, d.fallbacks) == (1, 0, 1)


def test_a_fatal_device_error_is_not_a_cpu_fallback(fast, monkeypatch):
    """An illegal memory access on a CUDA device ends the actor (DeviceLost), never a
    quiet fallback of every image to the CPU on a broken context."""
    from pipeline.engine import device_health

    def broken(data, **kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    cpu = ThreadDecoder(fast, *LIMITS, threads=1, draft=fast.draft_size)
    d = DeviceDecoder(cpu, fast.geometry, *LIMITS, device="cpu", decode=broken)
    d.device = torch.device("cuda")  # as on a GPU; the CPU decoder stays a CPU decoder
    try:
        with pytest.raises(device_health.DeviceLost, match="illegal memory access"):
            d._on_device([im.photo_jpeg(0, (64, 48))])
    finally:
        d.close()
