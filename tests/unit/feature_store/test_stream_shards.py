"""The event stream's shard layout: key names, hash slots, the ``stream`` config section and the shards a
worker owns."""

import pytest
from redis.crc import key_slot

from reels.client.cli import main
from reels.client.config import load_config
from reels.feature_store.layout import Keys
from reels.feature_store.settings import StreamSettings
from reels.workflows.errors import ConfigError


def test_one_shard_keeps_the_single_stream_and_more_shards_spread_over_slots():
    keys = Keys()
    assert keys.event_stream(0, 1) == keys.events == "reels:events"
    assert keys.dead_letter_stream(0, 1) == keys.dead_letters == "reels:events:dead"
    streams = [keys.event_stream(i, 8) for i in range(8)]
    assert streams[3] == "reels:events:{s3}"
    assert len({key_slot(s.encode()) for s in streams}) == 8
    # a shard's dead letters live in its slot
    assert all(
        key_slot(keys.dead_letter_stream(i, 8).encode()) == key_slot(streams[i].encode()) for i in range(8)
    )


@pytest.mark.parametrize("shards", [2, 3, 4, 6, 256])
def test_shard_i_of_n_hashes_to_the_ith_of_n_equal_slot_ranges(shards):
    """So 2 shards on 3 primaries use two primaries, 3 use all three (the slots split evenly)."""
    slots = [key_slot(Keys().event_stream(i, shards).encode()) for i in range(shards)]
    assert [slot * shards // 16384 for slot in slots] == list(range(shards))


def test_a_users_events_always_go_to_one_shard():
    layout = StreamSettings(shards=4)
    assert [layout.shard_of(u) for u in (0, 1, 5, 8, 2**53 - 1)] == [0, 1, 1, 0, 3]


@pytest.mark.parametrize(
    ("spec", "owned"),
    [("", [0, 1, 2, 3]), (None, [0, 1, 2, 3]), ("2", [2]), ("3,0-1", [0, 1, 3]), ("1,1", [1])],
)
def test_the_shards_a_worker_owns(spec, owned):
    assert StreamSettings(shards=4).owned(spec) == owned


@pytest.mark.parametrize(
    ("spec", "message"), [("4", "does not exist"), ("2-1", "does not exist"), ("a", "numbers")]
)
def test_a_bad_list_of_shards_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        StreamSettings(shards=4).owned(spec)


def test_the_stream_section_of_the_config():
    assert load_config().stream.shards == 1
    assert load_config(overrides=["stream.shards=3"]).stream.shards == 3
    with pytest.raises(ConfigError, match="between 1 and"):
        load_config(overrides=["stream.shards=0"])


def test_reels_ingest_refuses_a_shard_that_does_not_exist(capsys):
    assert main(["--set", "stream.shards=2", "ingest", "--own-shards", "2"]) == 2
    assert "--own-shards" in capsys.readouterr().err
