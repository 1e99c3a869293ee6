"""Attribution quality of NIBT on the demo model, against the scenes' ground truth.

``python -m pipeline.demo.evaluate [--out results.json]`` prints markdown tables
and exits 1 if the bar (below) is missed.

Definitions (image maps are [gh, gw] patch grids; patch ``(i, j)`` covers pixels
``[8j, 8j+8) x [8i, 8i+8)`` and its centre is the point ``(8j+4, 8i+4)``; a box
``[x0, y0, x1, y1]`` covers ``x0 <= x < x1``, ``y0 <= y < y1``):

* pointing game: a hit when the centre of the highest-attributed patch (signed
  map, argmax) lies in the named object's box: ``x0 <= cx < x1`` and
  ``y0 <= cy < y1``. Every object box is >= 8 px a side, so every box holds at
  least one patch centre.
* mass in box: the positive part of the map, each patch weighted by the share
  of its pixels inside the box, over the map's total positive mass.
* random patch: the expected pointing of a uniformly random patch (share of
  patch centres in the box) and the box's share of the image area.
* centre prior: the patches nearest the image centre (four tie on an even grid;
  expected hit over the tie) and, for mass, a Gaussian map (sigma = a quarter of
  the image side) centred on the image.
* gradient x input: ``h * grad`` at lambda = 1 at the same layer
  (``NIBT(steps=1, schedule="uniform")``).
* text: over the caption's words (BPE pieces merged with
  ``pipeline.engine.words.merge_words``; start/end-of-text left out), the share of the
  positive word attribution on the words that name the object, and how often the
  top word names it; the start/end-of-text shares are of all positive mass.
* confidence drop / increase: ``pipeline.engine.metrics.confidence`` on the same pairs.

The bar (single named object): NIBT pointing >= 80% and >= 40 points above the
centre prior; with distractors (2-3 objects, one named) >= 15 points above the
centre prior; NIBT above gradient x input in both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.demo.scenes import Pair, Settings, make_pair, make_twins
from pipeline.demo.train import IMAGE_LAYER, TEXT_LAYER, pixels, twin_accuracy
from pipeline.devtools.machine import machine
from pipeline.engine.metrics import confidence
from pipeline.engine.model import SHIPPED_WEIGHTS, Clip, load_clip
from pipeline.engine.nibt import NIBT, Attribution
from pipeline.engine.words import merge_words

FACTS = SHIPPED_WEIGHTS["nibt-demo"].with_suffix(".json")


# ------------------------------------------------------------ box geometry
def patch_size(grid: tuple[int, int], image_size: int) -> int:
    """Pixels per patch side (square patches on a square image)."""
    if image_size % grid[0] or grid[0] != grid[1]:
        raise ValueError(f"grid {grid} does not tile a {image_size}px image")
    return image_size // grid[0]


def centres_in_box(box: Sequence[int], grid: tuple[int, int], image_size: int) -> np.ndarray:
    """bool [gh, gw]: whether each patch centre lies in ``box`` (half-open)."""
    p = patch_size(grid, image_size)
    c = np.arange(grid[0]) * p + p / 2
    x0, y0, x1, y1 = box
    inx = (c >= x0) & (c < x1)
    iny = (c >= y0) & (c < y1)
    return iny[:, None] & inx[None, :]


def box_fraction(box: Sequence[int], grid: tuple[int, int], image_size: int) -> np.ndarray:
    """float [gh, gw]: share of each patch's pixels inside ``box``."""
    p = patch_size(grid, image_size)
    lo = np.arange(grid[0]) * p
    x0, y0, x1, y1 = box
    fx = np.clip(np.minimum(lo + p, x1) - np.maximum(lo, x0), 0, p) / p
    fy = np.clip(np.minimum(lo + p, y1) - np.maximum(lo, y0), 0, p) / p
    return fy[:, None] * fx[None, :]


def pointing_hit(amap: np.ndarray, box: Sequence[int], image_size: int) -> bool:
    """Pointing game: the highest-attributed patch's centre lies in ``box``."""
    i, j = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return bool(centres_in_box(box, amap.shape, image_size)[i, j])


