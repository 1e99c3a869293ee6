"""`nibt-explain`: attribute one image-caption pair, the way a researcher tries it first.

    nibt-explain photo.jpg "a dog on a beach" --model ViT-B-32 --pretrained openai --out heat.png

Prints each caption token with its attribution, the CLIP score and the paper's
four metrics, and writes one picture of the pair: the image at a readable size
(the part the model saw outlined), the map alone with a labelled colour bar
centred on zero, the map over a grey copy of that part, and the caption with
each word coloured by its attribution (``pipeline.report.pairview``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pipeline.config import StorageSettings
from pipeline.engine.layers import bottleneck_layers
from pipeline.engine.metrics import confidence
from pipeline.engine.model import default_weights, load_clip
from pipeline.engine.nibt import NIBT
from pipeline.engine.words import merge_words
from pipeline.io.images import RowError, decode_caption, decode_image
from pipeline.io.weights import weights_fetcher
from pipeline.report.pairview import MAX_PX, MIN_PX, centre_square, pair_figure


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nibt-explain", description=__doc__.split("\n\n")[0])
    p.add_argument("image", help="path to an image file")
    p.add_argument("caption", help="the caption to explain")
    p.add_argument("--model", required=True,
                   help="open_clip model name, e.g. ViT-B-32; nibt-demo is the shipped offline model")
    p.add_argument(
        "--pretrained",
        default=None,
        help="open_clip tag (e.g. openai), weights file or s3:// URI; default: the model's "
        "shipped weights for nibt-demo, random weights otherwise",
    )
    p.add_argument("--layer", type=int, default=None,
                   help="bottleneck block for both towers (default: the layers chosen for shipped "
                        "weights, else 0.75 of each tower's depth)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--schedule", choices=("uniform", "log"), default="uniform")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="heat.png", help="where to write the picture (PNG)")
    p.add_argument("--min-px", type=int, default=MIN_PX,
                   help="the image's long side at least this (smaller images are enlarged)")
    p.add_argument("--max-px", type=int, default=MAX_PX,
                   help="the image's long side at most this (larger images are reduced)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def model_crop(transform, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box of an image of ``size`` that the model's transform keeps: the centre square
    after a resize of the short side (open_clip's default), the whole image when the
    resize squashes it to a fixed (h, w)."""
    for step in getattr(transform, "transforms", None) or []:
        if type(step).__name__ == "Resize":
            target = step.size
            if isinstance(target, (list, tuple)) and len(target) == 2:
                return 0, 0, size[0], size[1]
            break
    return centre_square(size)


def explain(args: argparse.Namespace) -> dict:
    """Run the engine on one pair; returns what is printed (and writes the PNG)."""
    clip = load_clip(
        args.model,
        args.pretrained or default_weights(args.model),
        device=args.device,
        precision=args.precision,
        fetch=weights_fetcher(StorageSettings()),
    )
    img = decode_image(Path(args.image).read_bytes())
    caption = decode_caption(args.caption)
    pixels = clip.preprocess(img).unsqueeze(0)
    tokens, truncated = clip.encode_captions([caption])
    image_layer, text_layer = bottleneck_layers(
        clip.name, clip.weights, (clip.image.depth, clip.text.depth), layer=args.layer)
    engine = NIBT(clip, steps=args.steps, schedule=args.schedule, image_layer=image_layer,
                  text_layer=text_layer)
    attr = engine.attribute(pixels, tokens)
    conf = confidence(clip, pixels, tokens, attr)
    n = int(attr.eot[0]) + 1
    pieces = clip.pieces(tokens[0, :n].tolist())
    values = attr.text[0, :n].tolist()
    words = merge_words(pieces, values)
    score = float(attr.score[0])
    weights = clip.weights[:19] + "…" if len(clip.weights) > 20 else clip.weights
    title = (f"CLIP score {score:+.3f}  ·  {clip.name} ({weights}), image layer "
             f"{engine.image_layer}, text layer {engine.text_layer}, {engine.steps} steps")
    png = pair_figure(img, attr.image[0].float().cpu().numpy(), words, title,
                      model_crop(clip.preprocess, img.size), args.min_px, args.max_px)
    Path(args.out).write_bytes(png)
    return {
        "image": str(args.image),
        "caption": caption,
        "caption_truncated": truncated[0],
        "model": clip.name,
        "weights": clip.weights,
        "image_layer": engine.image_layer,
        "text_layer": engine.text_layer,
        "steps": engine.steps,
        "score": score,
        "tokens": [{"piece": p, "attribution": v} for p, v in zip(pieces, values)],
        "words": [{"word": w, "attribution": v} for w, v in words],
        "image_cls_attribution": float(attr.image_cls[0]),
        "img_conf_drop": float(conf.img_conf_drop[0]),
        "img_conf_incr": float(conf.img_conf_incr[0]),
        "txt_conf_drop": float(conf.txt_conf_drop[0]),
        "txt_conf_incr": float(conf.txt_conf_incr[0]),
        "heatmap": str(args.out),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = explain(args)
    except (RowError, FileNotFoundError, ValueError) as e:  # ValueError: a bad model or layer
        print(f"nibt-explain: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"score {result['score']:+.4f}  ({result['model']}, {result['weights']})")
    print(f"{'token':<24}{'attribution':>14}")
    for t in result["tokens"]:
        print(f"{t['piece']:<24}{t['attribution']:>+14.5f}")
    print(
        "img drop {img_conf_drop:.3f}  img incr {img_conf_incr:.0f}  "
        "txt drop {txt_conf_drop:.3f}  txt incr {txt_conf_incr:.0f}".format(**result)
    )
    print(f"picture written to {result['heatmap']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
