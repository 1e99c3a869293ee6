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

    from pipeline.decode.pixels import split_preprocess
    from pipeline.engine.model import load_clip

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

    from pipeline.decode.pixels import split_preprocess

    norm = T.Normalize((0.5,) * 3, (0.5,) * 3)
    assert split_preprocess(T.Compose([T.Resize(8), T.ToTensor()])) is None  # no Normalize
    assert split_preprocess(T.Compose([T.ToTensor(), T.Resize(8), norm])) is None  # tensor resize
    assert split_preprocess(T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3,
                                                                 inplace=True)])) is None
    assert split_preprocess(lambda img: img) is None
    assert split_preprocess(T.Compose([T.Resize(8), T.ToTensor(), norm])) is not None


# ------------------------------------------------------------------- fast path
def vit_b_32_transform():
    import open_clip

    return open_clip.create_model_and_transforms("ViT-B-32")[2]


def test_draft_decodes_plain_jpegs_smaller_and_nothing_else():
    """Oracle: the stored sizes and PIL's exact decode. A plain JPEG comes back at the
    coarsest DCT scale that still covers the asked size, tagged with its stored size;
    other images (CMYK, rotated, PNG, GIF) come back exactly as without ``draft``."""
    from pipeline.io.images import SOURCE_SIZE

    def ask(size):
        return (size[0] // 3, size[1] // 3)

    img = decode_image(im.photo_jpeg(1, (640, 480)), draft=ask)  # asks 213x160: 1/2 fits
    assert img.size == (320, 240) and img.info[SOURCE_SIZE] == (640, 480, 2)
    grey = im.encode(im.Image.fromarray(im.photo(2, (400, 304))[..., 0]), "JPEG")
    g = decode_image(grey, draft=lambda s: (50, 38))  # 1/8 fits
    assert g.mode == "RGB" and g.size == (50, 38) and g.info[SOURCE_SIZE] == (400, 304, 8)
    odd = decode_image(im.photo_jpeg(3, (641, 479)), draft=lambda s: (160, 119))  # 1/4 fits
    assert odd.size == (161, 120) and odd.info[SOURCE_SIZE] == (641, 479, 4)
    exif, upright = im.exif_rotated_jpeg()
    for data in (im.cmyk_jpeg(), exif, im.rgba_png(), im.animated_gif(), im.gray16_png()):
        exact = decode_image(data)
        drafted = decode_image(data, draft=lambda s: (1, 1))
        assert SOURCE_SIZE not in drafted.info and drafted.size == exact.size
        assert np.array_equal(np.asarray(drafted), np.asarray(exact))
    assert decode_image(exif, draft=lambda s: (1, 1)).size == upright


@pytest.mark.parametrize("data", [None, b"", b"hello", im.truncated_jpeg(), im.bomb_png()],
                         ids=["null", "empty", "junk", "truncated", "bomb"])
def test_draft_fails_as_the_exact_path(data):
    """Oracle: the exact path's own error; with ``draft`` the status and message are the same."""
    with pytest.raises(RowError) as exact:
        decode_image(data)
    with pytest.raises(RowError) as drafted:
        decode_image(data, draft=lambda s: (8, 8))
    assert (drafted.value.status, str(drafted.value)) == (exact.value.status, str(exact.value))


def test_geometry_is_torchvisions():
    """Oracle: torchvision's Resize and CenterCrop on PIL images of many shapes: the
    resized size and the crop's place (found by matching pixels) are the same."""
    from torchvision import transforms as T

    from pipeline.decode.pixels import geometry_of

    for size, crop in ((224, 224), (64, 64), ((200, 150), (100, 120)), (96, (80, 60))):
        steps = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop)]
        g = geometry_of(steps)
        assert g is not None
        for w, h in ((640, 480), (480, 640), (641, 479), (5, 7), (224, 224), (1000, 3)):
            img = im.Image.fromarray(np.random.default_rng(w * h).integers(
                0, 256, (h, w, 3), dtype=np.uint8))
            resized = steps[0](img)
            assert g.resized(w, h) == resized.size
            top, left = g.crop_origin(*resized.size)
            ch, cw = g.crop
            assert np.array_equal(np.asarray(steps[1](resized)),
                                  np.asarray(resized)[top : top + ch, left : left + cw])


