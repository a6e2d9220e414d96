"""The diversity trade-off on tiny hand-made catalogs and feeds: the choice rule, the sweep's rows against
the real re-rank, and the report and plot written from them. (On trained models: `reels evaluate
--tradeoff-only`.)"""

import numpy as np
import pandas as pd
import pytest

from reels.models.evaluation.tradeoff import (
    BASELINE,
    DEFAULT,
    Feeds,
    assemble,
    candidate_coverage,
    choose,
    describe,
    markdown,
    plot,
    settings,
    sweep,
)
from reels.models.serving.catalog import Catalog
from reels.models.serving.config import ServingConfig
from reels.workflows.errors import ConfigError, InvalidInput

REQUEST_S = 1_767_225_600  # 2026-01-01 UTC
N_VIDEOS, N_CREATORS = 60, 20
BASE = ServingConfig(max_per_category=20)  # no category cap: the grid's creator caps alone decide
GRID = {"mmr_lambda": (1.0, 0.5), "max_per_creator": (20, 1), "exploration_slots": (0, 2)}


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    """60 videos, raw ids 1000..1059; video i by creator 500 + i % 20, category i % 3; the last 6 are
    fresh (uploaded an hour before the requests); random embeddings."""
    raw = np.arange(1000, 1000 + N_VIDEOS)
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "raw_video_id": raw,
            "video_id": np.arange(3, 3 + N_VIDEOS),
            "embedding": list(rng.normal(size=(N_VIDEOS, 8))),
        }
    ).to_parquet(tmp_path / "item_embeddings.parquet", index=False)
    age_s = np.where(np.arange(N_VIDEOS) >= N_VIDEOS - 6, 3600, 30 * 86400)
    videos = pd.DataFrame(
        {
            "creator_id": 500 + np.arange(N_VIDEOS) % N_CREATORS,
            "category": np.array(["a", "b", "c"])[np.arange(N_VIDEOS) % 3],
            "upload_time": pd.to_datetime(REQUEST_S - age_s, unit="s"),
        },
        index=pd.Index(raw, name="video_id"),
    )
    return Catalog(tmp_path, videos)


def feeds_of(n_users: int = 4) -> Feeds:
    """Every user gets all 60 videos as candidates; scores favour creators 500-504 (their 15 videos rank
    first, then the others by id). User u watched creator 500's three videos, video 1005 + u (ranked 16-19)
    and the fresh video 1056 (ranked outside the top 20)."""
    candidates = np.arange(1000, 1000 + N_VIDEOS)
    favoured = (candidates - 1000) % N_CREATORS < 5
    scores = np.where(favoured, 2.0, 1.0) - 0.001 * np.arange(N_VIDEOS)
    return Feeds(
        user_ids=np.arange(1, n_users + 1),
        request_times=np.full(n_users, REQUEST_S),
        candidates=[candidates.copy() for _ in range(n_users)],
        scores=[scores.astype(np.float32) for _ in range(n_users)],
        tasks=[np.full((N_VIDEOS, 4), np.nan, np.float32) for _ in range(n_users)],
        histories=[np.array([0, 3, 4]) for _ in range(n_users)],
        relevant=[{1000, 1020, 1040, 1005 + u, 1056} for u in range(n_users)],
    )


def test_choose_picks_the_best_recall_that_meets_coverage_and_recall_budget():
    frame = pd.DataFrame(
        {
            "setting": ["base", "a", "b", "c", "d", "edge"],
            "recall@20": [0.200, 0.195, 0.199, 0.180, 0.192, 0.190],
            "coverage@20": [0.05, 0.31, 0.29, 0.50, 0.35, 0.40],
            "creator_gini": [0.9, 0.6, 0.7, 0.4, 0.5, 0.5],
        }
    )
    frame["recall_loss"] = 1 - frame["recall@20"] / 0.2
    choice = choose(frame)
    assert choice["met"] and choice["chosen"]["setting"] == "a"  # b lacks coverage, d and edge lose more
    assert (
        choose(frame[frame["setting"].isin(["base", "edge"])])["chosen"]["setting"] == "edge"
    )  # 5 % exactly

    none = choose(frame[frame["setting"].isin(["base", "b", "c"])])
    assert not none["met"] and none["chosen"] is None
    assert none["closest"]["most_coverage_within_recall_loss"]["setting"] == "b"
    assert none["closest"]["least_recall_loss_reaching_coverage"]["setting"] == "c"
    assert choose(frame, min_coverage=0.6)["closest"]["least_recall_loss_reaching_coverage"] is None


