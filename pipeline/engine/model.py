"""Load an open_clip CLIP model with everything the engine needs to know about it.

``load_clip`` wraps ``open_clip.create_model_and_transforms`` and
``open_clip.get_tokenizer``. Weights come from an open_clip tag (downloaded by
open_clip, so it needs a model hub), a local file, or an ``s3://`` URI fetched
through fsspec into a local cache; files load with safetensors or
``torch.load(weights_only=True)``, never by unpickling arbitrary objects.
``pretrained=None`` gives seeded random weights, identical in every process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.engine.towers import ImageTower, TextTower, UnsupportedModelError

#: Autocast dtypes the engine runs in. Not fp16: the engine takes gradients, and fp16's
#: underflow without loss scaling (bf16 has fp32's exponent range).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: The project's own model configurations, registered with open_clip on import.
MODEL_CONFIGS = Path(__file__).parent / "model_configs"
#: Weights the package ships, by model name: ``pretrained="shipped"`` loads them.
SHIPPED_WEIGHTS = {"nibt-demo": Path(__file__).parent / "weights" / "nibt-demo.safetensors"}

__all__ = [
    "Clip", "TowerDepths", "UnsupportedModelError", "WeightsError", "default_weights",
    "inspect_model", "load_clip", "resolve_weights",
]


def register_configs() -> None:
    import open_clip

    if "nibt-demo" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIGS)


def default_weights(name: str) -> str | None:
    """``"shipped"`` for models whose weights ship with the package, else None (random)."""
    return "shipped" if name in SHIPPED_WEIGHTS else None


@dataclass(frozen=True)
class TowerDepths:
    """Blocks in each tower of a model the engine can cut."""

    image: int
    text: int


def inspect_model(name: str) -> TowerDepths:
    """Check that the engine can cut ``name``'s towers and return their depths,
    without allocating weights: unsupported kinds are read from open_clip's model
    config (timm or Hugging Face towers, ResNets, which would also need their own
    downloads), the rest is built on torch's ``meta`` device and checked as
    ``load_clip`` would. Raises ``UnsupportedModelError`` naming the model and the
    reason, ``ValueError`` for a name open_clip does not know.
    """
    import open_clip

    register_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"{name!r} is not an open_clip model (see open_clip.list_models())")
    cfg = open_clip.get_model_config(name) or {}
    vision, text = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
    if vision.get("timm_model_name"):
        raise UnsupportedModelError(
            f"{name}: the image tower is the timm model {vision['timm_model_name']!r}; only "
            "open_clip VisionTransformer (class-token ViT) towers are supported"
        )
    if isinstance(vision.get("layers"), (list, tuple)):
        raise UnsupportedModelError(
            f"{name}: the image tower is a ResNet; only open_clip VisionTransformer "
            "(class-token ViT) towers are supported"
        )
    if text.get("hf_model_name"):
        raise UnsupportedModelError(
            f"{name}: the text tower is the Hugging Face model {text['hf_model_name']!r}; only "
            "the built-in causal CLIP text transformer is supported"
        )
    before = logging.root.manager.disable
    logging.disable(max(before, logging.WARNING))  # open_clip warns that no weights loaded
    try:
        with torch.device("meta"):
            model = open_clip.create_model(name, pretrained=None, device="meta")
    finally:
        logging.disable(before)
    return TowerDepths(ImageTower(model, name).depth, TextTower(model, name, 0).depth)


@dataclass
class CaptionEncoder:
    """Captions -> token ids, as open_clip's tokenizer: start-of-text, the word
    pieces, end-of-text, zero padding; a caption longer than the context keeps its
    first ``context - 2`` pieces, still ends in end-of-text, and is flagged."""

    tokenizer: Any
    context_length: int
    sot_id: int
    eot_id: int

    def __call__(self, captions: list[str]) -> tuple[np.ndarray, list[bool]]:
        """Token ids int64 [B, context_length] and, per caption, whether it was truncated."""
        ctx = self.context_length
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None or not hasattr(self.tokenizer, "sot_token_id"):
            ids = np.asarray(self.tokenizer(captions, context_length=ctx), dtype=np.int64)
            return ids, [False] * len(captions)
        out = np.zeros((len(captions), ctx), dtype=np.int64)
        truncated = []
        for i, caption in enumerate(captions):
            ids = encode(caption)
            truncated.append(len(ids) > ctx - 2)
            row = [self.sot_id, *ids[: ctx - 2], self.eot_id]
            out[i, : len(row)] = row
        return out, truncated


@dataclass
class Clip:
    """A frozen open_clip model, its preprocessing and tokenizer, cut into towers."""

    name: str
    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Any
    image: ImageTower
    text: TextTower
    device: torch.device
    precision: str
    weights: str  # what the weights are: "random(seed=0)", an open_clip tag, or "sha256:<hex>"
    sot_id: int
    eot_id: int
    preprocess_cfg: dict = field(default_factory=dict)

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Token ids [B, context_length] (truncated captions end in end-of-text)."""
        return self.encode_captions(captions)[0]

    def caption_encoder(self) -> CaptionEncoder:
        """Captions -> token ids without the model: picklable, for decode processes."""
        return CaptionEncoder(self.tokenizer, self.context_length, self.sot_id, self.eot_id)

    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Token ids [B, context_length] and, per caption, whether it was truncated
        (see ``CaptionEncoder``)."""
        ids, truncated = self.caption_encoder()(captions)
        return torch.from_numpy(ids), truncated

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the configured precision (no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def pieces(self, ids: list[int]) -> list[str]:
        """The tokenizer's word pieces for ``ids`` (BPE strings; '</w>' ends a word)."""
        dec = getattr(self.tokenizer, "decoder", None)
        if dec is None:
            return [str(i) for i in ids]
        cache = self.__dict__.setdefault("_pieces", {})  # per-token decoding, done once
        out = []
        for i in ids:
            s = cache.get(i)
            if s is None:
                s = cache[int(i)] = self._piece(dec, int(i))
            out.append(s)
        return out

    def _piece(self, dec: dict, i: int) -> str:
        s = dec.get(i, f"<{i}>")
        byte_decoder = getattr(self.tokenizer, "byte_decoder", {})
        if byte_decoder and i not in set(getattr(self.tokenizer, "all_special_ids", ())):
            raw = bytes(byte_decoder.get(c, ord("?")) for c in s.replace("</w>", ""))
            s = raw.decode("utf-8", errors="replace") + ("</w>" if s.endswith("</w>") else "")
        return s


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class WeightsError(ValueError):
    """Weights that do not match their expected sha256."""


