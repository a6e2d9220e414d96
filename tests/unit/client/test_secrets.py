"""Secrets come from the environment or a file, never from config, argv or artifacts; Redis URLs carry a
password only when they come from the environment, and only ever show it redacted."""

from __future__ import annotations

import pytest

from reels.client.config import as_dict, load_config
from reels.feature_store.settings import (
    CA_FILE_ENV,
    CERT_FILE_ENV,
    KEY_FILE_ENV,
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    URL_ENV,
    USERNAME_ENV,
    RedisSettings,
)
from reels.workflows.errors import ConfigError


def test_the_redis_password_is_not_a_config_key():
    with pytest.raises(ConfigError, match="redis_password"):
        load_config(None, ["server.redis_password=hunter2"])
    assert "password" not in str(as_dict(load_config()))


def test_the_password_comes_from_the_environment_or_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_FILE_ENV, raising=False)
    assert RedisSettings().resolved_password() is None
    secret = tmp_path / "redis_password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(secret))
    assert RedisSettings().resolved_password() == "from-a-file"
    monkeypatch.setenv(PASSWORD_ENV, "from-the-env")
    assert RedisSettings().resolved_password() == "from-the-env"


def test_specs_and_reprs_never_carry_the_password():
    settings = RedisSettings(port=7000, password="hunter2")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.as_spec())
    assert RedisSettings.from_spec(settings.as_spec()).port == 7000


REDIS_ENV = (PASSWORD_ENV, PASSWORD_FILE_ENV, URL_ENV, USERNAME_ENV, CA_FILE_ENV, CERT_FILE_ENV, KEY_FILE_ENV)


@pytest.fixture
def no_redis_env(monkeypatch):
    """None of the REELS_REDIS_* variables of the machine running the tests."""
    for name in REDIS_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_url_gives_the_address_user_db_and_tls(no_redis_env):
    settings = RedisSettings(url="rediss://app@db.example:6380/2")
    assert (settings.host, settings.port, settings.db, settings.tls) == ("db.example", 6380, 2, True)
    assert settings.resolved_username() == "app"
    plain = RedisSettings(url="redis://db.example")
    assert (plain.port, plain.db, plain.tls, plain.resolved_username()) == (6379, 0, False, None)
    no_redis_env.setenv(USERNAME_ENV, "from-the-env")
    assert plain.resolved_username() == "from-the-env"
    assert settings.resolved_username() == "app"  # the URL's user is more specific


def test_a_password_in_the_url_stays_out_of_specs_reprs_and_descriptions(no_redis_env):
    settings = RedisSettings(url="rediss://app:hunter2@db.example:6380/2", prefix="p")
    assert settings.resolved_password() == "hunter2"
    for shown in (repr(settings), str(settings.as_spec()), settings.describe()):
        assert "hunter2" not in shown, shown
    assert settings.as_spec()["url"] == "rediss://app@db.example:6380/2"
    assert "rediss://app:***@db.example:6380/2" in settings.describe()
    again = RedisSettings.from_spec(settings.as_spec())
    assert (again.host, again.port, again.db, again.prefix, again.tls) == ("db.example", 6380, 2, "p", True)
    assert again.resolved_username() == "app" and again.resolved_password() is None


def test_the_url_password_comes_first_then_the_environment_then_the_file(no_redis_env, tmp_path):
    secret = tmp_path / "redis_password"
    secret.write_text("from-a-file\n")
    no_redis_env.setenv(PASSWORD_FILE_ENV, str(secret))
    no_redis_env.setenv(PASSWORD_ENV, "from-the-env")
    assert RedisSettings(url="redis://u:in-the-url@h:1").resolved_password() == "in-the-url"
    assert RedisSettings(url="redis://u@h:1").resolved_password() == "from-the-env"
    no_redis_env.delenv(PASSWORD_ENV)
    assert RedisSettings(url="redis://u@h:1").resolved_password() == "from-a-file"


