"""Secrets come from the environment or a file, never from config, argv or artifacts."""

from __future__ import annotations

import pytest

from reels.client.config import as_dict, load_config
from reels.feature_store.settings import PASSWORD_ENV, PASSWORD_FILE_ENV, RedisSettings
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
