"""Shared fixtures: small random open_clip models, a moto S3 server on 127.0.0.1,
one embedded Ray per test module; 2 torch threads."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from pipeline.devtools.s3local import LOCAL_S3_ENV, local_s3

torch.set_num_threads(2)
logging.getLogger("root").setLevel(logging.ERROR)
# Dummy credentials for the loopback endpoint; never a real account or config file.
os.environ.update(LOCAL_S3_ENV)
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


@pytest.fixture(scope="session")
def s3_endpoint():
    with local_s3() as url:
        yield url


@pytest.fixture(scope="module")
def ray_local():
    """One Ray per module (start-up costs ~5 s), 2 CPUs, bound to 127.0.0.1."""
    from pipeline.config import ClusterSettings
    from pipeline.job.cluster import ray_session

    with ray_session(ClusterSettings(), num_cpus=2):
        yield


@pytest.fixture(scope="module")
def fault_file(tmp_path_factory):
    """The fault hook's spec file (``pipeline.job.faults``), its variable set for the module."""
    from pipeline.job import faults
    from pipeline.job.cluster import patched_env

    path = tmp_path_factory.mktemp("faults") / "faults.json"
    with patched_env({faults.ENV: str(path)}):
        yield path


@pytest.fixture(scope="module")
def ray_faults(fault_file):
    """The module's Ray, started with the fault hook's variable set (its workers see it)."""
    from pipeline.config import ClusterSettings
    from pipeline.job.cluster import ray_session

    with ray_session(ClusterSettings(), num_cpus=2):
        yield


@pytest.fixture
def inject(fault_file):
    """``inject(spec)`` arms faults for this test; disarmed (and their counts reset) after."""
    import json
    import shutil

    from pipeline.job import faults

    def arm(spec: dict) -> None:
        fault_file.write_text(json.dumps(spec))

    yield arm
    fault_file.unlink(missing_ok=True)
    shutil.rmtree(faults.marker_dir(fault_file), ignore_errors=True)


@pytest.fixture(scope="session")
def vitb32():
    from pipeline.engine.model import load_clip

    return load_clip("ViT-B-32")


@pytest.fixture(scope="session")
def vitb16():
    from pipeline.engine.model import load_clip

    return load_clip("ViT-B-16")


@pytest.fixture(scope="session")
def tiny():
    """The demo architecture with random weights: 64 px, 8x8 grid, width 128."""
    from pipeline.engine.model import load_clip

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
