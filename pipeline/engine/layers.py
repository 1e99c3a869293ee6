"""Which block each tower's bottleneck sits before: one rule for every entry point.

In order: a layer the settings name (``image_layer`` / ``text_layer``, else
``layer``; negative counts from the top); the layers tuned for shipped weights,
read from their facts file (``weights/<model>.json``) and used only for exactly
those weights (same sha256); otherwise 0.75 of the tower's depth, the paper's
relative depth (9 of 12). Another model's tuned layers never apply.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Facts files of the shipped weights, by model name (``weights_sha256``,
#: ``image_layer``, ``text_layer``; written by ``pipeline.demo.train``).
FACTS = {"nibt-demo": Path(__file__).parent / "weights" / "nibt-demo.json"}


def resolve_layer(layer: int | None, depth: int, tower: str) -> int:
    """Block index in ``[0, depth)`` for ``layer`` (None: 0.75 of the depth)."""
    if layer is None:
        return round(0.75 * depth)  # the paper's 9 of 12, by relative depth
    resolved = layer + depth if layer < 0 else layer
    if not 0 <= resolved < depth:
        raise ValueError(
            f"{tower} layer {layer} is out of range for a {depth}-block tower "
            f"(0..{depth - 1}, or -{depth}..-1 from the top)"
        )
    return resolved


def tuned_layers(name: str, weights: str) -> dict[str, int]:
    """The layers chosen for shipped weights, when ``weights`` (an id such as
    ``sha256:<hex>``) are exactly those weights; else empty."""
    facts_file = FACTS.get(name)
    if facts_file is None or not facts_file.is_file():
        return {}
    facts = json.loads(facts_file.read_text())
    if weights != f"sha256:{facts.get('weights_sha256')}":
        return {}
    return {k: int(facts[k]) for k in ("image_layer", "text_layer") if k in facts}


def bottleneck_layers(
    name: str,
    weights: str,
    depths: tuple[int, int],
    layer: int | None = None,
    image_layer: int | None = None,
    text_layer: int | None = None,
) -> tuple[int, int]:
    """(image, text) block indices for model ``name`` with ``weights`` (an id as
    ``Clip.weights``) and towers of ``depths`` (image, text) blocks.

    Raises ``ValueError`` naming the setting (``model.layer``,
    ``model.image_layer`` or ``model.text_layer``) when a layer is out of range.
    """
    tuned = tuned_layers(name, weights)
    out = []
    for tower, own, depth in (("image", image_layer, depths[0]), ("text", text_layer, depths[1])):
        setting, value = (f"model.{tower}_layer", own) if own is not None else ("model.layer", layer)
        if value is None:
            value = tuned.get(f"{tower}_layer")
            setting = f"the tuned {tower}_layer of {name}'s shipped weights"
        try:
            out.append(resolve_layer(value, depth, tower))
        except ValueError as e:
            raise ValueError(f"{setting}: {name}: {e}") from None
    return out[0], out[1]