def mass_in_box(amap: np.ndarray, box: Sequence[int], image_size: int) -> float:
    """Share of the map's positive mass inside ``box`` (patches weighted by overlap)."""
    pos = np.clip(amap, 0, None)
    total = pos.sum()
    if total <= 0:
        return 0.0
    return float((pos * box_fraction(box, amap.shape, image_size)).sum() / total)


def centre_prior_hit(box: Sequence[int], grid: tuple[int, int], image_size: int) -> float:
    """Expected pointing hit of the patch(es) nearest the image centre (ties shared)."""
    p = patch_size(grid, image_size)
    c = np.arange(grid[0]) * p + p / 2 - image_size / 2
    d = c[:, None] ** 2 + c[None, :] ** 2
    near = d == d.min()
    return float(centres_in_box(box, grid, image_size)[near].mean())


def centre_prior_map(grid: tuple[int, int], image_size: int) -> np.ndarray:
    """Gaussian centre prior over the patch grid (sigma = image_size / 4)."""
    p = patch_size(grid, image_size)
    c = np.arange(grid[0]) * p + p / 2 - image_size / 2
    return np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * (image_size / 4) ** 2))


# --------------------------------------------------------------- data sets
@dataclass
class Sample:
    """Pairs with their model inputs."""

    pairs: list[Pair]
    images: torch.Tensor
    tokens: torch.Tensor


def sample(clip: Clip, pairs: list[Pair]) -> Sample:
    return Sample(pairs, pixels([p.image for p in pairs], clip), clip.tokenize([p.caption for p in pairs]))


def single_pairs(seed: int, n: int, st: Settings) -> list[Pair]:
    """One object, named; no mark, no shortcut word."""
    return [make_pair(seed, i, st, n_objects=1, word=False, mark=False) for i in range(n)]


def distractor_pairs(seed: int, n: int, st: Settings) -> list[Pair]:
    """Two or three objects, one named; no mark, no shortcut word."""
    return [
        make_pair(seed, 1_000_000 + i, st, n_objects=2 + i % 2, n_named=1, word=False, mark=False)
        for i in range(n)
    ]


# ------------------------------------------------------------------ scoring
def attribute(engine: NIBT, s: Sample, chunk: int = 64) -> Attribution:
    """``engine.attribute`` in chunks, concatenated."""
    parts = [
        engine.attribute(s.images[k : k + chunk], s.tokens[k : k + chunk])
        for k in range(0, len(s.pairs), chunk)
    ]
    return Attribution(*(torch.cat([getattr(p, f) for p in parts]) for f in (
        "image", "image_cls", "text", "score", "image_embeds", "text_embeds", "eot"
    )))


def image_scores(maps: np.ndarray, pairs: list[Pair], size: int) -> dict:
    """Pointing and mass-in-box of maps [N, gh, gw] against each pair's first box."""
    hits = [pointing_hit(m, p.boxes[0], size) for m, p in zip(maps, pairs)]
    mass = [mass_in_box(m, p.boxes[0], size) for m, p in zip(maps, pairs)]
    return {"pointing": float(np.mean(hits)), "mass_in_box": float(np.mean(mass))}


def baseline_scores(pairs: list[Pair], grid: tuple[int, int], size: int) -> dict:
    """Random-patch and centre-prior scores."""
    cmap = centre_prior_map(grid, size)
    rnd_p = [centres_in_box(p.boxes[0], grid, size).mean() for p in pairs]
    rnd_m = [box_fraction(p.boxes[0], grid, size).mean() for p in pairs]
    cen_p = [centre_prior_hit(p.boxes[0], grid, size) for p in pairs]
    cen_m = [mass_in_box(cmap, p.boxes[0], size) for p in pairs]
    return {
        "random": {"pointing": float(np.mean(rnd_p)), "mass_in_box": float(np.mean(rnd_m))},
        "centre": {"pointing": float(np.mean(cen_p)), "mass_in_box": float(np.mean(cen_m))},
    }


