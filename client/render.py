"""Human-readable summaries printed by the CLI (rich tables)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.table import Table

from reels.client.record import metric_text
from reels.workflows.manifest import SPLITS, FeatureArtifacts
from reels.workflows.spec import BINARY_LABELS, HISTORY

if TYPE_CHECKING:
    import pandas as pd

    from reels.client.triton_client import Recommendations
    from reels.deploy.retrain import RetrainResult
    from reels.workflows.drift import DriftCheck


def print_table(
    title: str, rows: Sequence[Sequence[str]], console: Console, left: Sequence[str] = ()
) -> None:
    """``rows`` (the header first) as a table; columns named in ``left`` align left, the rest right."""
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="left" if column in left else "right")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)


def print_feature_summary(artifacts: FeatureArtifacts, console: Console) -> None:
    """A feature build: its split, label rates per window, vocabulary sizes, row counts and timings."""
    manifest = artifacts.manifest()
    workflow = artifacts.load_workflow()
    schema = workflow.output_schema

    bounds = manifest.split
    console.print(
        f"time split ({manifest.device}, data {manifest.store_fingerprint}): train from {bounds['start'][:10]}, "
        f"valid from {bounds['valid_start'][:10]}, test from {bounds['test_start'][:10]} until {bounds['end'][:10]}"
    )
    splits = Table(title="Label rates per window")
    for col in ("window", "events", *BINARY_LABELS, "watch_frac"):
        splits.add_column(col, justify="right")
    for name in SPLITS:
        frame = artifacts.read_split(name, columns=[*BINARY_LABELS, "watch_fraction"])
        splits.add_row(
            name, f"{len(frame):,}", *(f"{frame[c].mean():.3f}" for c in BINARY_LABELS),
            f"{frame['watch_fraction'].mean():.3f}",
        )  # fmt: skip
    console.print(splits)

    vocab = Table(title="Categorical vocabularies (ids 0-2: padding, null, OOV)")
    vocab.add_column("feature")
    vocab.add_column("cardinality", justify="right")
    for column in schema:
        sizes = column.properties.get("embedding_sizes")
        if sizes:
            vocab.add_row(column.name, f"{sizes['cardinality']:,}")
    vocab.add_row(HISTORY, "shares video_id's")
    console.print(vocab)

    import pandas as pd  # only the summaries that read parquet need pandas

    users = pd.read_parquet(artifacts.users_path)
    videos = pd.read_parquet(artifacts.videos_path)
    raw_of = pd.Series(videos["raw_video_id"].to_numpy(), index=videos["video_id"].to_numpy())
    raw_of = raw_of[~raw_of.index.duplicated()]
    active = users[[int(np.count_nonzero(h)) > 0 for h in users[HISTORY]]]
    if len(active):
        example = active.iloc[0]
        recent = [int(v) for v in example[HISTORY] if v > 2][:5]
        console.print(
            f"user {example['raw_user_id']} (model id {example['user_id']}): last viewed videos "
            f"{[int(raw_of.get(v, -1)) for v in recent]} (model ids {recent})"
        )
    timings = manifest.timings
    console.print(
        f"features in [bold]{artifacts.root}[/]: {manifest.rows['events']:,} events, "
        f"{len(users):,} users, {len(videos):,} videos; aggregates+join {timings['aggregates_s']:.1f}s, "
        f"fit {timings['fit_s']:.1f}s, transform {timings['transform_s']:.1f}s"
    )


def print_training_summary(manifest: dict, directory: Path, console: Console) -> None:
    """A trained version: examples, epochs, speed and final loss per model, and the FAISS index built."""
    metrics = manifest["metrics"]
    table = Table(title=f"Trained models, version {manifest['version']}")
    for col in ("model", "examples", "epochs", "seconds", "examples/s", "final loss"):
        table.add_column(col, justify="right")
    for name in ("two_tower", "ranker"):
        m = metrics[name]
        table.add_row(
            name, f"{m['examples']:,}", str(m["epochs"]), f"{m['seconds']:.1f}", f"{m['examples_per_s']:,.0f}",
            f"{m['final_loss']:.4f}",
        )  # fmt: skip
    console.print(table)
    index = metrics["index"]
    console.print(
        f"FAISS {index['kind']} over {index['items']:,} videos, built in {index['build_s']:.2f}s, "
        f"recall@{index['k']} vs exact {index['recall_at_k']:.3f}"
    )
    console.print(
        f"artifacts: [bold]{directory}[/] (manifest.json lists schema, configs, data and library versions)"
    )


def print_recommendations(
    recs: Recommendations, videos: pd.DataFrame, console: Console, title: str | None = None
) -> None:
    """A feed as a table: video, category, creator, score, per-task predictions, explanation."""
    table = Table(
        title=title or f"For user {recs.user_id} (fallback: {recs.fallback_reason}, variant: {recs.variant})"
    )
    for col in ("#", "video", "category", "creator", "score", "p(view)", "p(like)", "shown with p",
                "because you watched"):  # fmt: skip
        table.add_column(col, justify="right" if col not in ("category",) else "left")
    meta = videos.reindex(recs.video_ids)
    for i, vid in enumerate(recs.video_ids):
        because = recs.explanation_ids[i]
        because_text = "—" if because < 0 else f"{because} ({videos['category'].get(because, '?')})"
        view, like = recs.task_predictions["view"][i], recs.task_predictions["liked"][i]
        table.add_row(
            str(i + 1), str(vid), str(meta["category"].iloc[i]), str(meta["creator_id"].iloc[i]),
            f"{recs.scores[i]:.3f}", "—" if np.isnan(view) else f"{view:.2f}", "—" if np.isnan(like) else f"{like:.2f}",
            f"{recs.propensities[i]:.3f}", because_text,
        )  # fmt: skip
    console.print(table)


def print_drift(check: DriftCheck, console: Console) -> None:
    """PSI per feature, drifted ones marked."""
    rows = [("feature", "kind", "psi", "")]
    rows += [(r.feature, r.kind, f"{r.psi:.4f}", "DRIFT" if r.psi > check.threshold else "")
             for r in check.table.itertuples()]  # fmt: skip
    title = f"PSI: training window vs {'+'.join(check.windows)} (threshold {check.threshold})"
    print_table(title, rows, console, left=("feature", "kind", ""))


def print_exposure(report: dict, console: Console) -> None:
    """Creator-exposure concentration of the catalog and of the feeds before and after the re-rank."""
    rows = [("", "Gini", "top-1% creators' share", "creators exposed")]
    for name in ("catalog", "before_rerank", "after_rerank"):
        r = report[name]
        rows.append((name.replace("_", " "), f"{r['gini']:.3f}", f"{r['top1pct_share']:.1%}",
                     f"{r['creators_exposed']:,}"))  # fmt: skip
    title = (
        f"Creator exposure over {report['requests']} feeds of {report['k']} ({report['creators']} creators)"
    )
    print_table(title, rows, console)


def print_ab_report(report: dict, origin: str, console: Console) -> None:
    """An A/B report's three tables: metrics per variant, tests against the control, exploration."""
    from reels.models.evaluation.abtest import rows

    titles = {"metrics": f"A/B test {report['experiment']!r} per variant (from {origin})",
              "tests": "Differences vs the control: two-proportion z / Welch t per impression; Welch t per user",
              "exploration": "Exploration slots: logged outcome and IPS estimates of other slot policies"}  # fmt: skip
    for name, table in rows(report).items():
        print_table(titles[name], table, console, left=(table[0][0],))


def print_gate(result: RetrainResult, console: Console) -> None:
    """The promotion gate of a retrain, metric by metric, and how long each part took."""
    rows = [("metric", "candidate", "serving", "threshold", "passed")]
    for name, check in result.decision.checks.items():
        values = (metric_text(check[k]) for k in ("candidate", "serving", "threshold"))
        rows.append((name, *values, "yes" if check["passed"] else "[red]no"))
    serving = result.serving_dir.name if result.serving_dir else "(none)"
    title = f"promotion gate: candidate {result.candidate_dir.name} vs serving {serving} on the latest window"
    print_table(title, rows, console, left=rows[0])
    console.print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
