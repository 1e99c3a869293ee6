"""nibt-audit: NIBT attributions for open_clip CLIP models, at dataset scale.

The public API: ``load_clip`` builds a model, ``NIBT(clip).attribute(images, tokens)``
returns an ``Attribution``, ``confidence`` gives the paper's metrics. Names load on
first use, so ``import pipeline.report`` (which needs no torch) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "NIBT": "pipeline.engine.nibt",
    "Attribution": "pipeline.engine.nibt",
    "Clip": "pipeline.engine.model",
    "UnsupportedModelError": "pipeline.engine.model",
    "load_clip": "pipeline.engine.model",
    "Confidence": "pipeline.engine.metrics",
    "confidence": "pipeline.engine.metrics",
    "merge_words": "pipeline.engine.words",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
