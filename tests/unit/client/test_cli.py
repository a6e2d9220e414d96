"""The CLI end to end on a tiny world, in-process: exit codes, outputs on disk, error messages."""

import json

import pytest

from reels.client.cli import main


def test_data_then_features(tmp_path, capsys):
    base = ["--set", f"data.root={tmp_path}", "--set", "synthetic.n_users=300", "--set", "synthetic.n_videos=600",
            "--set", "synthetic.n_creators=50", "--set", "synthetic.n_days=4", "--set", "features.history_length=3",
            "--device", "cpu"]  # fmt: skip
    assert main([*base, "data", "synthetic", "--events", "8000"]) == 0
    assert len(list((tmp_path / "synthetic" / "store" / "events").iterdir())) == 4  # one folder per day
    assert "events/s" in capsys.readouterr().out
    assert main([*base, "features", "synthetic"]) == 0
    manifest = json.loads((tmp_path / "synthetic" / "features" / "manifest.json").read_text())
    assert manifest["feature_config"]["history_length"] == 3
    assert sum(manifest["rows"][w] for w in ("train", "valid", "test")) == manifest["rows"]["events"]


def test_existing_store_is_not_overwritten_silently(tmp_path, capsys):
    base = ["--set", f"data.root={tmp_path}", "--set", "synthetic.n_days=3", "--set", "synthetic.n_users=100"]
    assert main([*base, "data", "synthetic", "--events", "2000"]) == 0
    assert main([*base, "data", "synthetic", "--events", "2000"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_features_without_data_explains_what_to_run(tmp_path, capsys):
    assert main(["--set", f"data.root={tmp_path}", "features", "movielens"]) == 2
    assert "run `reels data movielens` first" in capsys.readouterr().err


def test_bad_override_exits_2_with_a_suggestion(capsys):
    assert main(["--set", "features.histroy_length=3", "config"]) == 2
    assert "did you mean 'history_length'" in capsys.readouterr().err


def test_gpu_request_without_gpu_is_a_clear_error(tmp_path, capsys):
    from reels.workflows.device import gpu_available

    if gpu_available():
        pytest.skip("this machine has a GPU")
    base = ["--set", f"data.root={tmp_path}", "--set", "synthetic.n_days=3", "--set", "synthetic.n_users=100"]
    assert main([*base, "data", "synthetic", "--events", "2000"]) == 0
    assert main([*base, "--device", "gpu", "features", "synthetic"]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err


def test_bad_model_config_fails_before_any_work(tmp_path, capsys):
    assert main(["--set", f"data.root={tmp_path}", "--set", "two_tower.epochs=0", "train", "movielens"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert not (tmp_path / "movielens").exists()


def test_list_and_mapping_overrides(capsys):
    assert (
        main(["--set", "ranker.expert_units=[32,16]", "--set", "ranker.score_weights={view: 1}", "config"])
        == 0
    )
    out = capsys.readouterr().out
    assert "- 32" in out and "view: 1.0" in out


def test_every_flag_a_command_reads_is_parsed():
    from reels.client.cli import build_parser

    args = build_parser().parse_args(["ingest", "synthetic", "--no-offline", "--drain"])
    assert args.no_offline and args.drain
    args = build_parser().parse_args(
        ["retrain", "movielens", "--scheduler", "tcp://h:8786", "--if-drift", "--record"]
    )
    assert (args.source, args.scheduler, args.if_drift, args.no_promote) == (
        "movielens",
        "tcp://h:8786",
        True,
        False,
    )
