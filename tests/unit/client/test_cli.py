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
    assert main(["--set", f"data.root={tmp_path}", "features", "movielens"]) == 3  # NotFound
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
    assert main([*base, "--device", "gpu", "features", "synthetic"]) == 3  # DeviceUnavailable: NotFound
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


def test_every_command_of_the_cli_is_registered():
    from reels.client.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {
        "config", "data", "features", "demo", "train", "evaluate", "tune", "export", "serve", "recommend",
        "load", "publish", "promote", "ingest", "send-events", "drift", "exposure", "ab-simulate", "ab-report",
        "retrain", "bench",
    }  # fmt: skip
    bench = next(a for a in sub.choices["bench"]._actions if a.dest == "bench")
    assert set(bench.choices) == {
        "data",
        "models",
        "store",
        "serving",
        "swap",
        "ingest",
        "capacity",
        "replicas",
        "ranker",
        "failover",
        "hops",
    }
    for name, parser in bench.choices.items():
        args = parser.parse_args(["--record"])
        assert args.record and args.func.__name__ == "cmd_bench", name


def test_recommend_device_is_the_client_device_not_the_compute_device():
    from reels.client.cli import build_parser

    args = build_parser().parse_args(["--device", "cpu", "recommend", "5", "--device", "ios", "--k", "3"])
    assert (args.device, args.client_device, args.user, args.k) == ("cpu", "ios", 5, 3)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("CheckFailed", 1),
        ("InvalidInput", 2),
        ("AlreadyExists", 2),
        ("NotFound", 3),
        ("ServiceUnavailable", 4),
        ("redis", 4),
        ("refused", 4),
        ("bug", 70),
        ("interrupt", 130),
    ],
)
def test_errors_map_to_exit_codes(monkeypatch, capsys, error, code):
    import redis

    from reels.client.cli import settings
    from reels.workflows import errors

    raised = {
        "redis": redis.ConnectionError("Error 111 connecting to 127.0.0.1:1"),
        "refused": ConnectionRefusedError(111, "Connection refused"),
        "bug": ZeroDivisionError("division by zero"),
        "interrupt": KeyboardInterrupt(),
    }.get(error) or getattr(errors, error)("what went wrong")

    def fail(_args):
        raise raised

    monkeypatch.setattr(settings, "cmd_config", fail)
    assert main(["config"]) == code
    err = capsys.readouterr().err
    if code in (1, 2, 3):
        assert err == "reels: error: what went wrong\n"
    elif code == 4:
        assert err.startswith("reels: error: ") and err.count("\n") == 1
    elif code == 70:
        assert "Traceback" in err and "ZeroDivisionError" in err and "a bug" in err


def test_recommend_without_a_server_exits_4(capsys):
    from reels.deploy.redis_server import free_port

    port = free_port()  # nothing listens there
    for protocol in ("http", "grpc"):
        assert main(["recommend", "1", "--protocol", protocol, "--url", f"127.0.0.1:{port}"]) == 4
        err = capsys.readouterr().err
        assert f"cannot reach Triton at 127.0.0.1:{port} over {protocol}" in err and "reels serve" in err


def test_redis_commands_without_redis_exit_4(tmp_path, capsys):
    from reels.deploy.redis_server import free_port

    base = ["--set", f"data.root={tmp_path}", "--set", f"server.redis_port={free_port()}",
            "--set", "synthetic.n_days=2", "--set", "synthetic.n_users=100"]  # fmt: skip
    assert main([*base, "ab-report", "--redis"]) == 4
    assert "Redis unreachable while reading the exposure and event streams" in capsys.readouterr().err
    assert main([*base, "data", "synthetic", "--events", "1000"]) == 0
    assert main([*base, "send-events", "--count", "10"]) == 4
    assert "Redis unreachable while sending events" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "reels.client.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "recommend" in done.stdout and "top-1% share" in done.stdout
