"""Redis Cluster settings and key layout: the keys one ingest script call touches share a hash slot."""

import pytest
from redis.crc import key_slot

from reels.feature_store.layout import Keys
from reels.feature_store.settings import RedisSettings


def _slot(key: str) -> int:
    return key_slot(key.encode())


def test_the_keys_of_each_ingest_part_share_one_slot():
    keys = Keys()
    user, video, event = 123_456, 987, 42
    user_part = [keys.applied(event, keys.user_tag(user)), keys.seen("v3", user), keys.user("v3", user)]
    video_part = [keys.applied(event, keys.video_tag(video)), keys.counters("v3", video)]
    trending_part = [keys.applied(event, keys.TRENDING_TAG), keys.trending]
    for part in (user_part, video_part, trending_part):
        assert len({_slot(k) for k in part}) == 1, part
    assert keys.user("v3", user) == "reels:v3:user:{u:123456}"
    # users spread over the slots (a tag per user, not one for all)
    assert len({_slot(keys.user("v3", u)) for u in range(1000)}) > 900


def test_a_prefix_with_a_hash_tag_is_refused():
    with pytest.raises(ValueError, match="curly braces"):
        Keys("{reels}")


@pytest.mark.parametrize(
    ("url", "tls"), [("redis+cluster://10.0.0.5:7000/0", False), ("rediss+cluster://user@node:7000", True)]
)
def test_cluster_urls_set_cluster_mode(url, tls):
    settings = RedisSettings(url=url)
    assert settings.cluster and settings.tls == tls and settings.port == 7000
    assert settings.describe().startswith(url.split("://")[0])
    again = RedisSettings.from_spec(settings.as_spec())
    assert again.cluster and again.url == settings.url


def test_cluster_mode_without_a_url_travels_in_the_spec():
    settings = RedisSettings(host="node", port=7001, cluster=True)
    assert settings.as_spec()["cluster"] is True
    assert RedisSettings.from_spec(settings.as_spec()).cluster
    assert not RedisSettings.from_spec(RedisSettings().as_spec()).cluster
    assert "cluster=True" in repr(settings)


def test_a_cluster_has_only_db_0():
    with pytest.raises(ValueError, match="only db 0"):
        RedisSettings(url="redis+cluster://node:7000/2")
    with pytest.raises(ValueError, match="redis\\+cluster://"):
        RedisSettings(url="cluster://node:7000")


def test_the_vectorised_ingest_keys_are_the_same_keys():
    keys = Keys("my%app")  # a "%" in the prefix must not be taken for a format
    users, videos, events = [0, 7, 2**53 - 1], [3, 3, 10**12], [11, 12, 13]
    user_tags, video_tags = keys.user_tags(users), keys.video_tags(videos)
    assert [t.decode() for t in user_tags] == [keys.user_tag(u) for u in users]
    assert keys.applied_keys(events, user_tags) == [
        keys.applied(e, keys.user_tag(u)).encode() for e, u in zip(events, users, strict=True)
    ]
    assert (
        keys.applied_keys(events, [keys.TRENDING_TAG.encode()] * 3)[0]
        == keys.applied(11, "{trending}").encode()
    )
    assert keys.seen_keys("v2", user_tags) == [keys.seen("v2", u).encode() for u in users]
    assert keys.user_keys("v2", user_tags) == [keys.user("v2", u).encode() for u in users]
    assert keys.counters_keys("v2", video_tags) == [keys.counters("v2", v).encode() for v in videos]
