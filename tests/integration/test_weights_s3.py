"""Weights from an s3:// URI: fetched once through s3fs, cached, checked against sha256."""

from __future__ import annotations

import hashlib

import pytest
import s3fs
import torch
from safetensors.torch import save_file

from pipeline.config import StorageSettings
from pipeline.engine.model import WeightsError, load_clip
from pipeline.io.weights import weights_fetcher


def test_weights_from_s3(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.io.weights.CACHE_DIR", tmp_path / "cache")
    src = load_clip("nibt-demo", seed=11)
    local = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(local))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("models")
    fs.put(str(local), "models/demo/w.safetensors")
    fetch = weights_fetcher(StorageSettings(endpoint_url=s3_endpoint))
    clip = load_clip("nibt-demo", "s3://models/demo/w.safetensors", fetch=fetch, sha256=digest)
    assert torch.equal(clip.model.visual.proj, src.model.visual.proj)
    assert clip.weights == f"sha256:{digest}"
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
    with pytest.raises(WeightsError):
        load_clip("nibt-demo", "s3://models/demo/w.safetensors", fetch=fetch, sha256="f" * 64)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # a bad download is dropped