#: Remote weights -> a local copy: ``pipeline.io.weights.weights_fetcher`` gives one for
#: a storage configuration (the engine itself reaches no storage).
Fetch = Callable[[str], "str | os.PathLike[str]"]


def resolve_weights(
    pretrained: str | None,
    name: str = "",
    sha256: str | None = None,
    fetch: Fetch | None = None,
) -> tuple[str | None, str]:
    """Map ``pretrained`` to (what open_clip loads, a stable weights id).

    ``"shipped"`` is the package's own weights for ``name``; a tag passes
    through; a local path, or a remote URI that ``fetch`` copies to a local
    file, becomes a file whose sha256 identifies the weights (a renamed or
    re-uploaded file is the same weights, a changed file is not). When
    ``sha256`` is given, a file that does not match it is refused (and a fetched
    copy is dropped).
    """
    if pretrained is None or str(pretrained).lower() in ("", "none", "null", "random"):
        return None, "random"
    p = str(pretrained)
    if p == "shipped":
        if name not in SHIPPED_WEIGHTS:
            raise ValueError(f"no shipped weights for model {name!r} (have: {sorted(SHIPPED_WEIGHTS)})")
        local = SHIPPED_WEIGHTS[name]
        if not local.is_file():
            raise FileNotFoundError(f"shipped weights missing: {local} (run `make demo-model`)")
    elif "://" in p:
        if fetch is None:
            raise ValueError(f"weights {p} are remote: pass fetch= "
                             "(pipeline.io.weights.weights_fetcher(storage))")
        local = Path(fetch(p))
    elif os.path.sep in p or p.endswith((".pt", ".pth", ".bin", ".safetensors")):
        local = Path(p).expanduser()
        if not local.is_file():
            raise FileNotFoundError(f"weights file not found: {p}")
    else:
        if sha256:
            raise WeightsError(f"sha256 can only be checked for weight files, not the tag {p!r}")
        return p, p
    digest = _sha256(local)
    if sha256 and digest != sha256.lower().removeprefix("sha256:"):
        if "://" in p:
            local.unlink(missing_ok=True)
        raise WeightsError(f"weights {p} have sha256 {digest}, expected {sha256}")
    return str(local), f"sha256:{digest}"


def load_clip(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    *,
    seed: int = 0,
    sha256: str | None = None,
    fetch: Fetch | None = None,
) -> Clip:
    """Build ``name`` with ``pretrained`` weights, frozen and in eval mode.

    ``precision`` is the autocast dtype used when the engine runs the towers
    (``fp32`` or ``bf16``; fp16 is refused); the stored weights stay float32 so
    attributions accumulate in float32. Raises ``UnsupportedModelError`` naming
    the model and the reason for towers the engine cannot cut, and
    ``WeightsError`` for a file that does not match ``sha256``. Remote weights
    (``s3://...``) need ``fetch`` (see ``resolve_weights``). Checkpoints load
    with safetensors or ``torch.load(weights_only=True)``: a pickle that would
    run code is refused.
    """
    import open_clip

    if precision == "fp16":
        raise ValueError("precision fp16 is refused: its gradients underflow without loss "
                         "scaling; use bf16 or fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    register_configs()
    dev = torch.device(device)
    source, weights = resolve_weights(pretrained, name, sha256, fetch)
    if source is None:
        weights = f"random(seed={seed})"
    with _seeded(seed):
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=source, device=dev, weights_only=True
        )
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    # Frozen: the engine differentiates with respect to bottleneck states only.
    # Under bf16 autocast the weights stay requires_grad=True, because
    # autocast caches its low-precision copies only for such leaves (without the
    # cache every chunk re-casts every weight); autograd.grad(..., inputs=state)
    # still computes no weight gradient.
    for p in model.parameters():
        p.requires_grad_(precision != "fp32")
    sot = int(getattr(tokenizer, "sot_token_id", 49406))
    eot = int(getattr(tokenizer, "eot_token_id", 49407))
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    return Clip(
        name=name,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        image=ImageTower(model, name),
        text=TextTower(model, name, eot),
        device=dev,
        precision=precision,
        weights=weights,
        sot_id=sot,
        eot_id=eot,
        preprocess_cfg={k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()},
    )


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch for random initialisation without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
