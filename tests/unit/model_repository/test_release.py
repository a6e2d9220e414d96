"""A release's step models are self-contained: each carries its spec and the artifacts it reads inside its
own version folder, referenced relatively, so a copy of the folders reads the same release anywhere (no
server: the real tritonserver run is tests/integration/test_relocatable.py)."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from reels.deploy.triton.release import (
    ARTIFACTS,
    ENCODER_FILES,
    STEP_ARTIFACTS,
    STEPS,
    Release,
    step_model,
)
from reels.feature_store.encoding import RequestEncoder
from reels.feature_store.settings import RedisSettings
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.workflows.errors import InvalidInput, NotFound

VERSION = 3
EXPERIMENT = Experiment(name="e", salt="s", variants={"a": {}, "b": {"mmr_lambda": 0.5}})


def _model_dir(root):
    """Stand-ins for a trained version's artifacts (only their bytes matter here)."""
    root.mkdir(parents=True)
    for folder in ("query_tower", "ranker"):
        (root / folder / "variables").mkdir(parents=True)
        (root / folder / "saved_model.pb").write_bytes(os.urandom(64))
        (root / folder / "variables" / "variables.index").write_bytes(os.urandom(32))
    (root / "items.faiss").write_bytes(os.urandom(128))
    (root / "item_embeddings.parquet").write_bytes(os.urandom(128))
    (root / "manifest.json").write_text("{}")  # not served: no step carries it
    return root


def _release(model_dir, features_dir) -> Release:
    return Release(
        version=VERSION, model_dir=model_dir, features_dir=features_dir, history_length=5,
        redis=RedisSettings(port=6390, prefix="p"), namespace="ns-3",
        serving=ServingConfig(candidates=123, max_k=17), experiment=EXPERIMENT,
    )  # fmt: skip


@pytest.fixture()
def written(tmp_path, tiny_features):
    """Release 3 written as a repository would hold it: the root record and the four step folders."""
    release = _release(_model_dir(tmp_path / "models" / "3"), tiny_features.root)
    repository = tmp_path / "repository"
    repository.mkdir()
    feed = tmp_path / "feed"
    trending = np.array([5, 3, 9], dtype=np.int64)
    videos = pd.DataFrame(
        {"creator_id": [1, 2], "category": ["a", "b"], "upload_time": pd.to_datetime([1, 2], unit="s")},
        index=pd.Index([5, 9], name="video_id"),
    )
    Release.write_feed(feed, trending, videos)
    release.write(repository)
    for step in STEPS:
        release.write_step(repository / step_model(step, VERSION) / "1", step, feed)
    return {
        "release": release,
        "repository": repository,
        "trending": trending,
        "videos": videos,
        "root": tmp_path,
    }


def _args(repository, step, version=VERSION):
    return {
        "model_repository": str(repository / step_model(step, version)), "model_version": "1",
        "model_name": step_model(step, version),
    }  # fmt: skip


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_each_step_carries_only_what_it_reads(written):
    repository = written["repository"]
    for step in STEPS:
        artifacts = repository / step_model(step, VERSION) / "1" / ARTIFACTS
        top = sorted(p.name for p in artifacts.iterdir())
        assert top == sorted(STEP_ARTIFACTS[step]), step
        if "workflow" in top:  # of the fitted workflow, only what the request encoder reads
            assert _files(artifacts / "workflow") == sorted(ENCODER_FILES)
    assert not (repository / "artifacts").exists()
    assert sorted(p.name for p in repository.iterdir()) == sorted(
        [f"serving-{VERSION}.json", *(step_model(s, VERSION) for s in STEPS)]
    )


def test_specs_name_no_path(written):
    root = str(written["root"])
    record = Release.spec_path(written["repository"], VERSION).read_text()
    assert root not in record and "model_dir" not in record and "features_dir" not in record
    for step in STEPS:
        spec = json.loads(Release.step_spec_path(written["repository"], step, VERSION).read_text())
        assert root not in json.dumps(spec)
        assert spec["artifacts"] == ARTIFACTS and spec["step"] == step
        assert {k: v for k, v in spec.items() if k not in ("step", "artifacts")} == json.loads(record)


