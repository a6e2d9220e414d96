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


def test_a_redis_url_replaces_the_redis_host_and_port(monkeypatch):
    monkeypatch.delenv("REELS_REDIS_URL", raising=False)
    config = load_config(
        overrides=["server.redis_url=rediss://app@db.example:6380/2", "server.redis_ca_file=/ca.pem"]
    )
    redis = config.server.redis
    assert (redis.host, redis.port, redis.db, redis.tls, redis.ca_file) == (
        "db.example",
        6380,
        2,
        True,
        "/ca.pem",
    )
    assert load_config().server.redis.as_spec() == {"host": "127.0.0.1", "port": 6379, "prefix": "reels"}


def test_the_environment_url_wins_over_the_config(monkeypatch):
    monkeypatch.setenv("REELS_REDIS_URL", "redis://from-env:7000/0")
    config = load_config(overrides=["server.redis_url=redis://from-config:6379/0", "server.redis_port=6380"])
    assert (config.server.redis.host, config.server.redis.port) == ("from-env", 7000)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("server.redis_url=http://db.example", r"server.redis_url: a Redis URL starts with"),
        ("server.redis_url=redis://db.example:port", r"server.redis_url: bad port"),
        ("server.redis_ca_file=/ca.pem", r"need a rediss:// server.redis_url or \$REELS_REDIS_URL"),
    ],
)
def test_bad_redis_settings_fail_naming_the_key(override, message, monkeypatch):
    monkeypatch.delenv("REELS_REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_tls_files_in_the_config_may_go_with_an_environment_url(monkeypatch):
    monkeypatch.setenv("REELS_REDIS_URL", "rediss://db.example:6380/0")
    redis = load_config(overrides=["server.redis_ca_file=/ca.pem"]).server.redis
    assert (redis.tls, redis.ca_file) == (True, "/ca.pem")


def test_split_by_events_is_chosen_per_source():
    config = load_config(overrides=["data.split=events", "data.test_fraction=0.2", "movielens.split=days"])
    assert config.event_fractions("synthetic") == (0.1, 0.2)
    assert config.event_fractions("movielens") is None  # its own section still splits by days
    assert load_config().event_fractions("movielens") == (0.1, 0.1)  # MovieLens-100k's default
    with pytest.raises(ConfigError, match="data.split must be days or events"):
        load_config(overrides=["data.split=weekly"])
