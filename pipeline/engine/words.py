"""Word pieces -> words, with summed attribution.

open_clip's BPE tokenizer marks the last piece of each word with ``</w>``
("photo" + "graph</w>" is one word). The report works with words, so pieces are
merged up to each end-of-word marker and their attributions summed.
Special tokens (start/end-of-text) are not words and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

END_OF_WORD = "</w>"
SPECIAL = ("<start_of_text>", "<end_of_text>")


def merge_words(
    pieces: Sequence[str], values: Sequence[float], *, lower: bool = False
) -> list[tuple[str, float]]:
    """Merge BPE pieces into ``(word, summed value)`` in caption order.

    A trailing run of pieces without an end-of-word marker (a caption cut at the
    context length) still forms a word. ``lower`` case-folds the words.
    """
    if len(pieces) != len(values):
        raise ValueError(f"{len(pieces)} pieces but {len(values)} values")
    words: list[tuple[str, float]] = []
    buf, total = "", 0.0
    for piece, value in zip(pieces, values):
        if piece in SPECIAL:
            continue
        end = piece.endswith(END_OF_WORD)
        buf += piece[: -len(END_OF_WORD)] if end else piece
        total += float(value)
        if end:
            words.append((buf.casefold() if lower else buf, total))
            buf, total = "", 0.0
    if buf:
        words.append((buf.casefold() if lower else buf, total))
    return words


def piece_text(piece: str) -> str:
    """A piece as display text: the end-of-word marker becomes a trailing space."""
    return piece[: -len(END_OF_WORD)] + " " if piece.endswith(END_OF_WORD) else piece
