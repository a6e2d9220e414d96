"""A/B test simulation and analysis.

``simulate``: simulated users (the synthetic generator's ground truth) ask the serving pipeline for feeds
and respond to them with the generator's own response model (``workflows.synthetic.respond``); the
pipeline logs each feed to the exposure stream and the responses become events in the foundation schema.

``run_simulation``: the whole run behind ``reels ab-simulate`` on an online store that is already loaded:
sample known users, serve and answer their feeds, send the events to the stream, and write the logged
exposures and the streamed events as parquet next to ``simulation.json``.

``join`` + ``ab_report``: events are joined back onto the logged exposures and summarised per variant —
view rate, like rate and watch time per impression with 95% intervals (Wilson for rates, Student t for
the mean), tests against the control (two-proportion z-test, Welch t-test, and a Welch test over per-user
means, the unit that was randomised), and inverse-propensity estimates for the exploration slots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import redis
from scipy import stats

from reels.feature_store.layout import DEFAULT_PREFIX
from reels.feature_store.store import OnlineStore
from reels.feature_store.streams import EventProducer, read_event_streams, read_exposures
from reels.models.serving.config import ServingConfig
from reels.models.serving.experiment import Experiment
from reels.models.serving.request import Request
from reels.workflows.errors import InvalidInput, NotFound
from reels.workflows.manifest import FeatureArtifacts
from reels.workflows.offline_store import OfflineStore
from reels.workflows.spec import OOV
from reels.workflows.synthetic import CREATOR_ID_BASE, USER_ID_BASE, VIDEO_ID_BASE, GroundTruth, respond

if TYPE_CHECKING:  # the models (TensorFlow, FAISS) load only for a simulation, not for a report
    from reels.models.serving.pipeline import InProcessPipeline

Z95 = float(stats.norm.ppf(0.975))
METRICS = ("view_rate", "like_rate", "watch_time_s")
COLUMN = {"view_rate": "viewed", "like_rate": "liked", "watch_time_s": "watch_time_s"}
# What a simulation writes to its folder (``run_simulation``) and the report reads (``read_simulation``).
EXPOSURES_FILE, EVENTS_FILE, RUN_FILE = "exposures.parquet", "events.parquet", "simulation.json"


# ---- simulation ---------------------------------------------------------------------------------------------
def simulate(
    pipeline: InProcessPipeline,
    truth: GroundTruth,
    durations: pd.Series,
    users: Iterable[int],
    k: int,
    start_s: int,
    seed: int = 0,
    sessions: int = 1,
    position_bias: float = 0.06,
    first_event_id: int = 10**13,
    device: str = "ios",
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Events (``schema.EVENTS``) of ``sessions`` feeds per user, one hour apart from ``start_s``.

    Users answer with their end-of-period tastes (the latest the generator knows); the response noise
    is seeded per (seed, user, session), so a user answers the same feed the same way whichever
    variant or process serves it. Raw ids map onto ground truth by the generator's id bases.
    """
    users = [int(u) for u in users]
    frames = []
    next_id = first_event_id
    for session in range(sessions):
        for j, user in enumerate(users):
            t = start_s + session * 3600 + j  # distinct request times keep requests apart in the join
            rec = pipeline.recommend(Request(user, k, device=device, request_time_s=t))
            if len(rec.video_ids) == 0:
                continue
            u = user - USER_ID_BASE
            video = rec.video_ids - VIDEO_ID_BASE
            if (
                not 0 <= u < len(truth.taste_end)
                or video.min() < 0
                or video.max() >= len(truth.video_quality)
            ):
                raise InvalidInput(
                    f"user {user} or its videos are not in the ground truth (not synthetic data?)"
                )
            rng = np.random.default_rng([seed, user, session])
            favourite = (truth.favourite_creators[u][None, :] == truth.video_creator[video][:, None]).any(
                axis=1
            )
            duration = durations.reindex(rec.video_ids).to_numpy(dtype=np.float32)
            position = np.arange(len(video))
            r = respond(
                truth.taste_end[u][truth.video_category[video]], favourite, truth.video_quality[video],
                position, duration, position_bias, rng,
            )  # fmt: skip
            # Like the generator: the next video starts after the time watched plus a swipe.
            step = r.watch_time_s.astype(np.float64) + 0.5 + rng.exponential(1.0, len(video))
            seconds = t + np.cumsum(step) - step
            frames.append(
                pd.DataFrame(
                    {
                        "event_id": next_id + position,
                        "user_id": user,
                        "video_id": rec.video_ids.astype(np.int64),
                        "creator_id": CREATOR_ID_BASE + truth.video_creator[video].astype(np.int64),
                        "timestamp": pd.to_datetime(np.round(seconds * 1000).astype(np.int64), unit="ms"),
                        "position": position.astype(np.int64),
                        "device": device,
                        "watch_time_s": r.watch_time_s,
                        "video_duration_s": duration,
                        **r.flags(),
                    }
                )
            )
            next_id += len(video)
            if progress:
                progress(1)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_events(client: redis.Redis, prefix: str = DEFAULT_PREFIX, chunk: int = 5_000) -> pd.DataFrame:
    """The event stream (``{prefix}:events``, or every shard of it; field ``event`` = JSON) as a frame."""
    frame = pd.DataFrame(read_event_streams(client, prefix, chunk))
    if len(frame):
        frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    return frame


