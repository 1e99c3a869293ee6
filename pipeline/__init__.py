"""nibt-audit: NIBT attributions for open_clip CLIP models, at dataset scale.

The public API: ``load_clip`` builds a model, ``NIBT(clip).attribute(images, tokens)``
returns an ``Attribution``, ``confidence`` gives the paper's metrics.
"""

from pipeline.metrics import Confidence, confidence
from pipeline.model import Clip, UnsupportedModelError, load_clip
from pipeline.nibt import NIBT, Attribution
from pipeline.words import merge_words

__version__ = "0.1.0"

__all__ = [
    "NIBT",
    "Attribution",
    "Clip",
    "Confidence",
    "UnsupportedModelError",
    "__version__",
    "confidence",
    "load_clip",
    "merge_words",
]
