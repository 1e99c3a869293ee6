"""The fast and device decode paths against open_clip's own transform, through models.

Oracle: ``clip.preprocess`` (open_clip's transform, PIL on the full image) and the
model's own ``encode_image``. Camera-size JPEGs (640x480 and 1024x768, quality 90):
the demo model with its shipped weights on demo scenes, a random ViT-B-32 on
photo-like images. Required: image-embedding cosine >= 0.999 and attribution-map
Pearson >= 0.99 for every image; the pixel bounds are what these images give
with some room (measured: docs/performance.md, "Decoding").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.functional import normalize

from pipeline.decode.pixels import fast_preprocess, resize_crop
from pipeline.demo.scenes import make_pair
from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT
from pipeline.io.images import decode_image
from tests import images as im

SIZES = ((640, 480), (1024, 768))


def cases(model: str) -> tuple[list[bytes], list[str]]:
    if model == "nibt-demo":
        pairs = [make_pair(11, i) for i in range(3)]
        return ([im.camera_jpeg(p.image, s, seed=i) for i, p in enumerate(pairs) for s in SIZES],
                [p.caption for p in pairs for _ in SIZES])
    return ([im.photo_jpeg(i, s) for i in range(2) for s in SIZES],
            ["a photo of a red square beside a blue circle"] * 2 * len(SIZES))


def device_path(data: bytes, fast) -> torch.Tensor:
    """The device path's pixels on a CPU: torchvision's decode_jpeg, then resize_crop."""
    from torchvision.io import ImageReadMode, decode_jpeg

    x = decode_jpeg([torch.frombuffer(bytearray(data), dtype=torch.uint8)],
                    mode=ImageReadMode.RGB)[0]
    return resize_crop(x.permute(1, 2, 0), fast.geometry)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "pretrained", "max_mean", "max_max"),
                         [("nibt-demo", "shipped", 1.0, 20), ("ViT-B-32", None, 1.5, 48)])
def test_fast_and_device_paths_match_open_clip(model, pretrained, max_mean, max_max):
    clip = load_clip(model, pretrained)
    fast = fast_preprocess(clip.preprocess)
    assert fast is not None
    images, captions = cases(model)
    reference = torch.stack([clip.preprocess(decode_image(b)) for b in images])
    exact8 = torch.stack([torch.from_numpy(fast.split.image(decode_image(b))) for b in images])
    paths = {
        "fast": torch.stack([torch.as_tensor(fast(decode_image(b, draft=fast.draft_size)))
                             for b in images]),
        "device": torch.stack([device_path(b, fast) for b in images]),
    }
    # the exact split path is bit for bit the reference (test_decode), so pixels compare
    # against it in uint8 and the model sees the same normalisation
    assert torch.equal(fast.split.normalise(exact8), reference)
    tokens, _ = clip.encode_captions(captions)
    engine = NIBT(clip, steps=4)
    with torch.no_grad():
        want = normalize(clip.model.encode_image(reference), dim=-1)
    want_map = engine.attribute(reference, tokens).image.flatten(1).numpy()
    for name, pixels in paths.items():
        diff = (pixels.int() - exact8.int()).abs().float()
        assert diff.mean() < max_mean and diff.max() <= max_max, (name, diff.mean(), diff.max())
        x = fast.split.normalise(pixels)
        with torch.no_grad():
            got = normalize(clip.model.encode_image(x), dim=-1)
        cos = (want * got).sum(-1)
        assert cos.min() >= 0.999, (name, cos)
        got_map = engine.attribute(x, tokens).image.flatten(1).numpy()
        pearson = [np.corrcoef(a, b)[0, 1] for a, b in zip(want_map, got_map)]
        assert min(pearson) >= 0.99, (name, pearson)
