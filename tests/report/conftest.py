"""Report test fixtures: a moto S3 server on 127.0.0.1 (dummy credentials, no AWS config)."""

from __future__ import annotations

import os

import pytest

from pipeline.s3local import LOCAL_S3_ENV, local_s3


@pytest.fixture(scope="session")
def s3_endpoint():
    env = {**LOCAL_S3_ENV, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with local_s3() as url:
            yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
