from __future__ import annotations

import pytest

from pipeline.engine.words import merge_words, piece_text


def test_merge_words_sums_pieces_and_skips_specials():
    pieces = ["<start_of_text>", "a</w>", "photo", "graph</w>", "of</w>", "Red</w>", "<end_of_text>"]
    values = [9.0, 0.5, 1.0, 2.0, -0.25, 4.0, 9.0]
    assert merge_words(pieces, values) == [
        ("a", 0.5), ("photograph", 3.0), ("of", -0.25), ("Red", 4.0)
    ]
    assert merge_words(pieces, values, lower=True)[-1] == ("red", 4.0)


def test_a_cut_word_still_counts():
    assert merge_words(["vin", "tage"], [1.0, 2.0]) == [("vintage", 3.0)]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        merge_words(["a</w>"], [])


def test_piece_text():
    assert piece_text("dog</w>") == "dog " and piece_text("pho") == "pho"