def test_geometry_refuses_other_transforms():
    from torchvision import transforms as T

    from pipeline.decode.pixels import fast_preprocess, geometry_of

    bicubic = T.InterpolationMode.BICUBIC
    assert geometry_of([T.Resize(8, interpolation=T.InterpolationMode.NEAREST),
                        T.CenterCrop(8)]) is None
    assert geometry_of([T.Resize(8, max_size=20), T.CenterCrop(8)]) is None
    assert geometry_of([T.Resize(8, interpolation=bicubic), T.CenterCrop(9)]) is None  # pads
    assert geometry_of([T.CenterCrop(8), T.Resize(8)]) is None
    assert geometry_of([T.Resize(8, interpolation=bicubic), T.CenterCrop(8),
                        T.Grayscale()]) is None
    norm = T.Normalize((0.5,) * 3, (0.5,) * 3)
    assert fast_preprocess(T.Compose([T.Resize(8), T.ToTensor(), norm])) is None
    assert fast_preprocess(vit_b_32_transform()) is not None


def test_resize_crop_is_pils_bicubic_within_a_level():
    """Oracle: PIL's bicubic resize then crop (open_clip's PIL steps), on full-size
    images of many shapes: torch's antialiased uint8 bicubic differs by at most 2
    levels and by under a quarter level on average; the same size stays the same."""
    import torch

    from pipeline.decode.pixels import fast_preprocess, resize_crop

    fast = fast_preprocess(vit_b_32_transform())
    for w, h in ((640, 480), (300, 500), (224, 224), (225, 1000), (5, 7), (1024, 768)):
        arr = im.photo(w + h, (w, h))
        want = fast.split.image(im.Image.fromarray(arr)).astype(int)
        got = resize_crop(torch.from_numpy(arr), fast.geometry).numpy().astype(int)
        diff = np.abs(got - want)
        assert got.shape == want.shape == (224, 224, 3)
        assert diff.max() <= 2 and diff.mean() < 0.25, ((w, h), diff.max(), diff.mean())
        if (w, h) == (224, 224):
            assert diff.max() == 0


def test_resize_crop_of_a_scaled_decode_keeps_the_geometry():
    """Oracle: the exact path on the stored image. A scaled decode whose last row and
    column are partial (641x479 at 1/2 and 1/4) must not shift or stretch the crop:
    a one-pixel shift of this image's sharp edges would leave max differences of
    ~100 levels; a scaled decode's smoothing leaves a few levels on average."""
    from pipeline.decode.pixels import fast_preprocess

    fast = fast_preprocess(vit_b_32_transform())
    for size in ((641, 479), (1283, 963), (640, 480)):
        data = im.photo_jpeg(7, size)
        want = fast.split.image(decode_image(data)).astype(int)
        img = decode_image(data, draft=fast.draft_size)
        got = np.asarray(fast(img)).astype(int)
        assert img.size[0] < size[0]
        diff = np.abs(got - want)
        assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12, (size, diff.mean())


def test_fast_preprocess_runs_the_exact_steps_on_other_images():
    """Oracle: SplitPreprocess.image (bit for bit open_clip's PIL steps)."""
    from pipeline.decode.pixels import fast_preprocess

    fast = fast_preprocess(vit_b_32_transform())
    for data in (im.rgba_png(), im.cmyk_jpeg(), im.exif_rotated_jpeg()[0],
                 im.encode(im.Image.fromarray(im.photo(5, (320, 200))), "PNG")):
        img = decode_image(data, draft=fast.draft_size)
        assert np.array_equal(np.asarray(fast(img)), fast.split.image(decode_image(data)))


def test_decode_setting_is_checked():
    from pipeline.config import ConfigError, DataSettings

    assert DataSettings().decode == "fast"
    assert DataSettings(decode="exact").decode == "exact"
    with pytest.raises(ConfigError, match="data.decode: must be one of exact, fast, device"):
        DataSettings(decode="nvjpeg")
