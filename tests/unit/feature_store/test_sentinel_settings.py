"""``redis+sentinel://`` URLs: the Sentinels, the service and the db they name; no password from them."""

import pytest

from reels.deploy.config import ServerConfig
from reels.feature_store.settings import RedisSettings


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db():
    settings = RedisSettings(url="redis+sentinel://reels@10.0.0.1:26380,10.0.0.2,[::1]:5000/mymaster/2")
    assert settings.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5000))
    assert (settings.service_name, settings.db, settings.host, settings.port) == (
        "mymaster",
        2,
        "10.0.0.1",
        26380,
    )
    assert settings.resolved_username() == "reels" and not settings.cluster and not settings.tls
    again = RedisSettings.from_spec(settings.as_spec())  # what a release spec keeps
    assert (again.sentinels, again.service_name, again.db) == (settings.sentinels, "mymaster", 2)
    assert RedisSettings(url="rediss+sentinel://s1/cache").tls


def test_the_password_stays_out_of_specs_and_config(monkeypatch):
    monkeypatch.delenv("REELS_REDIS_URL", raising=False)
    settings = RedisSettings(url="redis+sentinel://:secret@s1:26379,s2:26379/mymaster")
    assert settings.resolved_password() == "secret"  # a URL from the environment may hold one
    assert "secret" not in repr(settings) and "secret" not in str(settings.as_spec())
    assert "***" in settings.describe()
    with pytest.raises(ValueError, match="must not hold a password"):
        ServerConfig(redis_url="redis+sentinel://:secret@s1:26379/mymaster")
    monkeypatch.setenv("REELS_REDIS_URL", "redis+sentinel://:from-env@s1:26379,s2:26379/mymaster")
    assert RedisSettings.from_spec(settings.as_spec()).resolved_password() == "from-env"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel://s1:26379/mymaster/x", "bad db"),
        ("redis+sentinel://s1:port/mymaster", "bad Sentinel port"),
        ("redis+sentinel://s1,,s2/mymaster", "empty Sentinel address"),
        ("sentinel://s1/mymaster", "redis\\+sentinel://"),
    ],
)
def test_a_malformed_sentinel_url_is_refused(url, message):
    with pytest.raises(ValueError, match=message):
        RedisSettings(url=url)
