"""`reels bench capacity`: key sizes read from a real redis-server, and the plan's arithmetic."""

import tempfile
from pathlib import Path

from reels.client.bench.capacity import key_sizes, plan
from reels.deploy.redis_server import RedisServer, free_port


def test_key_sizes_are_read_per_kind_from_a_real_redis():
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp), port=free_port()) as server:
        client = server.client()
        for i in range(20):
            client.set(f"reels:v1:user:{i}", b"x" * 200)
            client.set(f"reels:v1:video:{i}", b"y" * 50)
        client.set("reels:applied:7", b"1", ex=3600)
        client.set("reels:active", b"v1")  # no kind: not counted
        sizes = key_sizes(client)
    assert set(sizes) == {"user", "video", "applied"}
    assert (
        sizes["user"]["keys"] == 20 and sizes["user"]["bytes_per_key"] > sizes["video"]["bytes_per_key"] > 50
    )
    assert sizes["applied"]["ttl_s"] > 3500 and sizes["user"]["ttl_s"] is None


def test_the_plan_scales_measured_figures_to_the_target():
    measured = {"keys": {"user": {"bytes_per_key": 300.0}, "seen": {"bytes_per_key": 700.0},
                         "video": {"bytes_per_key": 150.0}, "counters": {"bytes_per_key": 50.0},
                         "applied": {"bytes_per_key": 72.0, "ttl_s": 3600}}}  # fmt: skip
    recorded = {
        "serving": {"date": "d", "grpc": {"8": {"rps": 100.0}}, "http": {"8": {"rps": 80.0}}},
        "store": {"date": "d", "read_user_plus_500": {"p50_ms": 2.0}},
        "ingest": {"date": "d", "ingest": {"events_per_s": 10_000.0}},
    }
    p = plan(measured, recorded, users=1_000_000, videos=100_000, rps=1_000)
    assert p["redis_dataset_gb"] == (1_000_000 * 1000 + 100_000 * 200) / 1e9
    assert p["serving"]["cores"] == 20 and p["serving"]["cpu_ms_per_request"] == 20.0  # 100 req/s on 2 cores
    assert p["redis_shards"] == {"for_memory": 1, "for_reads": 2, "primaries": 2}  # 500 reads/s per core
    assert p["ingest"]["workers"] == 2 and p["ingest"]["events_per_s"] == 20_000
