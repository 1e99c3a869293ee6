"""An open_clip image transform cut in two: per-image PIL steps, then one batch op.

Decoding workers run the PIL steps (resize, crop, mode) and hand back uint8
pixels; the batch is normalised where it computes (the GPU), with the
transform's own operations in its order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

_TO_TENSOR = ("ToTensor", "MaybeToTensor")


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