def words_of(clip: Clip, tokens: torch.Tensor, eot: int, values: np.ndarray, caption: str):
    """(word, summed value) per caption word; checked against the caption's words."""
    ids = tokens[: eot + 1].tolist()
    words = merge_words(clip.pieces(ids), values[: eot + 1].tolist(), lower=True)
    if [w for w, _ in words] != caption.lower().split():
        raise ValueError(f"word pieces do not rebuild the caption {caption!r}: {words}")
    return words


def text_scores(clip: Clip, attr: Attribution, s: Sample) -> dict:
    """Shares of positive text attribution: object words, filler, start/end-of-text."""
    text = attr.text.numpy()
    obj_share, top_obj, sot, eot_share, base = [], [], [], [], []
    for i, p in enumerate(s.pairs):
        e = int(attr.eot[i])
        pos = np.clip(text[i, : e + 1], 0, None)
        total = pos.sum()
        sot.append(pos[0] / total if total > 0 else 0.0)
        eot_share.append(pos[e] / total if total > 0 else 0.0)
        words = words_of(clip, s.tokens[i], e, text[i], p.caption)
        named = {j for idx in p.word_index for j in idx}
        vals = np.array([v for _, v in words])
        wpos = np.clip(vals, 0, None)
        in_obj = np.array([j in named for j in range(len(words))])
        obj_share.append(wpos[in_obj].sum() / wpos.sum() if wpos.sum() > 0 else 0.0)
        top_obj.append(bool(in_obj[int(np.argmax(vals))]))
        base.append(in_obj.mean())
    return {
        "object_word_share": float(np.mean(obj_share)),
        "top_word_is_object": float(np.mean(top_obj)),
        "start_of_text_share": float(np.mean(sot)),
        "end_of_text_share": float(np.mean(eot_share)),
        "object_words_fraction_of_words": float(np.mean(base)),
    }


def conf_scores(clip: Clip, attr: Attribution, s: Sample) -> dict:
    c = confidence(clip, s.images, s.tokens, attr)
    return {k: float(getattr(c, k).mean()) for k in (
        "img_conf_drop", "img_conf_incr", "txt_conf_drop", "txt_conf_incr"
    )}


def mark_patches(st: Settings, grid: tuple[int, int]) -> np.ndarray:
    """bool [gh, gw]: the patches the mark's pixels touch."""
    return box_fraction(st.mark_box(), grid, st.image_size) > 0


def shortcut_scores(clip: Clip, engine: NIBT, seed: int, n: int, st: Settings) -> dict:
    """Image attribution on the mark's patches, and text attribution on the word.

    Three cases of the same held-out scenes: marked image + caption with the word;
    the unmarked twin image + the same caption; marked image + caption without it.
    """
    twins = [make_twins(seed, i, st) for i in range(n)]
    grid = clip.image.grid
    corner = mark_patches(st, grid)
    out = {
        "twin_accuracy": twin_accuracy(clip, twins),
        "patches": int(corner.sum()),
        "grid_patches": int(corner.size),
    }
    cases = {
        "marked_with_word": [(m, m) for m, _ in twins],
        "unmarked_with_word": [(u, m) for m, u in twins],
        "marked_without_word": [(m, u) for m, u in twins],
    }
    for name, combos in cases.items():
        imgs = pixels([a.image for a, _ in combos], clip)
        toks = clip.tokenize([b.caption for _, b in combos])
        attr = attribute(engine, Sample([b for _, b in combos], imgs, toks))
        maps = attr.image.numpy()
        pos = np.clip(maps, 0, None)
        share = (pos * corner).sum((1, 2)) / np.maximum(pos.sum((1, 2)), 1e-12)
        top = corner.reshape(-1)[maps.reshape(len(maps), -1).argmax(1)]
        row = {"mark_patch_share": float(share.mean()), "mark_patch_is_top": float(top.mean())}
        if combos[0][1].has_word:
            vals = []
            for i, (_, b) in enumerate(combos):
                words = words_of(clip, toks[i], int(attr.eot[i]), attr.text[i].numpy(), b.caption)
                vals.append(next(v for w, v in words if w == st.word.lower()))
            row["word_attribution"] = float(np.mean(vals))
        out[name] = row
    return out


