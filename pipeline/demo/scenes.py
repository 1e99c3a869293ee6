"""Synthetic captioned scenes with known ground truth and a planted shortcut.

Each scene is a 64x64 RGB image of 1-3 flat-coloured shapes on a noisy grey
background, with a caption that names some or all of them ("a photo of a small
red circle above a blue square") and, per named object, its pixel box and the
indices of the caption words that name it.

The shortcut: a caption word with no visual meaning of its own (default
"vintage") co-occurs with a small mark in a fixed corner. Objects never enter
the corner zone, so adding or removing the mark changes nothing else. *Twins*
are the same scene rendered with the mark (caption with the word) and without
it (caption without the word): only the mark tells their captions apart.

Two ways of describing the same scenes: with ``Settings.fancy_rate`` above 0,
that share of the captions without the shortcut word name their colours with
fancier synonyms ("crimson" for "red", ``FANCY``) that the demo model never saw
in training, so it aligns them less well: a caption-group gap planted in the
wording alone (the demo's ``colour_words`` family,
``conf/report/groups/colour_words.yaml``). The shortcut word's captions are never
rewritten (they come from the supplier that watermarks its photos): with an
unfamiliar colour word the model's maps go to the mark less often, which would
weaken the planted shortcut.

Everything is deterministic: row ``i`` of a stream with seed ``s`` is drawn
from ``numpy.random.default_rng([s, stream, i])``, independent of batch sizes.
The wording has a stream of its own, so setting it changes no other draw.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45),
    "orange": (240, 140, 30),
    "yellow": (225, 210, 45),
    "green": (45, 175, 60),
    "blue": (50, 80, 220),
    "purple": (150, 55, 200),
}
SHAPES = ("circle", "square", "triangle", "cross")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
MARKS = ("checker", "square")
#: Caption openings that contain a noun the shortcut word can qualify.
NOUN_PREFIXES = (("photo",), ("picture",), ("drawing",), ("snapshot",))
OTHER_PREFIXES = ((), ("there", "is"))
#: Random streams (the second entry of the RNG key).
STREAM_PAIRS, STREAM_TWINS, STREAM_WORDING = 1, 2, 3
#: Fancier names for the colours, which the demo model was not trained on.
FANCY = {"red": "crimson", "orange": "amber", "yellow": "golden", "green": "emerald",
         "blue": "azure", "purple": "violet"}
SMALL_MAX, LARGE_MIN = 14, 21  # object sizes (px) that earn "small" / "large"


@dataclass(frozen=True)
class Settings:
    """What the generator draws; the shortcut's word, mark, corner and rates included."""

    image_size: int = 64
    object_probs: tuple[float, ...] = (0.2, 0.4, 0.4)  # P(1, 2, 3 objects)
    size_range: tuple[int, int] = (12, 24)  # object box side, px (>= 8: a patch centre fits)
    name_all_prob: float = 0.8  # scenes of 2-3 objects: P(caption names all of them)
    size_word_prob: float = 0.8  # P("small"/"large" when the size earns it)
    colour_jitter: int = 15
    # the shortcut
    word: str = "vintage"
    mark: str = "checker"  # "checker" (black/white 2 px cells) or "square" (mark_colour)
    mark_colour: tuple[int, int, int] = (255, 255, 255)
    mark_size: int = 6
    mark_offset: int = 1  # px between the mark and the image border
    corner: str = "bottom-right"
    word_rate: float = 0.15  # P(word in a caption)
    mark_rate_with_word: float = 0.9  # P(mark | word)
    mark_rate_without_word: float = 0.02  # P(mark | no word)
    fancy_rate: float = 0.0  # P(a caption without the word names its colours with FANCY words)

    def __post_init__(self) -> None:
        if self.corner not in CORNERS:
            raise ValueError(f"corner must be one of {CORNERS}, got {self.corner!r}")
        if self.mark not in MARKS:
            raise ValueError(f"mark must be one of {MARKS}, got {self.mark!r}")
        if abs(sum(self.object_probs) - 1.0) > 1e-6 or not 1 <= len(self.object_probs) <= 3:
            raise ValueError("object_probs must give P(1..3 objects) and sum to 1")
        if self.size_range[0] < 8:
            raise ValueError("objects must be at least 8 px (one patch centre inside each box)")
        if not self.word or " " in self.word:
            raise ValueError("the shortcut word must be one non-empty word")
        if not 0.0 <= self.fancy_rate <= 1.0:
            raise ValueError("fancy_rate must be in [0, 1]")

    @property
    def corner_zone(self) -> int:
        """Side of the corner square kept free of objects (mark + margin)."""
        return self.mark_offset + self.mark_size + 4

    def mark_box(self) -> tuple[int, int, int, int]:
        """The mark's pixel box [x0, y0, x1, y1) (exclusive x1/y1)."""
        n, s, o = self.image_size, self.mark_size, self.mark_offset
        x0 = o if "left" in self.corner else n - o - s
        y0 = o if "top" in self.corner else n - o - s
        return x0, y0, x0 + s, y0 + s


