"""Real components: one embedded Ray per test module, a moto S3 server on 127.0.0.1."""

from __future__ import annotations

import os

import pytest

from pipeline.config import (
    ClusterSettings,
    DataSettings,
    ModelSettings,
    RunSettings,
    StorageSettings,
)
from pipeline.job import JobSettings
from pipeline.s3local import LOCAL_S3_ENV, local_s3

# Dummy credentials for the loopback endpoint; never a real account.
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
    from pipeline.cluster import ray_session

    with ray_session(ClusterSettings(), num_cpus=2):
        yield


TEST_MODEL = dict(name="nibt-demo", pretrained=None, image_layer=1, text_layer=1, steps=3,
                  batch_size=8)


def settings(inp, out, *, endpoint: str | None = None, model=None, data=None, run=None,
             cluster=None) -> JobSettings:
    """Job settings for tests: the small random demo architecture, 16-row tasks."""
    return JobSettings(
        input=inp,
        output=out,
        model=ModelSettings(**{**TEST_MODEL, **(model or {})}),
        data=DataSettings(**{"id_column": "id", "keep_columns": ["extra"], **(data or {})}),
        storage=StorageSettings(endpoint_url=endpoint),
        cluster=ClusterSettings(**(cluster or {})),
        run=RunSettings(**{"rows_per_task": 16, "progress": False, **(run or {})}),
    )
