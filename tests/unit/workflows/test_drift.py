import numpy as np
import pandas as pd

from reels.client.cli import main
from reels.workflows.drift import drift_table, psi_categorical, psi_continuous


def _frame(rng, n: int, hour_shift: int = 0, age_scale: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "hour": (rng.integers(3, 27, n) + hour_shift) % 27,
            "device": rng.choice([3, 4, 5], n, p=[0.45, 0.45, 0.1]),
            "video_age": rng.normal(0, 1, n).astype(np.float32) * age_scale,
            "user_id": rng.integers(3, 10_000, n),
        }
    )


def test_unshifted_window_is_stable_and_shifted_one_is_flagged():
    rng = np.random.default_rng(0)
    train, same, shifted = (
        _frame(rng, 50_000),
        _frame(rng, 5_000),
        _frame(rng, 5_000, hour_shift=8, age_scale=2.5),
    )
    calm = drift_table(train, same).set_index("feature")["psi"]
    moved = drift_table(train, shifted).set_index("feature")["psi"]
    assert calm.max() < 0.05
    assert moved["video_age"] > 0.25
    assert moved["device"] < 0.05
    assert "user_id" not in moved.index  # ids are skipped by default


def test_psi_edge_cases():
    s = pd.Series([1, 1, 2, 2])
    assert psi_categorical(s, s) == 0
    assert psi_categorical(s, pd.Series([3, 3, 3])) > 1  # a brand-new category dominates
    x = pd.Series(np.arange(1000, dtype=float))
    assert psi_continuous(x, x) < 1e-9


def test_drift_command_exit_codes(tiny_features, tmp_path, capsys):
    (tmp_path / "synthetic").mkdir()  # a data root whose "synthetic" source is the tiny features
    (tmp_path / "synthetic" / "features").symlink_to(tiny_features.root)
    base = ["--set", f"data.root={tmp_path}", "drift", "synthetic"]
    assert main([*base, "--threshold", "1000"]) == 0
    assert main([*base, "--threshold", "0"]) == 1
    assert "drift above 0.0" in capsys.readouterr().err