# ------------------------------------------------------------------- driver
def evaluate(
    clip: Clip,
    image_layer: int,
    text_layer: int,
    n: int = 200,
    n_shortcut: int = 100,
    seed: int = 2,
    steps: int = 10,
    settings: Settings | None = None,
) -> dict:
    """All scores, as a dict (see the module docstring)."""
    st = settings or Settings()
    size = st.image_size
    grid = clip.image.grid
    sets = {
        "single": sample(clip, single_pairs(seed, n, st)),
        "distractors": sample(clip, distractor_pairs(seed, n, st)),
    }
    res: dict = {"n": n, "seed": seed, "steps": steps, "image_layer": image_layer,
                 "text_layer": text_layer, "image": {}, "text": {}, "baselines": {}}
    for name, s in sets.items():
        res["baselines"][name] = baseline_scores(s.pairs, grid, size)
    # The image map depends only on the image layer and the text map only on the
    # text layer (each is scored against the other tower's full embedding), so
    # one run per depth covers both sweeps.
    di, dt = clip.image.depth, clip.text.depth
    for layer in range(max(di, dt)):
        for method, k in (("nibt", steps), ("gxi", 1)):
            eng = NIBT(clip, image_layer=min(layer, di - 1), text_layer=min(layer, dt - 1), steps=k)
            img_row, txt_row = {}, {}
            for name, s in sets.items():
                attr = attribute(eng, s)
                conf = conf_scores(clip, attr, s)
                img_row[name] = image_scores(attr.image.numpy(), s.pairs, size)
                pos_cls = attr.image_cls.clamp(min=0)
                total = attr.image.clamp(min=0).sum((1, 2)) + pos_cls
                img_row[name]["cls_share"] = float((pos_cls / total.clamp(min=1e-12)).mean())
                img_row[name].update({k: v for k, v in conf.items() if k.startswith("img")})
                txt_row[name] = text_scores(clip, attr, s)
                txt_row[name].update({k: v for k, v in conf.items() if k.startswith("txt")})
            if layer < di:
                res["image"][f"{method}@{layer}"] = img_row
            if layer < dt:
                res["text"][f"{method}@{layer}"] = txt_row
    eng = NIBT(clip, image_layer=image_layer, text_layer=text_layer, steps=steps)
    res["shortcut"] = shortcut_scores(clip, eng, seed, n_shortcut, st)
    res["bar"] = check_bar(res)
    return res