def test_a_copied_repository_reads_the_same_release_with_the_originals_gone(written, tiny_features):
    original = written["repository"]
    copy = written["root"] / "elsewhere" / "repo"
    shutil.copytree(original, copy)
    # Nothing outside the copy may be read: the original repository and the model version are gone.
    original.rename(written["root"] / "gone-repository")
    (written["root"] / "models").rename(written["root"] / "gone-models")
    expected = RequestEncoder(tiny_features.workflow_dir)
    for step in STEPS:
        release = Release.for_model(_args(copy, step))
        assert release == _release(release.model_dir, release.features_dir)  # same settings
        assert release.model_dir == copy / step_model(step, VERSION) / "1" / ARTIFACTS
        assert release.repository == copy
        if "trending.npy" in STEP_ARTIFACTS[step]:
            np.testing.assert_array_equal(release.trending_ids(), written["trending"])
        if "videos.parquet" in STEP_ARTIFACTS[step]:
            pd.testing.assert_frame_equal(release.video_metadata(), written["videos"])
        if "workflow" in STEP_ARTIFACTS[step]:
            encoder = release.encoder()
            when = np.array([1_800_000_000, 1_700_000_123])
            for name, ids in encoder.context(["ios", "web"], when).items():
                np.testing.assert_array_equal(ids, expected.context(["ios", "web"], when)[name], err_msg=name)
            assert (encoder.age_mean, encoder.age_std) == (expected.age_mean, expected.age_std)
        for name in STEP_ARTIFACTS[step]:
            assert (release.model_dir / name).exists(), (step, name)


def test_the_root_record_is_what_the_promotion_reads(written):
    repository = written["repository"]
    assert Release.versions(repository) == [VERSION]
    record = Release.read(repository, VERSION)
    assert (record.namespace, record.experiment, record.serving.candidates) == ("ns-3", EXPERIMENT, 123)
    assert record.model_dir is None and record.features_dir is None
    with pytest.raises(NotFound, match="no artifacts"):
        record.trending_ids()
    with pytest.raises(NotFound):
        Release.read(repository, VERSION + 1)


def test_a_model_folder_holding_another_release_or_no_spec_is_refused(written):
    repository = written["repository"]
    wrong = repository / step_model("ranking", VERSION + 1)
    shutil.copytree(repository / step_model("ranking", VERSION), wrong)
    with pytest.raises(InvalidInput, match="release 3"):
        Release.for_model(_args(repository, "ranking", VERSION + 1))
    Release.step_spec_path(repository, "ranking", VERSION + 1).unlink()
    with pytest.raises(NotFound, match="export it again"):
        Release.for_model(_args(repository, "ranking", VERSION + 1))


@pytest.mark.parametrize("artifacts", ["/etc", "../../other"])
def test_a_spec_may_not_point_outside_its_folder(tmp_path, written, artifacts):
    path = Release.step_spec_path(written["repository"], "retrieval", VERSION)
    path.write_text(json.dumps({**json.loads(path.read_text()), "artifacts": artifacts}))
    with pytest.raises(InvalidInput, match="beside the spec"):
        Release.from_spec(path)


def test_artifacts_are_private_copies_whose_change_times_nothing_outside_moves(tmp_path, tiny_features):
    """Triton's poll reloads a model when a file's max(mtime, ctime) changes; a hard link's ctime moves
    whenever another link to its inode is made or removed (the next release, a deleted model version)."""
    models = _model_dir(tmp_path / "models" / "3")
    feed = tmp_path / "feed"
    Release.write_feed(feed, np.array([1]), pd.DataFrame({"creator_id": [1]}, index=[1]))
    serving = tmp_path / "ranking_v3" / "1"
    _release(models, tiny_features.root).write_step(serving, "ranking", feed)
    sources = {models / "ranker" / "saved_model.pb", tiny_features.workflow_dir / "workflow.pkl"}
    carried = [p for p in serving.rglob("*") if p.is_file()]
    assert {p.stat().st_ino for p in carried}.isdisjoint({p.stat().st_ino for p in sources})
    assert all(p.stat().st_nlink == 1 for p in carried)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in carried}
    # The next release from the same feature build, then the model version deleted.
    _release(models, tiny_features.root).write_step(tmp_path / "ranking_v4" / "1", "ranking", feed)
    shutil.rmtree(models)
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in carried} == before


def test_a_missing_artifact_fails_the_write(tmp_path, tiny_features):
    models = _model_dir(tmp_path / "models" / "3")
    (models / "items.faiss").unlink()
    feed = tmp_path / "feed"
    Release.write_feed(feed, np.array([1]), pd.DataFrame({"creator_id": [1]}, index=[1]))
    with pytest.raises(NotFound, match="items.faiss"):
        _release(models, tiny_features.root).write_step(tmp_path / "step", "retrieval", feed)