def test_sweep_runs_every_setting_through_the_real_rerank(catalog):
    frame = sweep(feeds_of(), catalog, BASE, GRID)
    assert len(frame) == 2 + 8 and list(frame["setting"][:2]) == [BASELINE, DEFAULT]
    assert frame["setting"].is_unique
    by_name = frame.set_index("setting")
    base = by_name.loc[BASELINE]
    # The ranked order: the 15 favoured videos, then 1005-1009: 4 of 5 relevant for every user.
    assert base["recall@20"] == pytest.approx(4 / 5) and base["recall_loss"] == 0
    assert base["coverage@20"] == pytest.approx(20 / N_VIDEOS)
    # Per feed 5 creators shown 3 times, 5 once, 10 never: Gini (5 * 25 + 3 * 75) / (20 * 20).
    assert base["creator_gini"] == pytest.approx(0.625)
    # Capped at one video per creator: 1000-1004, then 1005-1019: every creator once, creator 500's
    # 1020 and 1040 are gone (2 of 5 relevant).
    capped = by_name.loc["mmr_lambda=1.0, max_per_creator=1, exploration_slots=0"]
    assert capped["creator_gini"] == pytest.approx(0.0)
    assert capped["recall@20"] == pytest.approx(2 / 5) and capped["recall_loss"] == pytest.approx(0.5)
    # Two exploration slots replace the last two ranked videos by two distinct fresh ones.
    explored = by_name.loc["mmr_lambda=1.0, max_per_creator=20, exploration_slots=2"]
    assert explored["coverage@20"] >= base["coverage@20"]


def test_sweep_refuses_bad_grids_and_empty_windows(catalog):
    with pytest.raises(ConfigError, match="candidates"):
        settings(ServingConfig(), {"candidates": (100,)})
    with pytest.raises(ConfigError, match="mmr_lambda"):
        settings(ServingConfig(), {"mmr_lambda": (1.5,)})
    with pytest.raises(InvalidInput, match="too small"):
        sweep(feeds_of(0), catalog, BASE, GRID)


def test_report_and_plot_are_written(catalog, tmp_path):
    frame = sweep(feeds_of(), catalog, BASE, GRID)
    choice = choose(frame, min_coverage=0.35, max_recall_loss=0.6)
    assert choice["met"]
    assert choice["chosen"]["coverage@20"] >= 0.35 and choice["chosen"]["recall_loss"] <= 0.6
    result = assemble(frame, choice, settings(BASE, GRID), feeds_of(6), catalog, BASE, seed=0)
    assert set(result["test"]) == {BASELINE, DEFAULT, "chosen"}
    chosen = result["test"]["chosen"]
    assert chosen["setting"] == choice["chosen"]["setting"]
    lo, hi = chosen["ci95"]["recall@20"]
    assert lo <= chosen["recall@20"] <= hi
    described = {"mmr_lambda": 0.7, "max_per_creator": 2, "max_per_category": 20, "exploration_slots": 2}
    assert describe(described) == "λ 0.7, ≤2 per creator, no category cap, 2 exploration slots"
    text = markdown(result, "tiny", "plots/tradeoff_tiny.png")
    assert f"Chosen: **{describe(choice['chosen'])}**" in text and "![diversity trade-off]" in text
    assert text.count("\n| ") == 3 + len(frame) + 2  # test rows + grid rows + 2 header rows
    path = plot(result, tmp_path / "img" / "tradeoff.png", "tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_candidate_coverage_bounds_every_setting(catalog):
    feeds = feeds_of()
    for column in (feeds.candidates, feeds.scores, feeds.tasks):  # the first 30 candidates only
        column[:] = [values[:30] for values in column]
    assert candidate_coverage(feeds, catalog) == pytest.approx(30 / N_VIDEOS)
    frame = sweep(feeds, catalog, BASE, GRID)
    assert (frame["coverage@20"] <= candidate_coverage(feeds, catalog)).all()


def test_evaluate_takes_tradeoff_only():
    from reels.client.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--sources", "movielens", "--tradeoff-only", "--docs", ""])
    assert args.tradeoff_only and args.sources == ["movielens"] and args.docs == ""
    assert not build_parser().parse_args(["evaluate"]).tradeoff_only