def check_bar(res: dict) -> dict:
    """The issue's bar, as named booleans."""
    li = res["image_layer"]
    nibt, gxi = res["image"][f"nibt@{li}"], res["image"][f"gxi@{li}"]
    cen = {k: v["centre"]["pointing"] for k, v in res["baselines"].items()}
    s, d = nibt["single"]["pointing"], nibt["distractors"]["pointing"]
    return {
        "single_pointing_ge_80": s >= 0.80,
        "single_ge_centre_plus_40": s >= cen["single"] + 0.40,
        "distractors_ge_centre_plus_15": d >= cen["distractors"] + 0.15,
        "single_above_gxi": s > gxi["single"]["pointing"],
        "distractors_above_gxi": d > gxi["distractors"]["pointing"],
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _method_layer(key: str, default_layer: int) -> tuple[str, str]:
    """``"nibt@3"`` -> ("NIBT", "3*"): the method's name and its layer, starred when default."""
    method, layer = key.split("@")
    name = {"nibt": "NIBT", "gxi": "gradient x input"}[method]
    return name, layer + ("*" if int(layer) == default_layer else "")


def tables(res: dict) -> str:
    """The results as markdown tables."""
    li, lt = res["image_layer"], res["text_layer"]
    out = [
        f"Image side: pointing game and positive mass in the named object's box, % "
        f"(n = {res['n']} per set; text layer {lt}; * = default layer).",
        "",
        "| method | layer | single: pointing | single: mass in box | distractors: pointing "
        "| distractors: mass in box | class-token share | img conf drop | img conf incr |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in res["image"].items():
        name, layer = _method_layer(key, li)
        s, d = row["single"], row["distractors"]
        out.append(
            f"| {name} | {layer} | {_pct(s['pointing'])} | {_pct(s['mass_in_box'])} | "
            f"{_pct(d['pointing'])} | {_pct(d['mass_in_box'])} | {_pct(s['cls_share'])} | "
            f"{s['img_conf_drop']:.3f} | {s['img_conf_incr']:.1f} |"
        )
    for base in ("random", "centre"):
        s, d = res["baselines"]["single"][base], res["baselines"]["distractors"][base]
        label = {"random": "random patch", "centre": "centre prior"}[base]
        out.append(
            f"| {label} | - | {_pct(s['pointing'])} | {_pct(s['mass_in_box'])} | "
            f"{_pct(d['pointing'])} | {_pct(d['mass_in_box'])} | - | - | - |"
        )
    out += [
        "",
        f"Text side, single named object: shares of positive attribution, % (image layer {li}).",
        "",
        "| method | layer | object words (of word mass) | top word names the object "
        "| start-of-text (of all) | end-of-text (of all) | txt conf drop | txt conf incr |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, row in res["text"].items():
        name, layer = _method_layer(key, lt)
        s = row["single"]
        out.append(
            f"| {name} | {layer} | {_pct(s['object_word_share'])} | "
            f"{_pct(s['top_word_is_object'])} | {_pct(s['start_of_text_share'])} | "
            f"{_pct(s['end_of_text_share'])} | {s['txt_conf_drop']:.3f} | {s['txt_conf_incr']:.1f} |"
        )
    base = next(iter(res["text"].values()))["single"]["object_words_fraction_of_words"]
    out.append(f"| uniform over words | - | {_pct(base)} | - | - | - | - | - |")
    sc = res["shortcut"]
    out += [
        "",
        f"Shortcut (NIBT at layers {li}/{lt}; twin accuracy {_pct(sc['twin_accuracy'])}%; "
        f"mark patches: {sc['patches']} of {sc['grid_patches']}).",
        "",
        "| image / caption | positive image mass on mark patch(es), % | mark patch is top, % "
        "| attribution on the word |",
        "|---|---|---|---|",
    ]
    for case, label in (
        ("marked_with_word", "marked / with word"),
        ("unmarked_with_word", "unmarked twin / with word"),
        ("marked_without_word", "marked / without word"),
    ):
        r = sc[case]
        word = f"{r['word_attribution']:+.4f}" if "word_attribution" in r else "-"
        out.append(
            f"| {label} | {_pct(r['mark_patch_share'])} | {_pct(r['mark_patch_is_top'])} | {word} |"
        )
    out += ["", "Bar: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in res["bar"].items())]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line; returns 1 when the bar is missed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="shipped", help="'shipped' or a weights file")
    p.add_argument("--n", type=int, default=200, help="pairs per set")
    p.add_argument("--n-shortcut", type=int, default=100)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--image-layer", type=int, default=None)
    p.add_argument("--text-layer", type=int, default=None)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    facts = json.loads(FACTS.read_text()) if FACTS.is_file() else {}
    li = a.image_layer if a.image_layer is not None else facts.get("image_layer", IMAGE_LAYER)
    lt = a.text_layer if a.text_layer is not None else facts.get("text_layer", TEXT_LAYER)
    clip = load_clip("nibt-demo", a.weights)
    t0 = time.perf_counter()
    res = evaluate(clip, li, lt, n=a.n, n_shortcut=a.n_shortcut, seed=a.seed, steps=a.steps)
    res["weights"] = clip.weights
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["machine"] = machine("python -m pipeline.demo.evaluate")
    print(tables(res))
    print(f"\n({res['seconds']} s)")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if all(res["bar"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
