"""A model's defaults follow the model, and what the engine cannot run is refused on
the driver, before any worker starts (exit 2 naming the setting, the model, the reason)."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import open_clip
import pytest
from hydra import compose, initialize_config_dir

from pipeline.cli.audit import CONF_DIR, settings_from_config
from pipeline.config import ConfigError, ModelSettings, StorageSettings
from pipeline.engine.model import register_configs
from pipeline.job.provenance import resolve_model

FACTS = Path(__file__).resolve().parents[2] / "pipeline" / "engine" / "weights" / "nibt-demo.json"
# Layers worked out by hand from each model config's depth: 0.75 of it, rounded
# (ViT-S-16-alt's text tower has 10 blocks: 7.5 -> 8; nibt-demo's 4 and 3: 3 and 2).
BY_HAND = {"ViT-S-32": ((12, 12), (9, 9)), "ViT-L-14": ((24, 12), (18, 9)),
           "ViT-S-16-alt": ((12, 10), (9, 8)), "nibt-demo": ((4, 3), (3, 2))}


def resolved(**model):
    return resolve_model(ModelSettings(**model), StorageSettings())


def audit_settings(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("audit", overrides=["input=/in", "output=/out", *overrides])
    return settings_from_config(cfg)


@pytest.mark.parametrize("name", sorted(BY_HAND))
def test_null_layers_are_three_quarters_of_each_towers_depth(name):
    register_configs()
    cfg = open_clip.get_model_config(name)
    depths, layers = BY_HAND[name]
    assert (cfg["vision_cfg"]["layers"], cfg["text_cfg"]["layers"]) == depths  # the oracle's input
    rm = resolved(name=name, pretrained=None)
    assert (rm.image_layer, rm.text_layer) == layers
    assert rm.depths == depths and rm.weights == "random(seed=0)"


def test_overriding_the_name_of_the_demo_option_gives_that_models_own_layers():
    """The issue's run: model=demo model.name=ViT-S-32 model.pretrained=null ran with
    the demo's layers (2, 0); it gets ViT-S-32's own (9, 9)."""
    s = audit_settings("model=demo", "model.name=ViT-S-32", "model.pretrained=null")
    rm = resolve_model(s.model, s.storage)
    assert (rm.image_layer, rm.text_layer) == BY_HAND["ViT-S-32"][1]


def test_the_tuned_layers_apply_to_the_shipped_weights_only():
    facts = json.loads(FACTS.read_text())
    s = audit_settings("model=demo")
    rm = resolve_model(s.model, s.storage)
    assert rm.weights == f"sha256:{facts['weights_sha256']}"
    assert (rm.image_layer, rm.text_layer) == (facts["image_layer"], facts["text_layer"])
    # the same architecture with other (random) weights: the rule, not the tuned values
    random = resolve_model(audit_settings("model=demo", "model.pretrained=null").model,
                           StorageSettings())
    assert (random.image_layer, random.text_layer) == BY_HAND["nibt-demo"][1]
    # a layer that is set wins over the tuned ones; negative counts from the top
    rm = resolved(name="nibt-demo", image_layer=-1, text_layer=1)
    assert (rm.image_layer, rm.text_layer) == (3, 1)


def test_shipped_weights_for_another_model_are_refused_naming_the_setting():
    with pytest.raises(ConfigError, match=r"model\.pretrained: .*'ViT-S-32'"):
        s = audit_settings("model=demo", "model.name=ViT-S-32")
        resolve_model(s.model, s.storage)


@pytest.mark.parametrize(("model", "setting"), [
    ({"name": "ViT-B-32", "image_layer": 12}, "model.image_layer"),
    ({"name": "ViT-B-32", "layer": -13}, "model.layer"),
    ({"name": "ViT-L-14", "layer": 12}, "model.layer"),  # fits the 24-block image tower only
    ({"name": "nibt-demo", "text_layer": 3}, "model.text_layer"),
])
def test_a_layer_out_of_range_names_the_setting_and_the_model(model, setting):
    with pytest.raises(ConfigError) as e:
        resolved(pretrained=None, **model)
    assert str(e.value).startswith(f"{setting}: {model['name']}:")
    assert "out of range" in str(e.value)


@pytest.mark.parametrize(("name", "reason"), [
    ("RN50", "ResNet"),
    ("ViT-B-16-SigLIP", "timm model"),
    ("roberta-ViT-B-32", "Hugging Face model"),
    ("coca_ViT-B-32", "attentional pooling"),
    ("ViT-L-14-CLIPA", "image pooling is 'avg'"),
    ("no-such-model", "not an open_clip model"),
])
def test_towers_the_engine_cannot_cut_are_refused_naming_model_and_reason(name, reason):
    with pytest.raises(ConfigError) as e:
        resolved(name=name, pretrained=None)
    assert str(e.value).startswith("model.name: ") and name in str(e.value)
    assert reason in str(e.value)


def test_an_unknown_tag_is_refused_and_a_known_one_is_not_downloaded():
    with pytest.raises(ConfigError, match=r"model\.pretrained: 'no-such-tag' .* ViT-B-32 "
                                          r"\(its tags: openai"):
        resolved(name="ViT-B-32", pretrained="no-such-tag")
    assert resolved(name="ViT-B-32", pretrained="openai").weights == "openai"


def test_the_check_allocates_no_weights():
    """ViT-bigG-14 holds 2.5e9 parameters (10 GB in float32): checked on the meta
    device, the process's peak memory does not grow by anything like that."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rm = resolved(name="ViT-bigG-14", pretrained=None)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rm.depths == (48, 32) and (rm.image_layer, rm.text_layer) == (36, 24)
    assert grown_mb < 2000