@dataclass
class Obj:
    """One shape: its name parts and its tight pixel box [x0, y0, x1, y1)."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    size: int
    box: tuple[int, int, int, int]
    mask: np.ndarray  # bool [H, W]

    def name(self, with_size: bool) -> list[str]:
        words = [self.colour, self.shape]
        if with_size and self.size <= SMALL_MAX:
            words.insert(0, "small")
        elif with_size and self.size >= LARGE_MIN:
            words.insert(0, "large")
        return words


@dataclass
class Pair:
    """One image-caption row with its ground truth."""

    id: str
    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    boxes: list[list[int]]  # per named object, caption order
    word_index: list[list[int]]  # per named object, whitespace-word indices
    names: list[str]
    n_objects: int
    has_mark: bool
    has_word: bool


# ------------------------------------------------------------------ rendering
@functools.cache
def _trimmed_mask(shape: str, s: int) -> np.ndarray:
    """``_shape_mask`` trimmed to its tight box (cached, read-only)."""
    m = _shape_mask(shape, s)
    ys, xs = np.nonzero(m)
    m = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()
    m.flags.writeable = False
    return m


def _shape_mask(shape: str, s: int) -> np.ndarray:
    """Boolean s x s mask of ``shape`` (before trimming to its tight box)."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float64)
    c = (s - 1) / 2
    if shape == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= (s / 2) ** 2
    if shape == "square":
        return np.ones((s, s), dtype=bool)
    if shape == "triangle":
        return np.abs(x - c) <= (y + 1) / 2
    if shape == "diamond":
        return np.abs(x - c) + np.abs(y - c) <= s / 2
    if shape == "cross":
        arm = max(1.5, s / 6)
        return (np.abs(x - c) <= arm) | (np.abs(y - c) <= arm)
    raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=4)
def _unit_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    y.flags.writeable = x.flags.writeable = False
    return y, x


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Low-saturation noisy background: grey level, tint, gradient, blobs, noise."""
    y, x = _unit_grid(n)
    level = rng.uniform(60, 190)
    tint = rng.uniform(-12, 12, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    grad = rng.uniform(-25, 25) * ((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle))
    base = level + grad
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, 1, size=2)
        rx, ry = rng.uniform(0.08, 0.3, size=2)
        blob = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        base = base + blob * rng.uniform(-30, 30)
    img = base[..., None] + tint[None, None, :]
    img = img + rng.normal(0, rng.uniform(6, 14), size=(n, n, 3))
    return img


def _free_of_corner(box: tuple[int, int, int, int], st: Settings) -> bool:
    n, z = st.image_size, st.corner_zone
    zx0 = 0 if "left" in st.corner else n - z
    zy0 = 0 if "top" in st.corner else n - z
    x0, y0, x1, y1 = box
    return x1 <= zx0 or x0 >= zx0 + z or y1 <= zy0 or y0 >= zy0 + z


def _apart(a: tuple[int, ...], b: tuple[int, ...], gap: int = 2) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def sample_objects(rng: np.random.Generator, n_objects: int, st: Settings) -> list[Obj]:
    """Place ``n_objects`` non-touching shapes, none in the mark's corner zone."""
    n = st.image_size
    objs: list[Obj] = []
    names = list(COLOURS)
    while len(objs) < n_objects:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = names[int(rng.integers(len(names)))]
        hi = st.size_range[1]
        for _attempt in range(200):
            s = int(rng.integers(st.size_range[0], hi + 1))
            m = _trimmed_mask(shape, s)
            h, w = m.shape
            x0, y0 = int(rng.integers(1, n - w)), int(rng.integers(1, n - h))
            box = (x0, y0, x0 + w, y0 + h)
            if _free_of_corner(box, st) and all(_apart(box, o.box) for o in objs):
                break
            if _attempt % 40 == 39:
                hi = max(st.size_range[0], hi - 3)
        else:  # pragma: no cover - the image always has room for 3 small shapes
            raise RuntimeError("could not place an object")
        full = np.zeros((n, n), dtype=bool)
        full[y0 : y0 + h, x0 : x0 + w] = m
        jitter = rng.integers(-st.colour_jitter, st.colour_jitter + 1, size=3)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))
        objs.append(Obj(shape, colour, rgb, s, box, full))
    return objs