def read_logs(client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What an A/B analysis reads from Redis: the exposure log (one row per served item) and the events."""
    return read_exposures(client, prefix), read_events(client, prefix)


# ---- the simulation run -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimulationSpec:
    """What to simulate: ``users`` known users sampled with ``seed``, ``sessions`` feeds of ``k`` each."""

    users: int = 2000
    sessions: int = 1
    k: int = 20
    seed: int = 0  # the user sample and the response noise
    start: str | None = None  # first request time; None: the end of the data, so fresh videos exist


@dataclass(frozen=True)
class SimulationRun:
    """What one simulation served and wrote; ``simulation.json`` in ``directory`` records it."""

    directory: Path
    command: str
    start: str
    users: int
    sessions: int
    feeds: int
    events: int
    exposures_written: int
    exposures_lost: int
    seconds: float
    feeds_per_variant: dict[str, int] = field(default_factory=dict)

    @property
    def exposures_path(self) -> Path:
        """The logged exposures, one row per served item."""
        return self.directory / EXPOSURES_FILE

    @property
    def events_path(self) -> Path:
        """The events as the stream holds them."""
        return self.directory / EVENTS_FILE


def sample_users(features: FeatureArtifacts, n: int, seed: int = 0, known_only: bool = True) -> np.ndarray:
    """``n`` raw user ids of a feature build drawn without replacement (all of them when it has fewer);
    ``known_only`` leaves out users whose encoded id is OOV (too rare to be in the vocabulary)."""
    users = pd.read_parquet(features.users_path, columns=["user_id", "raw_user_id"])
    if known_only:
        users = users[users["user_id"] > OOV]
    ids = users["raw_user_id"].to_numpy()
    return np.random.default_rng(seed).choice(ids, min(n, len(ids)), replace=False)


def load_ground_truth(offline: OfflineStore) -> GroundTruth:
    """The synthetic generator's ground truth of a store (``NotFound`` for any other source)."""
    path = offline.root / "ground_truth.npz"
    if not path.exists():
        raise NotFound(f"no ground truth in {offline.root}: simulation needs `reels data synthetic`")
    return GroundTruth.load(path)


def run_simulation(
    store: OnlineStore,
    model_dir: Path,
    features: FeatureArtifacts,
    offline: OfflineStore,
    out: Path,
    spec: SimulationSpec,
    serving: ServingConfig | None = None,
    experiment: Experiment | None = None,
    position_bias: float = 0.06,
    command: str = "",
    progress: Callable[[int], None] | None = None,
) -> SimulationRun:
    """Simulate ``spec`` against ``model_dir`` served in process from ``store`` (``features`` loaded into
    it), with the users' ground truth and video durations from the synthetic ``offline`` store: the feeds
    go to the store's exposure log, the responses to its event stream, and both, read back from Redis, to
    ``out`` as parquet with ``simulation.json``. ``progress`` gets 1 per feed."""
    from reels.models.serving.pipeline import InProcessPipeline

    started = time.time()
    truth = load_ground_truth(offline)
    users = np.sort(sample_users(features, spec.users, spec.seed))
    start = pd.Timestamp(spec.start) if spec.start else pd.Timestamp(features.manifest().split["end"])
    durations = offline.read_table("videos").set_index("video_id")["duration_s"]
    pipeline = InProcessPipeline(model_dir, store, serving, experiment)
    events = simulate(
        pipeline, truth, durations, users, spec.k, int(start.timestamp()), seed=spec.seed,
        sessions=spec.sessions, position_bias=position_bias, progress=progress,
    )  # fmt: skip
    prefix = store.keys.prefix
    EventProducer(store.client, prefix).send(events.to_dict("records"))
    exposures, streamed = read_logs(store.client, prefix)
    log = pipeline.rerank.exposures  # None when serving.log_exposures is off
    feeds = exposures.drop_duplicates("request_id")
    run = SimulationRun(
        directory=out, command=command or repr(spec), start=str(start), users=len(users),
        sessions=spec.sessions, feeds=len(feeds), events=len(events),
        exposures_written=log.written if log else 0, exposures_lost=log.failed if log else 0,
        seconds=round(time.time() - started, 1),
        feeds_per_variant={str(v): int(n) for v, n in feeds["variant"].value_counts().items()},
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    exposures.to_parquet(run.exposures_path, index=False)
    streamed.to_parquet(run.events_path, index=False)
    record = {k: v for k, v in asdict(run).items() if k != "directory"}
    (out / RUN_FILE).write_text(json.dumps(record, indent=2))
    return run


def read_simulation(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict | None]:
    """The exposures and events a simulation wrote to ``folder``, and its ``simulation.json`` (or None)."""
    folder = Path(folder)
    if not (folder / EXPOSURES_FILE).exists():
        raise NotFound(f"no exposures in {folder}: run `reels ab-simulate` first (or report on --redis)")
    run = folder / RUN_FILE
    return (
        pd.read_parquet(folder / EXPOSURES_FILE),
        pd.read_parquet(folder / EVENTS_FILE),
        json.loads(run.read_text()) if run.exists() else None,
    )


# ---- analysis -----------------------------------------------------------------------------------------------
def join(exposures: pd.DataFrame, events: pd.DataFrame, window_s: int = 86400) -> pd.DataFrame:
    """One row per served item with its outcome: ``viewed`` (an event that was not a skip), ``liked``,
    ``watch_time_s`` (0 without an event).

    Events carry no request id (the foundation schema), so each event is attributed to the latest feed
    that showed this video to this user at or before the event (within ``window_s``); an item with no
    event counts as an impression that was not viewed.
    """
    items = exposures.copy()
    items["request_ms"] = items["request_time_s"].astype(np.int64) * 1000
    if len(events):
        ev = events[["user_id", "video_id", "timestamp", "skipped", "liked", "watch_time_s"]].copy()
        ev["event_ms"] = ev["timestamp"].astype("datetime64[ns]").astype(np.int64) // 10**6
        ev = ev.astype({"user_id": np.int64, "video_id": np.int64}).sort_values("event_ms")
        served = items[["request_id", "user_id", "video_id", "request_ms"]].sort_values("request_ms")
        matched = pd.merge_asof(
            ev, served, left_on="event_ms", right_on="request_ms", by=["user_id", "video_id"],
            direction="backward", tolerance=window_s * 1000,
        ).dropna(subset=["request_id"])  # fmt: skip
        matched = matched.drop_duplicates(["request_id", "video_id"])  # first event per served item
        items = items.merge(
            matched[["request_id", "video_id", "skipped", "liked", "watch_time_s"]],
            on=["request_id", "video_id"], how="left",
        )  # fmt: skip
    else:
        items[["skipped", "liked", "watch_time_s"]] = np.nan
    has_event = items["skipped"].notna()
    items["viewed"] = has_event & ~items["skipped"].fillna(True).astype(bool)
    items["liked"] = items["liked"].fillna(False).astype(bool)
    items["watch_time_s"] = items["watch_time_s"].fillna(0.0).astype(np.float64)
    items["has_event"] = has_event
    return items.drop(columns=["request_ms", "skipped"])


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaNs for n = 0)."""
    if n == 0:
        return (np.nan, np.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(centre - half), float(centre + half))


def mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student t interval of a mean (NaNs below two values)."""
    if len(x) < 2:
        return (np.nan, np.nan)
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return (float(x.mean() - half), float(x.mean() + half))


def two_proportion_z(s1: float, n1: int, s2: float, n2: int) -> float:
    """Two-sided p-value of H0: equal proportions (pooled standard error)."""
    pooled = (s1 + s2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return float(2 * stats.norm.sf(abs(s1 / n1 - s2 / n2) / se))


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if a.std() == 0 and b.std() == 0:  # constant samples: t is undefined, the answer is not
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _metrics(items: pd.DataFrame) -> dict:
    n = len(items)
    out = {"users": int(items["user_id"].nunique()), "requests": int(items["request_id"].nunique()),
           "impressions": n}  # fmt: skip
    for metric in ("view_rate", "like_rate"):
        s = float(items[COLUMN[metric]].sum())
        out[metric] = {"value": s / n if n else np.nan, "ci": wilson(s, n)}
    watch = items["watch_time_s"].to_numpy()
    out["watch_time_s"] = {"value": float(watch.mean()) if n else np.nan, "ci": mean_ci(watch)}
    return out


def _exploration(items: pd.DataFrame) -> dict:
    """Exploration slots only: what was logged, and IPS / self-normalised IPS estimates of two other
    slot policies from the same log — greedy (eps = 0: always the best fresh video) and uniform
    (eps = 1). Target probability of the logged video: (1 - eps') [greedy] + eps' / pool."""
    slots = items[items["pool"] > 0]
    out = {"slots": len(slots), "explored_share": float(slots["explored"].mean()) if len(slots) else np.nan}
    if len(slots) == 0:
        return out
    p = slots["propensity"].to_numpy(dtype=np.float64)
    out["min_propensity"] = float(p.min())
    for metric in ("view_rate", "like_rate"):
        r = slots[COLUMN[metric]].to_numpy(dtype=np.float64)
        out[metric] = {"logged": float(r.mean())}
        for name, eps in (("greedy", 0.0), ("uniform", 1.0)):
            target = (1 - eps) * slots["greedy"].to_numpy() + eps / slots["pool"].to_numpy()
            w = target / p
            out[metric][f"ips_{name}"] = float((w * r).mean())
            out[metric][f"snips_{name}"] = float((w * r).sum() / w.sum()) if w.sum() > 0 else np.nan
    return out


def ab_report(items: pd.DataFrame, variants: list[str] | None = None) -> dict:
    """Per-variant metrics and tests against the control (the first of ``variants``, by default the
    variants in order of first appearance)."""
    names = variants or list(dict.fromkeys(items["variant"]))
    names = [v for v in names if (items["variant"] == v).any()]
    if not names:
        raise InvalidInput("no logged exposures to report on")
    control = items[items["variant"] == names[0]]
    per_user = {
        v: items[items["variant"] == v].groupby("user_id")[list(COLUMN.values())].mean() for v in names
    }
    report = {
        "experiment": ", ".join(sorted(set(items["experiment"].astype(str)))),
        "control": names[0],
        "variants": {},
    }
    for v in names:
        part = items[items["variant"] == v]
        entry = _metrics(part) | {"exploration": _exploration(part)}
        if v != names[0]:
            comparison = {}
            for metric in METRICS:
                col = COLUMN[metric]
                a, b = part[col].to_numpy(dtype=np.float64), control[col].to_numpy(dtype=np.float64)
                p = (
                    welch_p(a, b)
                    if metric == "watch_time_s"
                    else two_proportion_z(a.sum(), len(a), b.sum(), len(b))
                )
                comparison[metric] = {
                    "diff": float(a.mean() - b.mean()),
                    "relative": float(a.mean() / b.mean() - 1) if b.mean() else np.nan,
                    "p": p,
                    "p_users": welch_p(per_user[v][col].to_numpy(), per_user[names[0]][col].to_numpy()),
                }
            entry["vs_control"] = comparison
        report["variants"][v] = entry
    return report


# ---- presentation -------------------------------------------------------------------------------------------
def _fmt(metric: str, value: float) -> str:
    return f"{value:.2f}" if metric == "watch_time_s" else f"{value:.2%}"


def rows(report: dict) -> dict[str, list[list[str]]]:
    """The report as three tables of strings (headers first): metrics, tests, exploration."""
    metrics = [["variant", "users", "impressions", "view rate [95% CI]", "like rate [95% CI]",
                "watch time s [95% CI]"]]  # fmt: skip
    tests = [["variant vs " + report["control"], "metric", "difference", "relative", "p (impressions)",
              "p (users)"]]  # fmt: skip
    explore = [["variant", "slots", "explored", "min propensity", "view rate logged", "IPS greedy",
                "IPS uniform", "SNIPS greedy", "SNIPS uniform"]]  # fmt: skip
    for v, e in report["variants"].items():
        cells = [v, f"{e['users']:,}", f"{e['impressions']:,}"]
        for metric in METRICS:
            m = e[metric]
            lo, hi = m["ci"]
            cells.append(f"{_fmt(metric, m['value'])} [{_fmt(metric, lo)}, {_fmt(metric, hi)}]")
        metrics.append(cells)
        for metric, c in e.get("vs_control", {}).items():
            sign = "+" if c["diff"] >= 0 else ""
            diff = (
                f"{sign}{c['diff']:.2f} s" if metric == "watch_time_s" else f"{sign}{c['diff'] * 100:.2f} pp"
            )
            tests.append([v, metric, diff, f"{c['relative']:+.1%}", f"{c['p']:.3g}", f"{c['p_users']:.3g}"])
        x = e["exploration"]
        if x["slots"]:
            vr = x["view_rate"]
            explore.append([v, f"{x['slots']:,}", f"{x['explored_share']:.1%}", f"{x['min_propensity']:.3f}",
                            f"{vr['logged']:.2%}", f"{vr['ips_greedy']:.2%}", f"{vr['ips_uniform']:.2%}",
                            f"{vr['snips_greedy']:.2%}", f"{vr['snips_uniform']:.2%}"])  # fmt: skip
        else:
            explore.append([v, "0", "-", "-", "-", "-", "-", "-", "-"])
    return {"metrics": metrics, "tests": tests, "exploration": explore}


def markdown(report: dict, header: str) -> str:
    """``header`` and the report's three tables in markdown (what ``reels ab-report --record`` appends)."""
    parts = [header.rstrip("\n"), ""]
    for table in rows(report).values():
        parts.append("| " + " | ".join(table[0]) + " |")
        parts.append("|" + "---|" * len(table[0]))
        parts.extend("| " + " | ".join(r) + " |" for r in table[1:])
        parts.append("")
    return "\n".join(parts)
