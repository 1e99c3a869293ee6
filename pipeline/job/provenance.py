"""What produced a result: the model as resolved before any worker starts, the
results fingerprint, and the values recorded with every result.

``resolve_model`` checks the model on the driver without allocating its weights
(see ``pipeline.engine.model.inspect_model``) and resolves what the settings
leave open; ``results_fingerprint`` hashes everything that changes results;
``provenance`` is what each part's metadata, the manifest and the summary
record (docs/output.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.config import (
    SCHEMA_VERSION,
    ConfigError,
    DataSettings,
    ModelSettings,
    StorageSettings,
    fingerprint,
)
from pipeline.engine import RESULTS_VERSION
from pipeline.io.weights import weights_fetcher


def library_versions() -> dict[str, str]:
    """Versions of the libraries that can change results, as this process runs
    them: torch and open_clip compute, torchvision and Pillow turn bytes into
    pixels. (torch's own version string: it names the CUDA build.)"""
    import open_clip
    import PIL
    import torch
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "open_clip": open_clip.__version__, "pillow": PIL.__version__}


@dataclass(frozen=True)
class ResolvedModel:
    """The model as it will run: checked on the driver before any actor starts."""

    weights: str  # "random(seed=0)", an open_clip tag, or "sha256:<hex>"
    image_layer: int
    text_layer: int
    depths: tuple[int, int]  # blocks in the image and text towers
    config: dict[str, Any]  # open_clip's model config


def resolve_model(m: ModelSettings, storage: StorageSettings) -> ResolvedModel:
    """Check ``m`` against the model itself, without allocating its weights, and
    resolve what it leaves open (weights id, layers). ``ConfigError`` names the
    setting, the model and the reason: a name open_clip does not know, towers the
    engine cannot cut, weights that do not resolve or an unknown tag, a layer out
    of range."""
    import open_clip

    from pipeline.engine.layers import bottleneck_layers
    from pipeline.engine.model import inspect_model, register_configs, resolve_weights

    register_configs()
    if m.name not in open_clip.list_models():
        raise ConfigError(f"model.name: {m.name!r} is not an open_clip model "
                          "(see open_clip.list_models())")
    try:
        depths = inspect_model(m.name)
    except ValueError as e:  # UnsupportedModelError included
        raise ConfigError(f"model.name: {e}") from None
    try:
        source, weights = resolve_weights(m.pretrained, m.name, m.pretrained_sha256,
                                          weights_fetcher(storage))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model.pretrained: {e}") from None
    if source is None:
        weights = f"random(seed={m.seed})"
    elif source == weights:  # an open_clip tag: known for this model, or refused now
        tags = open_clip.list_pretrained_tags_by_model(m.name)
        if weights not in tags:
            raise ConfigError(f"model.pretrained: {weights!r} is not an open_clip tag of "
                              f"{m.name} (its tags: {', '.join(tags) or 'none'})")
    try:
        image_layer, text_layer = bottleneck_layers(
            m.name, weights, (depths.image, depths.text), m.layer, m.image_layer, m.text_layer)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return ResolvedModel(weights, image_layer, text_layer, (depths.image, depths.text),
                         open_clip.get_model_config(m.name))


def results_fingerprint(
    m: ModelSettings, data: DataSettings, rm: ResolvedModel
) -> tuple[str, dict[str, Any]]:
    """Hash of everything that changes results, and what went into it: the
    resolved model, the method's settings, the input columns, the versions of
    the libraries that compute them and the engine's ``RESULTS_VERSION`` (not the
    source bytes: a comment changes nothing, a library upgrade may)."""
    parts = {
        "model": m.name,
        "model_config": rm.config,
        "weights": rm.weights,
        "image_layer": rm.image_layer,
        "text_layer": rm.text_layer,
        "steps": m.steps,
        "schedule": m.schedule,
        "precision": m.precision,
        "data": data.fingerprinted(),
        "libraries": library_versions(),
        "engine_results_version": RESULTS_VERSION,
        "schema_version": SCHEMA_VERSION,
    }
    return fingerprint(parts), parts


def provenance(m: ModelSettings, rm: ResolvedModel, fp: str, decode: str) -> dict[str, Any]:
    """The resolved values that produce a run's results: recorded in every part's
    metadata (each worker overwrites what it decides itself, e.g. ``batch_size``),
    the manifest and the summary. ``decode`` is the image decoding path (``data.decode``)."""
    return {"model": m.name, "weights": rm.weights, "image_layer": rm.image_layer,
            "text_layer": rm.text_layer, "steps": m.steps, "schedule": m.schedule,
            "precision": m.precision, "batch_size": m.batch_size, "decode": decode,
            **library_versions(),
            "engine_results_version": RESULTS_VERSION, "schema_version": SCHEMA_VERSION,
            "fingerprint": fp}
