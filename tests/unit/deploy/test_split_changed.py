"""`reels evaluate` rebuilds a source's features when the configured split no longer matches the build's."""

from __future__ import annotations

from reels.client.config import load_config
from reels.deploy.jobs import split_changed


def _root_with(tiny_store, tiny_features, tmp_path):
    source = tmp_path / "synthetic"
    source.mkdir()
    (source / "store").symlink_to(tiny_store.root)
    (source / "features").symlink_to(tiny_features.root)
    return tmp_path


def test_a_build_with_the_configured_split_is_kept(tiny_store, tiny_features, tmp_path):
    root = _root_with(tiny_store, tiny_features, tmp_path)
    assert not split_changed(load_config(overrides=[f"data.root={root}"]), "synthetic")


def test_another_split_setting_means_a_rebuild(tiny_store, tiny_features, tmp_path):
    root = _root_with(tiny_store, tiny_features, tmp_path)
    assert split_changed(load_config(overrides=[f"data.root={root}", "data.valid_days=2"]), "synthetic")
    assert split_changed(
        load_config(overrides=[f"data.root={root}", "data.split=events", "data.test_fraction=0.3"]),
        "synthetic",
    )


def test_no_build_or_no_store_is_not_a_changed_split(tmp_path):
    assert not split_changed(load_config(overrides=[f"data.root={tmp_path}"]), "synthetic")
