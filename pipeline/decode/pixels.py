"""An open_clip image transform cut in two: per-image steps to uint8 pixels, then one batch op.

Decoders run the per-image steps (resize, crop, mode) and hand back uint8
pixels; the batch is normalised where it computes (the GPU), with the
transform's own operations in its order.

Two ways to the uint8 pixels (``data.decode``):

* ``exact`` (``SplitPreprocess.image``): the transform's own PIL steps on the
  fully decoded image: bit for bit what open_clip's transform gives.
* ``fast`` (``FastPreprocess``): plain JPEGs decoded with libjpeg's DCT scaling
  to the coarsest scale that still covers the resize target, then resized with
  torch's antialiased bicubic in uint8 (several times faster than PIL's) and
  cropped at the transform's own offsets. Other images take the exact path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.io.images import SOURCE_SIZE

_TO_TENSOR = ("ToTensor", "MaybeToTensor")
_MODES = {"BICUBIC": "bicubic", "BILINEAR": "bilinear"}


class SplitPreprocess:
    """An open_clip transform cut where the image becomes a tensor.

    ``image`` runs the PIL steps (resize, crop, mode) and returns uint8
    [H, W, 3]: the per-image work, done in decode threads (mostly with the GIL
    released) or decode processes. ``normalise`` then does ToTensor + Normalize on a whole batch,
    wherever the batch is (the GPU), with the transform's own operations in its
    order, so the values equal the whole transform's. A quarter of the bytes
    cross to the device, and no Python-level tensor work is left per image.
    """

    def __init__(self, pil_steps: list[Callable], mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        self.pil_steps = pil_steps
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(v) for v in std)

    def image(self, img: Image.Image) -> np.ndarray:
        """PIL image -> uint8 [H, W, 3] after the transform's PIL steps."""
        for step in self.pil_steps:
            img = step(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.array(img, dtype=np.uint8)

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> float32 [B, 3, H, W], as ToTensor then Normalize."""
        x = batch.permute(0, 3, 1, 2).to(torch.float32).div(255)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


def split_preprocess(transform: Any) -> SplitPreprocess | None:
    """``transform`` as a ``SplitPreprocess`` when it is PIL steps then ToTensor and
    Normalize (open_clip's eval transforms are); None for anything else."""
    steps = list(getattr(transform, "transforms", None) or [])
    if len(steps) < 2:
        return None
    *pil, to_tensor, norm = steps
    tensor_steps = (*_TO_TENSOR, "Normalize", "PILToTensor", "ConvertImageDtype")
    if (type(to_tensor).__name__ not in _TO_TENSOR or type(norm).__name__ != "Normalize"
            or getattr(norm, "inplace", False)
            or any(type(p).__name__ in tensor_steps for p in pil)):
        return None
    return SplitPreprocess(pil, tuple(norm.mean), tuple(norm.std))


@dataclass(frozen=True)
class Geometry:
    """A transform's resize and centre crop, computed as torchvision computes them.

    ``size``: the shortest side's length (one int) or the exact (h, w);
    ``crop``: (h, w) of the centre crop; ``mode``: torch's name of the filter.
    """

    size: int | tuple[int, int]
    crop: tuple[int, int]
    mode: str = "bicubic"

    def resized(self, w: int, h: int) -> tuple[int, int]:
        """(w, h) of a ``w`` x ``h`` image after the resize (torchvision's rounding)."""
        if not isinstance(self.size, int):
            return self.size[1], self.size[0]
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.size * long / short)
        return (self.size, new_long) if w <= h else (new_long, self.size)

    def crop_origin(self, w: int, h: int) -> tuple[int, int]:
        """(top, left) of the centre crop in a ``w`` x ``h`` resized image."""
        ch, cw = self.crop
        return int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))


