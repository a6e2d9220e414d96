"""Events -> Redis Stream -> online features, against a real redis-server: exactly-once effects under
re-delivery, duplicates ignored, malformed events dead-lettered, hides effective on the next read."""

import json
import time

import numpy as np
import pandas as pd
import pytest

from reels.feature_store.encoding import Vocabulary
from reels.feature_store.ingest import IngestStats, IngestWorker
from reels.feature_store.streams import EventProducer, read_event_streams
from reels.workflows.spec import HISTORY

HISTORY_LENGTH = 5  # TINY_FEATURES


@pytest.fixture()
def online(loaded_store):
    return loaded_store


def worker(online, tiny_features, name: str, claim_idle_ms: int = 10_000) -> IngestWorker:
    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    return IngestWorker(
        online, vocabulary, HISTORY_LENGTH, consumer=name, claim_idle_ms=claim_idle_ms, batch=50
    )


def events(tiny_store, n: int, start_id: int = 10**9) -> list[dict]:
    frame = tiny_store.read_events().compute().tail(n).reset_index(drop=True)
    frame["event_id"] = start_id + np.arange(len(frame))
    frame["timestamp"] = pd.Timestamp("2026-02-01")
    return frame.to_dict("records")


def test_viewed_event_updates_history_and_seen_list(online, tiny_features, tiny_store):
    event = events(tiny_store, 1)[0]
    event.update(watch_time_s=event["video_duration_s"], skipped=False, hidden=False)
    EventProducer(online.client).send([event])
    stats = worker(online, tiny_features, "w1").run(idle_exit=True)
    assert stats.applied == 1
    user, seen = online.read_user(int(event["user_id"]))
    code = Vocabulary(tiny_features.workflow_dir, "video_id").encode(np.array([event["video_id"]]))[0]
    assert user[HISTORY][0] == code
    assert seen[-1] == event["video_id"]


def test_hidden_video_is_excluded_from_the_next_request(online, tiny_features, tiny_store):
    event = events(tiny_store, 1, start_id=2 * 10**9)[0]
    user = int(event["user_id"])
    fresh_video = int(pd.read_parquet(tiny_features.videos_path)["raw_video_id"].iloc[-1])
    event.update(video_id=fresh_video, hidden=True, skipped=True, watch_time_s=0.0)
    assert fresh_video not in set(online.read_user(user)[1])
    EventProducer(online.client).send([event])
    worker(online, tiny_features, "w-hide").run(idle_exit=True)
    assert fresh_video in set(online.read_user(user)[1])  # retrieval drops the seen list


def test_duplicates_are_applied_once(online, tiny_features, tiny_store):
    batch = events(tiny_store, 20, start_id=3 * 10**9)
    EventProducer(online.client).send(batch + batch[:5])
    stats = worker(online, tiny_features, "w-dup").run(idle_exit=True)
    assert (stats.applied, stats.duplicates) == (20, 5)
    ns = online.namespace()
    total = sum(
        int(online.client.hget(online.keys.counters(ns, v), "events") or 0)
        for v in {e["video_id"] for e in batch}
    )
    assert total == 20


def test_malformed_events_go_to_the_dead_letter_stream(online, tiny_features, tiny_store):
    good = events(tiny_store, 3, start_id=4 * 10**9)
    negative = dict(good[0], event_id=4 * 10**9 + 99, watch_time_s=-3.0)
    missing = {k: v for k, v in good[1].items() if k != "device"} | {"event_id": 4 * 10**9 + 98}
    producer = EventProducer(online.client)
    producer.send(good + [negative, missing])
    online.client.xadd("reels:events", {"event": b"not json"})
    stats = worker(online, tiny_features, "w-dead").run(idle_exit=True)
    assert (stats.applied, stats.dead_lettered) == (3, 3)
    dead = online.client.xrange("reels:events:dead")
    reasons = " | ".join(fields[b"reason"].decode() for _, fields in dead)
    assert "watch_time_s" in reasons and "device" in reasons and "Expecting value" in reasons


def test_a_consumer_that_dies_mid_batch_loses_nothing_and_doubles_nothing(online, tiny_features, tiny_store):
    batch = events(tiny_store, 40, start_id=5 * 10**9)
    EventProducer(online.client).send(batch)
    doomed = worker(online, tiny_features, "doomed")
    taken = doomed.read_only(25)  # read, never acknowledged: the process "died"
    assert len(taken) == 25
    doomed.process(taken[:10], IngestStats())
    # ...and it even applied 10 of them before dying without acknowledging: they must not count twice.

    time.sleep(0.05)
    survivor = worker(online, tiny_features, "survivor", claim_idle_ms=10)
    stats = survivor.run(idle_exit=True)
    ns = online.namespace()
    counted = sum(
        int(online.client.hget(online.keys.counters(ns, v), "events") or 0)
        for v in {e["video_id"] for e in batch}
    )
    assert counted == 40
    assert stats.claimed >= 15
    assert online.client.xpending("reels:events", "ingest")["pending"] == 0


def test_applied_events_reach_the_offline_store_once(online, tiny_features, tiny_store, tmp_path):
    from reels.workflows.offline_store import OfflineStore

    offline = OfflineStore(tmp_path / "offline")
    batch = events(tiny_store, 30, start_id=6 * 10**9)
    EventProducer(online.client).send(batch + batch[:7])
    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    IngestWorker(online, vocabulary, HISTORY_LENGTH, consumer="w-offline", batch=10, offline=offline).run(
        idle_exit=True
    )
    written = offline.read_events().compute()
    assert sorted(written["event_id"]) == sorted(e["event_id"] for e in batch)


