"""Every Hydra option composes and instantiates; bad settings are named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pipeline.cli.audit import CONF_DIR, settings_from_config
from pipeline.config import ConfigError, ModelSettings, StorageSettings

GROUPS = ("model", "data", "storage", "cluster", "run")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted(Path(CONF_DIR, g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes(group, option):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("audit", overrides=["model=demo", f"{group}={option}", "input=/in",
                                          "output=/out"])
    s = settings_from_config(cfg)
    assert s.input == "/in" and s.output == "/out"
    assert type(getattr(s, group)).__name__.lower().startswith(group)


def test_at_least_the_documented_options_exist():
    names = {f"{g}/{o}" for g, o in OPTIONS}
    assert {"model/demo", "model/vit_b_32", "storage/s3", "cluster/local",
            "cluster/existing", "run/default", "data/default", "data/hf"} <= names


def test_the_demo_option_works_offline():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("audit", overrides=["model=demo", "input=/in", "output=/out"])
    s = settings_from_config(cfg)
    assert (s.model.name, s.model.pretrained) == ("nibt-demo", "shipped")


def test_no_model_is_refused_listing_the_options():
    """No silent default: without model= the audit names the setting and its options."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("audit", overrides=["input=/in", "output=/out"])
    with pytest.raises(ConfigError, match="model") as e:
        settings_from_config(cfg)
    for option in sorted(p.stem for p in Path(CONF_DIR, "model").glob("*.yaml")):
        assert option in str(e.value)


def test_no_model_option_holds_another_models_layers_or_batch_size():
    """Tuned values live with the model (its facts file), not in an option that a
    model.name override would inherit."""
    for path in sorted(Path(CONF_DIR, "model").glob("*.yaml")):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("audit", overrides=[f"model={path.stem}", "input=/in", "output=/out"])
        m = settings_from_config(cfg).model
        assert (m.layer, m.image_layer, m.text_layer, m.batch_size) == (None,) * 4, path.name


def test_bad_values_name_the_setting():
    with pytest.raises(ConfigError, match="model.steps"):
        ModelSettings(name="ViT-B-32", steps=0)
    with pytest.raises(ConfigError, match="model.precision"):
        ModelSettings(name="ViT-B-32", precision="int4")
    with pytest.raises(ConfigError, match="model.precision: fp16 is refused.*use bf16"):
        ModelSettings(name="ViT-B-32", precision="fp16")
    with pytest.raises(ConfigError, match="data.keep_columns: 'score'"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("audit", overrides=["model=demo", "input=/in", "output=/out",
                                              "data.keep_columns=[score]"])
        settings_from_config(cfg)
    with pytest.raises(ConfigError, match="credentials embedded"):
        StorageSettings(endpoint_url="http://AKIA:hunter2@127.0.0.1:9000")


def test_unknown_setting_is_a_config_error():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("audit", overrides=["model=demo", "input=/in", "output=/out",
                                          "+model.colour=red"])
    with pytest.raises(ConfigError, match="model"):
        settings_from_config(cfg)


def test_s3_storage_reads_endpoint_from_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("audit", overrides=["model=demo", "storage=s3", "input=/in",
                                          "output=/out"])
    s = settings_from_config(cfg)
    assert s.storage.endpoint_url == "http://127.0.0.1:9"
    opts = s.storage.options("s3://b/k")
    assert opts["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:9"
    assert "key" not in {k.lower() for k in opts} and "secret" not in str(opts).lower()
    assert s.storage.options("/local/path") == {}
    assert os.environ["AWS_ENDPOINT_URL"]
