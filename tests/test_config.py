"""Settings: defaults load, YAML overrides apply, bad values fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrag.config import ConfigError, StreamRAGConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = StreamRAGConfig.load(path)
    assert config.cache.capacity == config.cache.sink_tokens + config.cache.window_tokens


def test_default_yaml_describes_the_embedded_model():
    config = StreamRAGConfig.load(CONFIGS / "default.yaml")
    assert config.model.spec is None
    assert config.model.device == "auto" and config.model.dtype == "auto"


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cache:\n  window_tokens: 500\n")
    config = StreamRAGConfig.load(path, {"cache.sink_tokens": 8, "model.dtype": "bf16"})
    assert (config.cache.window_tokens, config.cache.sink_tokens) == (500, 8)
    assert config.model.dtype == "bfloat16"


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"cache.window_tokens": 2, "cache.sink_tokens": 4}, "cache.window_tokens", "at least sink_tokens"),
        ({"cache.sink_tokens": -1}, "cache.sink_tokens", "greater than or equal to 0"),
        ({"cache.window_tokens": 0}, "cache.window_tokens", "greater than 0"),
        ({"cache.evict_chunk": 5000}, "cache.evict_chunk", "cannot exceed window_tokens"),
        ({"model.dtype": "fp8"}, "model.dtype", "unknown dtype"),
        ({"model.device": "tpu"}, "model.device", "unknown device"),
        ({"generation.top_p": 1.5}, "generation.top_p", "less than or equal to 1"),
        ({"generation.stop": [""]}, "generation.stop", "must not be empty"),
        ({"cache.window_size": 10}, "cache.window_size", "Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_fail_with_the_field_name(overrides, field, words):
    with pytest.raises(ConfigError) as info:
        StreamRAGConfig.load(None, overrides)
    message = str(info.value)
    assert f"{field}: " in message and words in message


def test_broken_yaml_and_missing_files_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        StreamRAGConfig.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cache: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        StreamRAGConfig.load(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        StreamRAGConfig.load(scalar)


def test_data_dir_follows_streamrag_home(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMRAG_HOME", str(tmp_path / "home"))
    assert StreamRAGConfig().data_dir == tmp_path / "home"