def test_hide_creator_messages_are_applied_and_bad_ones_dead_lettered(online, tiny_features, tiny_store):
    producer = EventProducer(online.client)
    user = int(tiny_store.read_events().compute()["user_id"].iloc[0])
    producer.hide_creator(user, 17)
    producer.hide_creator(user, 17)  # a repeat (or a re-delivery) changes nothing
    producer.client.xadd(producer.stream, {"hide_creator": '{"user_id": -1, "creator_id": 3}'})
    stats = worker(online, tiny_features, "hider").run(idle_exit=True)
    assert list(online.hidden_creators(user)) == [17]
    assert stats.dead_lettered == 1 and "non-negative" in stats.reasons[0]
    assert online.client.xpending(producer.stream, "ingest")["pending"] == 0
    # Namespace-independent: a reload of the features keeps what the user hid.
    online.load(tiny_features)
    assert list(online.hidden_creators(user)) == [17]


def _counted(online, batch) -> int:
    ns = online.namespace()
    return sum(
        int(online.client.hget(online.keys.counters(ns, v), "events") or 0)
        for v in {e["video_id"] for e in batch}
    )


def test_two_shards_keep_each_users_events_on_one_shard_and_apply_each_once(
    online, tiny_features, tiny_store
):
    from reels.feature_store.ingest import IngestMetrics

    batch = events(tiny_store, 60, start_id=7 * 10**9)
    assert len({e["user_id"] % 2 for e in batch}) == 2  # both shards get events
    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    first = IngestWorker(
        online, vocabulary, HISTORY_LENGTH, consumer="s0", batch=50, shards=2, owned_shards=[0]
    )
    producer = EventProducer(online.client, shards=2)
    producer.send(batch + batch[:6])
    for shard, stream in enumerate(producer.streams):  # each user on one shard, in the order sent
        sent = [json.loads(fields[b"event"])["event_id"] for _, fields in online.client.xrange(stream)]
        assert sent == [e["event_id"] for e in batch + batch[:6] if e["user_id"] % 2 == shard]
    producer.hide_creator(int(batch[1]["user_id"]), 17)
    live = read_event_streams(online.client)  # what live A/B reports read: every shard, hides left out
    assert sorted(e["event_id"] for e in live) == sorted(e["event_id"] for e in batch + batch[:6])
    producer.client.xadd(producer.streams[1], {"event": b"not json"})

    # A worker of shard 1 dies mid-batch after applying part of what it read.
    doomed = IngestWorker(
        online, vocabulary, HISTORY_LENGTH, consumer="s1-doomed", shards=2, owned_shards=[1]
    )
    taken = doomed.read_only(20, shard=1)
    doomed.process(taken[:8], IngestStats(), shard=1)
    time.sleep(0.05)
    on_shard_0 = sum(e["user_id"] % 2 == 0 for e in [*batch, *batch[:6], batch[1]])  # events and the hide
    assert first.run(idle_exit=True).read == on_shard_0
    assert online.client.xpending(producer.streams[0], "ingest")["pending"] == 0
    assert online.client.xpending(producer.streams[1], "ingest")["pending"] > 0  # not shard 0's to claim

    metrics = IngestMetrics()
    both = IngestWorker(
        online,
        vocabulary,
        HISTORY_LENGTH,
        consumer="both",
        batch=50,
        claim_idle_ms=10,
        shards=2,
        metrics=metrics,
    )
    total = both.run(idle_exit=True)
    assert _counted(online, batch) == 60  # every event once, across both shards and the dead consumer
    assert total.claimed == 12  # what the dead consumer read and never acknowledged
    assert list(online.hidden_creators(int(batch[1]["user_id"]))) == [17]
    assert total.dead_lettered == 1 and online.client.xlen(online.keys.dead_letter_stream(1, 2)) == 1
    assert online.client.xlen(online.keys.dead_letter_stream(0, 2)) == 0
    sample = metrics.registry.get_sample_value
    lengths = [sample("reels_ingest_shard_length", {"shard": str(i)}) for i in (0, 1)]
    assert sum(lengths) == sample("reels_ingest_stream_length") == 60 + 6 + 1 + 1
    assert sample("reels_ingest_shard_pending", {"shard": "1", "group": "ingest"}) == 0
    assert sample("reels_ingest_shard_dead_letter_length", {"shard": "1"}) == 1


def test_the_shard_count_changes_only_once_the_old_streams_are_drained(online, tiny_features, tiny_store):
    from reels.workflows.errors import ConfigError

    vocabulary = Vocabulary(tiny_features.workflow_dir, "video_id")
    single = IngestWorker(online, vocabulary, HISTORY_LENGTH, consumer="one")  # records 1 shard
    EventProducer(online.client).send(events(tiny_store, 10, start_id=8 * 10**9))
    with pytest.raises(ConfigError, match="stream.shards=1"):
        IngestWorker(online, vocabulary, HISTORY_LENGTH, consumer="two", shards=2)
    with pytest.raises(ConfigError, match="workers read 1"):
        EventProducer(online.client, shards=2).send(events(tiny_store, 1, start_id=8 * 10**9 + 50))
    assert single.run(idle_exit=True).applied == 10
    IngestWorker(
        online, vocabulary, HISTORY_LENGTH, consumer="two", shards=2
    )  # drained: the switch is allowed
    assert int(online.client.get(online.keys.event_shards)) == 2
    with pytest.raises(ConfigError, match="set stream.shards to 2"):
        EventProducer(online.client).send(events(tiny_store, 1, start_id=8 * 10**9 + 60))
