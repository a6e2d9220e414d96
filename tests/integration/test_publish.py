"""`reels publish` (the Kubernetes publish job) against a real redis-server: each publish loads a new namespace,
pins it, exports the repository pinned to it, and keeps the previous publish's namespace for servers that
still run the previous repository; older namespaces go."""

import shutil

from reels.client.cli import main
from reels.client.config import load_config
from reels.deploy import jobs
from reels.deploy.redis_server import RedisServer, free_port
from reels.deploy.triton.release import Release
from reels.deploy.triton.repository import pinned_version
from reels.models.registry import mark_serving


def test_each_publish_pins_its_namespace_and_the_previous_one_and_drops_older(tiny_models, tmp_path, capsys):
    models = tmp_path / "data" / "synthetic" / "models"
    shutil.copytree(tiny_models.directory, models / "1")
    mark_serving(models, 1)
    with RedisServer(tmp_path / "redis", port=free_port()) as redis_server:
        sets = [
            f"data.root={tmp_path / 'data'}", f"server.build_dir={tmp_path / 'build'}",
            f"server.redis_port={redis_server.port}", f"server.http_port={free_port()}",
        ]  # fmt: skip
        config = load_config(None, sets)
        store = config.server.redis.store(timeout_s=5.0, namespace_ttl_s=0.0)  # no cached namespace
        published = []
        for _ in range(3):
            repository, report, pinned = jobs.publish(config, "synthetic")
            published.append(report.namespace)
            assert Release.read(repository, pinned_version(repository)).namespace == report.namespace
            assert store.namespace() == report.namespace
            assert store.pinned() == pinned == set(published[-2:])
        first, second, third = published
        assert store.namespaces() == {second, third}  # the first publish's keys are gone
        assert not any(store.client.scan_iter(match=store.keys.namespace_pattern(first), count=5000))
        # The same through the command line.
        args = [arg for item in sets for arg in ("--set", item)]
        assert main([*args, "publish", "synthetic"]) == 0
        assert "published: namespace" in capsys.readouterr().out
        assert store.pinned() == {third, store.namespace()}