def test_settings_from_a_spec_use_the_password_of_the_environment_url_for_that_server_only(no_redis_env):
    # What the step models inside tritonserver see: the spec's URL (no password) and the process environment.
    no_redis_env.setenv(URL_ENV, "rediss://app:hunter2@db.example:6380/0")
    spec = RedisSettings(url="rediss://app@db.example:6380/0").as_spec()
    assert RedisSettings.from_spec(spec).resolved_password() == "hunter2"
    assert RedisSettings(url="rediss://app@elsewhere:6380/0").resolved_password() is None
    assert RedisSettings(port=6380).resolved_password() is None


def test_tls_files_come_from_the_settings_or_the_environment_and_only_for_rediss(no_redis_env):
    no_redis_env.setenv(CA_FILE_ENV, "/env/ca.pem")
    no_redis_env.setenv(CERT_FILE_ENV, "/env/client.pem")
    no_redis_env.setenv(KEY_FILE_ENV, "/env/client.key")
    settings = RedisSettings(url="rediss://h:1", ca_file="/conf/ca.pem")
    assert settings.tls_files() == {
        "ssl_ca_certs": "/conf/ca.pem", "ssl_certfile": "/env/client.pem", "ssl_keyfile": "/env/client.key",
    }  # fmt: skip
    assert RedisSettings(url="redis://h:1").tls_files() == {}
    assert RedisSettings.from_spec(settings.as_spec()).ca_file == "/conf/ca.pem"
    with pytest.raises(ValueError, match="rediss"):
        RedisSettings(ca_file="/conf/ca.pem")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:1", "redis:// or rediss://"),
        ("redis://:1", "no host"),
        ("redis://u:hunter2@h:port", "bad port"),
        ("redis://h:1/zero", "bad port or db"),
        ("rediss://h:1?ssl_password=hunter2", "not URL options"),
    ],
)
def test_bad_urls_are_refused_without_echoing_a_password(url, message):
    with pytest.raises(ValueError, match=message) as failure:
        RedisSettings(url=url)
    assert "hunter2" not in str(failure.value)


def test_the_client_gets_the_user_tls_files_and_keeps_no_retries_for_serving(no_redis_env):
    from redis.connection import SSLConnection

    no_redis_env.setenv(PASSWORD_ENV, "from-the-env")
    settings = RedisSettings(url="rediss://app@h:6380/3", ca_file="/conf/ca.pem")
    client = settings.client(timeout_s=0.25, retries=False)  # nothing connects until a command
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h", 6380, 3)
    assert (kwargs["username"], kwargs["password"]) == ("app", "from-the-env")
    assert (kwargs["ssl_ca_certs"], kwargs["socket_timeout"]) == ("/conf/ca.pem", 0.25)
    assert kwargs["retry"].get_retries() == 0
    assert (
        RedisSettings(port=7000)
        .client(retries=False)
        .connection_pool.connection_kwargs["retry"]
        .get_retries()
        == 0
    )


def test_a_config_url_may_not_hold_a_password_but_the_environment_one_may(no_redis_env):
    with pytest.raises(ConfigError, match="must not hold a password") as failure:
        load_config(None, ["server.redis_url=rediss://app:hunter2@db.example:6380"])
    assert "hunter2" not in str(failure.value)
    no_redis_env.setenv(URL_ENV, "rediss://app:hunter2@db.example:6380/1")
    config = load_config(None, ["server.redis_url=redis://other:6379"])
    assert (config.server.redis.host, config.server.redis.resolved_password()) == ("db.example", "hunter2")
    assert "hunter2" not in str(as_dict(config))


def test_reels_config_shows_the_redis_in_use_with_the_password_redacted(no_redis_env, capsys):
    from reels.client.cli import main

    no_redis_env.setenv(URL_ENV, "rediss://app:hunter2@db.example:6380/1")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert (
        "# redis in use: rediss://app:***@db.example:6380/1, TLS on, user app, password from the URL" in out
    )
