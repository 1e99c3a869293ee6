"""nibt-audit: NIBT attributions for open_clip CLIP models, at dataset scale.

The public API: ``load_clip`` builds a model, ``NIBT(clip).attribute(images, tokens)``
returns an ``Attribution``, ``confidence`` gives the paper's metrics. Names load on
first use, so ``import pipeline.report`` (which needs no torch) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "NIBT": "pipeline.nibt",
    "Attribution": "pipeline.nibt",
    "Clip": "pipeline.model",
    "UnsupportedModelError": "pipeline.model",
    "load_clip": "pipeline.model",
    "Confidence": "pipeline.metrics",
    "confidence": "pipeline.metrics",
    "merge_words": "pipeline.words",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
