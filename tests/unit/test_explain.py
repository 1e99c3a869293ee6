"""`nibt-explain` on one demo pair: picture written, tokens and metrics printed."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pipeline.cli.explain import main
from pipeline.demo.scenes import make_pair, png_bytes


def test_explain_one_pair(tmp_path, capsys):
    pair = make_pair(7, 0, n_objects=1, n_named=1, word=False, mark=False)
    img = tmp_path / "scene.png"
    img.write_bytes(png_bytes(pair.image))
    out = tmp_path / "heat.png"
    assert main([str(img), pair.caption, "--model", "nibt-demo", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # the 64 px scene at 384 px, the map alone and the overlay beside it, the caption below
    w, h = Image.open(out).size
    assert w >= 3 * 384 and h >= 384 + 100
    assert (result["model"], result["image_layer"], result["text_layer"]) == ("nibt-demo", 2, 0)
    pieces = [t["piece"] for t in result["tokens"]]
    assert pieces[0] == "<start_of_text>" and pieces[-1] == "<end_of_text>"
    assert " ".join(w["word"] for w in result["words"]) == pair.caption.lower().replace(".", " .")
    assert -1 <= result["score"] <= 1
    assert 0 <= result["img_conf_drop"] <= 200


def test_explain_names_a_missing_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.png"), "a caption", "--model", "nibt-demo"]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_explain_has_no_default_model(tmp_path, capsys):
    """No silent toy model: without --model it exits 2 and says so."""
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x.png"), "a caption"])
    assert e.value.code == 2
    assert "--model" in capsys.readouterr().err
