"""Which decoder a worker gets: threads or processes (as many as ``where`` decided), and
JPEGs on the device with ``data.decode=device``; built here only.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from typing import Any

from pipeline.config import DataSettings
from pipeline.decode.device import DeviceDecoder
from pipeline.decode.pixels import SplitPreprocess, fast_preprocess, split_preprocess
from pipeline.decode.pool import ProcessDecoder, ThreadDecoder
from pipeline.engine.model import Clip

log = logging.getLogger("nibt-audit")

Decoder = ThreadDecoder | ProcessDecoder | DeviceDecoder


@dataclass
class Decoding:
    """A worker's decoder and what its pixels still need on the device."""

    decoder: Decoder
    split: SplitPreprocess | None  # the normalisation left for the batch, or None


def build_decoder(clip: Clip, data: DataSettings, processes: int = 0,
                  threads: int | None = None, decode_threads: int | None = None) -> Decoding:
    """The decoder for ``clip``'s transform: ``processes`` > 0 decodes in that many
    processes, else in ``decode_threads`` threads (by default one per CPU the actor
    reserved but one beside a GPU, 2 on a CPU); with ``data.decode=device`` JPEGs go to
    the device. Pixels stop at uint8 where the transform allows: the batch is normalised
    on the device (``Decoding.split``)."""
    gpu = clip.device.type == "cuda"
    split = split_preprocess(clip.preprocess)
    fast = fast_preprocess(clip.preprocess) if data.decode != "exact" else None
    if data.decode != "exact" and fast is None:
        log.warning("data.decode=%s: the model's transform is not a resize and centre "
                    "crop; images are decoded exactly", data.decode)
    preprocess = fast or (split.image if split else clip.preprocess)
    draft = fast.draft_size if fast else None
    limits = (data.max_pixels, data.max_caption_chars)
    decoder: Decoder
    if processes > 0:
        decoder = ProcessDecoder(preprocess, *limits, processes, pin=gpu,
                                 tokenize=_picklable(clip.caption_encoder()), draft=draft)
    else:
        if decode_threads is None:
            decode_threads = max(2, int(threads or 2) - 1) if gpu else 2
        decoder = ThreadDecoder(preprocess, *limits, decode_threads, pin=gpu,
                                one_torch_thread=True, draft=draft)
    if data.decode == "device" and fast is not None:
        tokenize = clip.caption_encoder() if decoder.tokenizes else None
        decoder = DeviceDecoder(decoder, fast.geometry, *limits, clip.device, tokenize)
    return Decoding(decoder, split)


def _picklable(obj: Any) -> Any:
    """``obj`` if it pickles (to go to the decode processes), else None (an unusual
    tokenizer: captions are then tokenised in the worker itself)."""
    try:
        pickle.dumps(obj)
        return obj
    except Exception:
        return None
