"""load_clip: towers equal open_clip's own forward, weights sources, refusals."""

from __future__ import annotations

import hashlib
import os
import pickle

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from pipeline.engine.model import WeightsError, load_clip
from pipeline.engine.towers import ImageTower, TextTower, UnsupportedModelError
from tests.conftest import CAPTIONS, random_images


def test_towers_equal_open_clip_encoders(vitb32):
    images = random_images(vitb32, 2)
    tokens = vitb32.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        ref_i, ref_t = vitb32.model.encode_image(images), vitb32.model.encode_text(tokens)
        got_i, got_t = vitb32.image.encode(images), vitb32.text.encode(tokens)
    assert torch.allclose(got_i, ref_i, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got_t, ref_t, atol=1e-5, rtol=1e-4)


def test_tower_facts(vitb32, vitb16, tiny):
    assert (vitb32.image.depth, vitb32.image.grid, vitb32.text.depth) == (12, (7, 7), 12)
    assert vitb16.image.grid == (14, 14)
    assert (tiny.image.depth, tiny.image.grid, tiny.text.depth) == (4, (8, 8), 3)
    assert tiny.context_length == 32
    assert (vitb32.sot_id, vitb32.eot_id) == (49406, 49407)


def test_weights_are_frozen_and_random_init_is_seeded(tiny):
    assert not any(p.requires_grad for p in tiny.model.parameters())
    again = load_clip("nibt-demo")
    for a, b in zip(tiny.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    other = load_clip("nibt-demo", seed=1)
    assert not torch.equal(other.model.visual.proj, tiny.model.visual.proj)
    assert tiny.weights == "random(seed=0)"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weight_file(tmp_path, tiny, suffix):
    src = load_clip("nibt-demo", seed=7)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    clip = load_clip("nibt-demo", str(path))
    assert torch.equal(clip.model.visual.proj, src.model.visual.proj)
    assert clip.weights == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_weight_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_clip("nibt-demo", str(tmp_path / "nope.safetensors"))


def test_convolutional_tower_is_refused():
    with pytest.raises(UnsupportedModelError, match=r"RN50: image tower is ModifiedResNet"):
        load_clip("RN50")


def test_other_poolings_are_refused():
    model = open_clip.create_model("nibt-demo")
    model.visual.pool_type = "avg"
    with pytest.raises(UnsupportedModelError, match=r"m: image pooling is 'avg'"):
        ImageTower(model, "m")
    model.text_pool_type = "last"
    with pytest.raises(UnsupportedModelError, match=r"m: text pooling is 'last'"):
        TextTower(model, "m", 49407)


def test_caption_tokens_match_open_clip_and_flag_truncation(tiny):
    ref = open_clip.get_tokenizer("nibt-demo")(CAPTIONS)
    tokens, truncated = tiny.encode_captions(CAPTIONS)
    assert torch.equal(tokens, ref)
    assert truncated == [False] * 4
    long = " ".join(["word"] * 40)
    tokens, truncated = tiny.encode_captions([long])
    assert truncated == [True]
    assert torch.equal(tokens, open_clip.get_tokenizer("nibt-demo")([long]))
    assert int(tokens[0, -1]) == tiny.eot_id


def test_pieces_decode_bytes_and_keep_specials(tiny):
    tokens = tiny.tokenize(["a café photograph"])
    n = int(tokens[0].argmax()) + 1
    pieces = tiny.pieces(tokens[0, :n].tolist())
    assert pieces[0] == "<start_of_text>" and pieces[-1] == "<end_of_text>"
    assert "".join(pieces[1:-1]).replace("</w>", " ").split() == ["a", "café", "photograph"]


class _Payload:
    """Unpickling this would run code: a weights file must never do that."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/nibt-pwned",))


def test_pickle_payload_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload()}, f)
    if os.path.exists("/tmp/nibt-pwned"):
        os.remove("/tmp/nibt-pwned")
    with pytest.raises(pickle.UnpicklingError):
        load_clip("nibt-demo", str(path))
    assert not os.path.exists("/tmp/nibt-pwned")


def test_sha256_is_checked(tmp_path):
    src = load_clip("nibt-demo", seed=3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_clip("nibt-demo", str(path), sha256=digest).weights == f"sha256:{digest}"
    with pytest.raises(WeightsError, match="expected"):
        load_clip("nibt-demo", str(path), sha256="0" * 64)


def test_fp16_is_refused_in_favour_of_bf16():
    """The engine takes gradients; fp16's underflow without loss scaling."""
    with pytest.raises(ValueError, match="fp16 is refused.*bf16"):
        load_clip("nibt-demo", None, precision="fp16")
