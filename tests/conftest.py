"""Shared fixtures: small randomly initialised open_clip models, 2 torch threads."""

from __future__ import annotations

import logging

import pytest
import torch

torch.set_num_threads(2)
logging.getLogger("root").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def vitb32():
    from pipeline.model import load_clip

    return load_clip("ViT-B-32")


@pytest.fixture(scope="session")
def vitb16():
    from pipeline.model import load_clip

    return load_clip("ViT-B-16")


@pytest.fixture(scope="session")
def tiny():
    """The demo architecture with random weights: 64 px, 8x8 grid, width 128."""
    from pipeline.model import load_clip

    return load_clip("nibt-demo")


def random_images(clip, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = clip.image.image_size
    return torch.randn(n, 3, h, w, generator=g)


CAPTIONS = [
    "a red circle above a small blue square",
    "a photo of a dog",
    "two cats sleeping on a sofa next to a window in the afternoon sun",
    "vintage",
]