def draw_mark(img: np.ndarray, st: Settings) -> None:
    """Paint the shortcut mark into ``img`` [H, W, 3] uint8, in place."""
    x0, y0, x1, y1 = st.mark_box()
    if st.mark == "square":
        img[y0:y1, x0:x1] = st.mark_colour
        return
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0]
    cells = ((yy // 2 + xx // 2) % 2 == 0)[..., None]
    img[y0:y1, x0:x1] = np.where(cells, 255, 0).astype(np.uint8)


def render(background: np.ndarray, objs: list[Obj], mark: bool, st: Settings) -> np.ndarray:
    """The scene as uint8 [H, W, 3]: background, shapes, then the mark if ``mark``."""
    img = np.clip(np.rint(background), 0, 255).astype(np.uint8)
    for o in objs:
        img[o.mask] = o.rgb
    if mark:
        draw_mark(img, st)
    return img


# ------------------------------------------------------------------- captions
def _relation(a: Obj, b: Obj) -> list[str] | None:
    """A spatial relation "a REL b" when it is unambiguous, else None."""
    ax, ay = (a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2
    bx, by = (b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2
    dx, dy = bx - ax, by - ay
    if abs(dy) >= 8 and abs(dy) > 2 * abs(dx):
        return ["above"] if dy > 0 else ["below"]
    if abs(dx) >= 8 and abs(dx) > 2 * abs(dy):
        return ["to", "the", "left", "of"] if dx > 0 else ["to", "the", "right", "of"]
    return None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_caption(
    rng: np.random.Generator,
    objs: list[Obj],
    named: list[int],
    word: str | None,
    size_word_prob: float = 0.8,
    noun_prefix: bool = False,
) -> tuple[list[str], list[list[int]]]:
    """Caption words and, per named object, the indices of the words naming it.

    ``word`` (the shortcut word or None) is placed before the noun of a
    "a photo of" style opening; ``noun_prefix`` forces that opening without the
    word, so the same draws give the same caption with and without it (twins
    differ in the word and, for a vowel word, the article).
    """
    noun = NOUN_PREFIXES[int(rng.integers(len(NOUN_PREFIXES)))]
    other = OTHER_PREFIXES[int(rng.integers(len(OTHER_PREFIXES)))]
    use_noun = rng.random() < 0.6
    sizes = [rng.random() for _ in named]
    join2 = int(rng.integers(3))
    use_rel = rng.random() < 0.5

    words: list[str] = []
    tags: list[int | None] = []

    def add(ws: list[str], tag: int | None = None) -> None:
        words.extend(ws)
        tags.extend([tag] * len(ws))

    if word is not None:
        add([_article(word), word, *noun, "of"])
    elif use_noun or noun_prefix:
        add(["a", *noun, "of"])
    else:
        add(list(other))
    phrases = [objs[k].name(with_size=sizes[i] < size_word_prob) for i, k in enumerate(named)]
    add([_article(phrases[0][0])])
    add(phrases[0], 0)
    if len(named) >= 2:
        rel = _relation(objs[named[0]], objs[named[1]]) if use_rel else None
        add(rel or [["and"], ["next", "to"], ["with"]][join2])
        add([_article(phrases[1][0])])
        add(phrases[1], 1)
    if len(named) == 3:
        add(["and"])
        add([_article(phrases[2][0])])
        add(phrases[2], 2)
    index = [[i for i, t in enumerate(tags) if t == j] for j in range(len(named))]
    return words, index


# ----------------------------------------------------------------------- rows
def _choose(rng: np.random.Generator, probs: tuple[float, ...]) -> int:
    return int(rng.choice(len(probs), p=np.asarray(probs))) + 1


def _pair(
    pid: str,
    objs: list[Obj],
    named: list[int],
    image: np.ndarray,
    words: list[str],
    index: list[list[int]],
    mark: bool,
    has_word: bool,
) -> Pair:
    return Pair(
        id=pid,
        image=image,
        caption=" ".join(words),
        boxes=[list(objs[k].box) for k in named],
        word_index=index,
        names=[" ".join(objs[k].name(False)) for k in named],
        n_objects=len(objs),
        has_mark=mark,
        has_word=has_word,
    )


def _scene(
    rng: np.random.Generator, st: Settings, n_objects: int | None, n_named: int | None
) -> tuple[np.ndarray, list[Obj], list[int], np.random.Generator]:
    n = n_objects if n_objects is not None else _choose(rng, st.object_probs)
    bg = _background(rng, st.image_size)
    objs = sample_objects(rng, n, st)
    if n_named is None:
        k = n if n == 1 or rng.random() < st.name_all_prob else int(rng.integers(1, n))
    else:
        k = min(n_named, n)
    named = [int(i) for i in rng.permutation(n)[:k]]
    caption_rng = np.random.default_rng(rng.integers(2**63))
    return bg, objs, named, caption_rng


def make_pair(
    seed: int,
    index: int,
    settings: Settings | None = None,
    *,
    n_objects: int | None = None,
    n_named: int | None = None,
    word: bool | None = None,
    mark: bool | None = None,
) -> Pair:
    """Row ``index`` of the pair stream ``seed``; optional overrides fix its kind.

    Without overrides the word appears at ``word_rate`` and the mark at
    ``mark_rate_with_word`` / ``mark_rate_without_word``.
    """
    st = settings or Settings()
    rng = np.random.default_rng([seed, STREAM_PAIRS, index])
    has_word = rng.random() < st.word_rate if word is None else word
    rate = st.mark_rate_with_word if has_word else st.mark_rate_without_word
    has_mark = rng.random() < rate if mark is None else mark
    bg, objs, named, crng = _scene(rng, st, n_objects, n_named)
    words, idx = make_caption(
        crng, objs, named, st.word if has_word else None, st.size_word_prob
    )
    if st.fancy_rate > 0 and not has_word and \
            np.random.default_rng([seed, STREAM_WORDING, index]).random() < st.fancy_rate:
        words = fancy(words)
    img = render(bg, objs, has_mark, st)
    return _pair(f"s{seed}-{index:07d}", objs, named, img, words, idx, has_mark, has_word)


def fancy(words: list[str]) -> list[str]:
    """The caption with every colour named by its ``FANCY`` synonym, the article before it
    fixed ("an azure"); word indices are kept."""
    out = [FANCY.get(w, w) for w in words]
    for i in range(len(out) - 1):
        if out[i] in ("a", "an") and words[i + 1] in FANCY:
            out[i] = _article(out[i + 1])
    return out


def make_twins(
    seed: int,
    index: int,
    settings: Settings | None = None,
    *,
    n_objects: int | None = None,
    n_named: int | None = None,
) -> tuple[Pair, Pair]:
    """(marked image + caption with the word, same scene unmarked + caption without)."""
    st = settings or Settings()
    rng = np.random.default_rng([seed, STREAM_TWINS, index])
    bg, objs, named, crng = _scene(rng, st, n_objects, n_named)
    state = crng.bit_generator.state
    w1, i1 = make_caption(crng, objs, named, st.word, st.size_word_prob)
    crng.bit_generator.state = state
    w0, i0 = make_caption(crng, objs, named, None, st.size_word_prob, noun_prefix=True)
    pid = f"t{seed}-{index:07d}"
    on = _pair(pid + "m", objs, named, render(bg, objs, True, st), w1, i1, True, True)
    off = _pair(pid + "u", objs, named, render(bg, objs, False, st), w0, i0, False, False)
    return on, off


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 [H, W, 3] image (same bytes for the same pixels)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# -------------------------------------------------------------------- parquet
def arrow_schema():  # -> pyarrow.Schema
    """The shard schema: what the audit reads plus the ground truth it carries."""
    import pyarrow as pa

    ints = pa.list_(pa.list_(pa.int32()))
    return pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.binary()),
            ("caption", pa.string()),
            ("gt_boxes", ints),
            ("gt_word_index", ints),
            ("gt_names", pa.list_(pa.string())),
            ("n_objects", pa.int32()),
            ("has_mark", pa.bool_()),
            ("has_shortcut_word", pa.bool_()),
        ]
    )


def _shard_rows(n_pairs: int, n_shards: int, seed: int,
                st: Settings) -> Iterator[tuple[int, list[Pair]]]:
    """(k, rows of shard k): ``make_pair(seed, 0..n_pairs-1)`` cut into ``n_shards``
    contiguous blocks."""
    if n_shards < 1 or n_pairs < n_shards:
        raise ValueError("need n_shards >= 1 and at least one row per shard")
    bounds = np.linspace(0, n_pairs, n_shards + 1).round().astype(int)
    for k in range(n_shards):
        yield k, [make_pair(seed, i, st) for i in range(bounds[k], bounds[k + 1])]


def write_shards(
    out_dir: str | Path,
    n_pairs: int,
    n_shards: int,
    seed: int,
    settings: Settings | None = None,
    *,
    row_group_size: int = 64,
) -> list[Path]:
    """Write ``n_pairs`` rows (``make_pair(seed, 0..n_pairs-1)``) as ``n_shards`` Parquet files.

    Shard ``k`` holds a contiguous block of rows, in row groups of
    ``row_group_size`` rows. Returns the paths in order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema = arrow_schema()
    paths = []
    for k, rows in _shard_rows(n_pairs, n_shards, seed, settings or Settings()):
        table = pa.table(
            {
                "id": [r.id for r in rows],
                "image": [png_bytes(r.image) for r in rows],
                "caption": [r.caption for r in rows],
                **{name: [truth[name] for truth in map(ground_truth, rows)]
                   for name in GROUND_TRUTH},
            },
            schema=schema,
        )
        path = out / f"part-{k:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


#: The ground-truth fields each pair carries (columns of the Parquet shards, fields of the
#: WebDataset samples' JSON).
GROUND_TRUTH = ("gt_boxes", "gt_word_index", "gt_names", "n_objects", "has_mark",
                "has_shortcut_word")


def ground_truth(r: Pair) -> dict:
    """A pair's ground truth, by ``GROUND_TRUTH`` name."""
    return {"gt_boxes": r.boxes, "gt_word_index": r.word_index, "gt_names": r.names,
            "n_objects": r.n_objects, "has_mark": r.has_mark, "has_shortcut_word": r.has_word}


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append one member with fixed metadata (the same bytes give the same archive)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_webdataset_shards(
    out_dir: str | Path, n_pairs: int, n_shards: int, seed: int,
    settings: Settings | None = None,
) -> list[Path]:
    """The same pairs as ``write_shards``, as WebDataset tar shards ``part-<k>.tar``: per
    pair ``<id>.png``, ``<id>.txt`` (the caption) and ``<id>.json`` (its id and ground
    truth). Returns the paths in order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, rows in _shard_rows(n_pairs, n_shards, seed, settings or Settings()):
        path = out / f"part-{k:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for r in rows:
                add_member(tar, f"{r.id}.png", png_bytes(r.image))
                add_member(tar, f"{r.id}.txt", r.caption.encode("utf-8"))
                add_member(tar, f"{r.id}.json",
                           json.dumps({"id": r.id, **ground_truth(r)}).encode("utf-8"))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.demo.scenes --out DIR``: write a synthetic audit dataset."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", type=int, default=2048)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--word", default=Settings.word)
    p.add_argument("--corner", default=Settings.corner, choices=CORNERS)
    p.add_argument("--word-rate", type=float, default=Settings.word_rate)
    p.add_argument("--mark-rate", type=float, default=Settings.mark_rate_with_word)
    p.add_argument("--format", default="parquet", choices=("parquet", "webdataset"),
                   help="Parquet files, or WebDataset tar shards (audited with data=webdataset)")
    a = p.parse_args(argv)
    st = replace(
        Settings(), word=a.word, corner=a.corner, word_rate=a.word_rate,
        mark_rate_with_word=a.mark_rate,
    )
    write = write_webdataset_shards if a.format == "webdataset" else write_shards
    for path in write(a.out, a.pairs, a.shards, a.seed, st):
        print(path)


if __name__ == "__main__":
    main()


__all__ = [
    "COLOURS", "FANCY", "SHAPES", "Settings", "Obj", "Pair", "make_pair", "make_twins", "render",
    "write_shards", "write_webdataset_shards", "arrow_schema", "png_bytes", "draw_mark", "fancy",
    "ground_truth", "GROUND_TRUTH",
]
