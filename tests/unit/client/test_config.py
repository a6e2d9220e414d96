import pytest

from reels.client.config import load_config
from reels.workflows.errors import ConfigError


def test_defaults_load():
    config = load_config()
    assert config.data.source == "synthetic"
    assert config.features.history_length == 20


def test_override_is_coerced_to_the_field_type():
    config = load_config(overrides=["features.history_length=7", "synthetic.drift=0"])
    assert config.features.history_length == 7
    assert config.synthetic.drift == 0.0


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown key synthetic.n_event \(did you mean 'n_events'\?\)"):
        load_config(overrides=["synthetic.n_event=10"])


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match=r"features.history_length: expected int"):
        load_config(overrides=["features.history_length=long"])


def test_invalid_value_fails_with_the_field_name():
    with pytest.raises(ConfigError, match="history_length"):
        load_config(overrides=["features.history_length=0"])


def test_config_file_layers_over_defaults(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("data:\n  source: movielens\nfeatures:\n  max_position: 9\n")
    config = load_config(path)
    assert (config.data.source, config.features.max_position) == ("movielens", 9)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/reels.yaml")
