"""Decoding awkward images and captions: converted as a user expects, or a clear status."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.io.images import (
    BAD_CAPTION,
    BAD_IMAGE,
    OK,
    RowError,
    decode_caption,
    decode_image,
    decode_pair,
    image_bytes,
)
from tests import images as im


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data))


def test_conversions():
    assert rgb(im.cmyk_jpeg())[5, 5].tolist() == pytest.approx([200, 30, 30], abs=12)
    assert rgb(im.gray16_png())[0, 0].tolist() == [128, 128, 128]
    pal = rgb(im.palette_transparent_png())
    assert pal[0, 0].tolist() == [255, 0, 0] and pal[5, 5].tolist() == [255, 255, 255]
    rgba = rgb(im.rgba_png())
    assert rgba[0, 0].tolist() == [0, 0, 255] and rgba[5, 5].tolist() == [255, 255, 255]
    assert rgb(im.one_pixel_png()).tolist() == [[[1, 2, 3]]]
    assert rgb(im.animated_gif())[0, 0].tolist() == [255, 0, 0]  # first frame


def test_exif_rotation_is_applied():
    data, (w, h) = im.exif_rotated_jpeg()
    assert decode_image(data).size == (w, h)


@pytest.mark.parametrize(
    ("data", "words"),
    [(None, "null"), (b"", "empty"), (b"hello world", "not an image"),
     (im.truncated_jpeg(), "cannot decode")],
)
def test_bad_images_are_named(data, words):
    with pytest.raises(RowError, match=words) as e:
        decode_image(data)
    assert e.value.status == BAD_IMAGE


def test_decompression_bomb_is_refused_fast():
    t = time.perf_counter()
    with pytest.raises(RowError, match="decompression bomb.*900000000 pixels"):
        decode_image(im.bomb_png())
    with pytest.raises(RowError, match="decompression bomb.*100000000 pixels"):
        decode_image(im.bomb_png(10000, 10000))
    with pytest.raises(RowError, match="5000x5000 = 25000000 pixels, over the limit of 1000000"):
        decode_image(im.bomb_png(5000, 5000), max_pixels=1_000_000)
    assert time.perf_counter() - t < 1.0


def test_image_cells():
    assert image_bytes({"bytes": b"x", "path": "a.png"}) == b"x"
    assert image_bytes(None) is None
    with pytest.raises(RowError):
        image_bytes(42)


@pytest.mark.parametrize(("value", "words"), [
    (None, "null"), ("", "empty"), ("   \n\t", "whitespace"), (b"\xff\xfe bad", "UTF-8"), (7, "int"),
])
def test_bad_captions(value, words):
    with pytest.raises(RowError, match=words) as e:
        decode_caption(value)
    assert e.value.status == BAD_CAPTION


def test_long_and_binary_captions():
    assert decode_caption(b"caf\xc3\xa9") == "café"
    assert len(decode_caption("x" * 1_000_000)) == 4096


def test_decode_pair_reports_both_problems():
    d = decode_pair(b"junk", "", lambda img: img)
    assert d.status == BAD_IMAGE and "image" in d.error and "caption" in d.error
    ok = decode_pair(im.one_pixel_png(), "a dot", lambda img: img.size)
    assert (ok.status, ok.pixels, ok.caption) == (OK, (1, 1), "a dot")


@pytest.mark.parametrize("model", ["ViT-B-32", "nibt-demo"])
def test_split_preprocess_equals_the_whole_transform(model):
    """Oracle: open_clip's own transform on each image; the split path (PIL steps in
    the decode thread, ToTensor + Normalize on the stacked batch) must give the same
    floats, bit for bit, for every shape the resize and crop handle differently."""
    import open_clip
    import torch

    from pipeline.engine.model import load_clip
    from pipeline.job.preprocess import split_preprocess

    transform = (open_clip.create_model_and_transforms("ViT-B-32")[2] if model == "ViT-B-32"
                 else load_clip(model, None).preprocess)
    split = split_preprocess(transform)
    assert split is not None
    rng = np.random.default_rng(0)
    sizes = [(300, 200), (150, 400), (5, 7), (224, 224), (641, 479), (64, 64)]
    imgs = [decode_image(im.encode(im.Image.fromarray(
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "PNG")) for w, h in sizes]
    imgs.append(decode_image(im.rgba_png()))
    for img in imgs:
        expected = transform(img)
        got = split.normalise(torch.from_numpy(split.image(img))[None])[0]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected), (img.size, (got - expected).abs().max())


def test_split_preprocess_refuses_other_transforms():
    from torchvision import transforms as T

    from pipeline.job.preprocess import split_preprocess

    norm = T.Normalize((0.5,) * 3, (0.5,) * 3)
    assert split_preprocess(T.Compose([T.Resize(8), T.ToTensor()])) is None  # no Normalize
    assert split_preprocess(T.Compose([T.ToTensor(), T.Resize(8), norm])) is None  # tensor resize
    assert split_preprocess(T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3,
                                                                 inplace=True)])) is None
    assert split_preprocess(lambda img: img) is None
    assert split_preprocess(T.Compose([T.Resize(8), T.ToTensor(), norm])) is not None