def resize_crop(x: torch.Tensor, g: Geometry, source: tuple[int, int] | None = None,
                scale: int = 1) -> torch.Tensor:
    """uint8 [h, w, 3] pixels -> uint8 [crop h, crop w, 3] on the same device: the
    transform's resize with torch's antialiased filter (PIL's kernels), then its
    centre crop.

    ``source``: the stored (w, h) when ``x`` was decoded at 1/``scale`` of it (a
    DCT-scaled JPEG: ceil(w / scale) x ceil(h / scale), the last row and column
    possibly partial). The resize then maps output pixels onto the stored image's
    geometry (scale factors, not sizes), so the picture is neither stretched nor
    shifted by the partial edge.
    """
    h, w = int(x.shape[0]), int(x.shape[1])
    sw, sh = source or (w, h)
    tw, th = g.resized(sw, sh)
    top, left = g.crop_origin(tw, th)
    ch, cw = g.crop
    if scale == 1 and (w, h) == (sw, sh) == (tw, th):  # no resize: the crop alone
        return x[top : top + ch, left : left + cw].contiguous()
    img = x.permute(2, 0, 1)[None]  # [1, 3, h, w], channels-last in memory
    cpu = img.device.type == "cpu"  # CPU has uint8 kernels; elsewhere via float
    if not cpu:
        img = img.float()
    if scale == 1 and (w, h) == (sw, sh):
        img = F.interpolate(img, size=(th, tw), mode=g.mode, antialias=True)
    else:
        # output pixel j sits at (j + 0.5) * sw / tw stored pixels, i.e. at
        # (j + 0.5) * sw / (tw * scale) decoded ones; the factor is nudged up by 1e-9
        # so that floor(h * factor) is never one short of th (float rounding)
        fy, fx = th * scale / sh * (1 + 1e-9), tw * scale / sw * (1 + 1e-9)
        img = F.interpolate(img, scale_factor=(fy, fx), mode=g.mode, antialias=True,
                            recompute_scale_factor=False)
    planes = img[0, :, top : top + ch, left : left + cw]  # [3, ch, cw]
    if not cpu:
        return planes.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    # interleaved channel by channel: a third of the time of a transposing copy
    src = planes.numpy()
    out = np.empty((ch, cw, src.shape[0]), dtype=np.uint8)
    for c in range(src.shape[0]):
        out[..., c] = src[c]
    return torch.from_numpy(out)


class FastPreprocess:
    """The ``fast`` path to uint8 pixels, with ``SplitPreprocess``'s output.

    ``draft_size`` is what the decoder passes to ``decode_image``: the size the
    resize needs, so that plain JPEGs decode at the coarsest DCT scale covering
    it. Calling the object on a DCT-decoded image (``SOURCE_SIZE`` in its info)
    resizes and crops with ``resize_crop``; on any other image it runs the exact
    PIL steps.
    """

    def __init__(self, split: SplitPreprocess, geometry: Geometry) -> None:
        self.split, self.geometry = split, geometry

    def draft_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(w, h) the resize of a stored ``size`` image needs (no less)."""
        return self.geometry.resized(*size)

    def __call__(self, img: Image.Image) -> np.ndarray | torch.Tensor:
        source = img.info.get(SOURCE_SIZE)
        if source is None:
            return self.split.image(img)
        sw, sh, scale = source
        x = torch.from_numpy(np.array(img, dtype=np.uint8))
        return resize_crop(x, self.geometry, (sw, sh), scale)


def geometry_of(steps: list[Any]) -> Geometry | None:
    """The resize and centre crop of a transform's PIL steps, when they are exactly
    Resize (shortest side or (h, w); bicubic or bilinear; no max_size) then
    CenterCrop no larger than the resize, then at most a conversion to RGB; else None."""
    names = [type(s).__name__ for s in steps]
    if names not in (["Resize", "CenterCrop"], ["Resize", "CenterCrop", "MaybeConvertMode"]):
        return None
    resize, crop = steps[0], steps[1]
    if len(steps) == 3 and getattr(steps[2], "mode", None) != "RGB":
        return None
    mode = _MODES.get(getattr(getattr(resize, "interpolation", None), "name", ""))
    size = resize.size
    if (mode is None or getattr(resize, "max_size", None) is not None
            or getattr(resize, "antialias", True) is False):
        return None
    if isinstance(size, (list, tuple)) and len(size) == 1:
        size = size[0]
    size = int(size) if isinstance(size, int) else tuple(int(v) for v in size)
    ch, cw = (crop.size, crop.size) if isinstance(crop.size, int) else tuple(crop.size)
    floor = (size, size) if isinstance(size, int) else size
    if ch > floor[0] or cw > floor[1]:  # the crop would pad: not handled here
        return None
    return Geometry(size, (int(ch), int(cw)), mode)


def fast_preprocess(transform: Any) -> FastPreprocess | None:
    """``transform`` as a ``FastPreprocess`` when it splits (``split_preprocess``)
    and its PIL steps are a resize and centre crop ``geometry_of`` knows; else None."""
    split = split_preprocess(transform)
    geometry = geometry_of(split.pil_steps) if split is not None else None
    return FastPreprocess(split, geometry) if geometry is not None else None
