"""Writes the evaluation to docs/RESULTS.json, docs/RESULTS.md and docs/plots/*.png (never typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RETRIEVAL_METHODS = ("two_tower", "als", "popularity", "random")
RANKING_METHODS = ("mmoe", "shared_bottom")


def targets(dataset: dict) -> dict:
    """The project's targets checked on one dataset's numbers: two-tower recall@20 ratios over ALS (>= 1.2x)
    and popularity (>= 2x), and MMoE AUC >= shared-bottom on every task, each with ``met``."""
    tt, als, pop = (dataset[m]["recall@20"] for m in ("two_tower", "als", "popularity"))
    out = {
        "two_tower_recall@20_vs_als": {"ratio": tt / als if als else float("inf"), "target": 1.2},
        "two_tower_recall@20_vs_popularity": {"ratio": tt / pop if pop else float("inf"), "target": 2.0},
    }
    for key in out.values():
        key["met"] = key["ratio"] >= key["target"]
    mmoe, shared = dataset["mmoe"], dataset["shared_bottom"]
    aucs = [k for k in mmoe if k.startswith("auc_")]
    out["mmoe_auc_ge_shared_bottom"] = {
        "per_task": {k: {"mmoe": mmoe[k], "shared_bottom": shared[k]} for k in aucs},
        "met": all(mmoe[k] >= shared[k] for k in aucs),
    }
    return out


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(results: dict) -> str:
    """The text of ``docs/RESULTS.md``: protocol, retrieval and ranking tables and targets per dataset."""
    lines = [
        "# Results",
        "",
        f"Written by `{results['command']}` on {results['date']} ({results['machine']}).",
        "",
    ]
    lines += [
        "Protocol: time split by whole days; models trained on the training window only; ALS tuned on the",
        "validation window; every number below is on the test window. Retrieval is full-catalog, excluding",
        "videos the user interacted with before the test window; each query user's query is their first test",
        "event (features and history as of then). See `models/evaluation/offline.py`.",
        "",
    ]
    for name, data in results["datasets"].items():
        proto = data["retrieval"]["_protocol"]
        lines += [f"## {name}", ""]
        lines += [
            f"Retrieval: {proto['test_users']} test users, {proto['relevant_per_user']:.1f} relevant videos each on "
            f"average, catalog {proto['catalog']:,} videos.",
            "",
        ]
        cols = [c for c in data["retrieval"]["two_tower"] if "@" in c]
        lines.append("| method | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for method in RETRIEVAL_METHODS:
            row = data["retrieval"][method]
            lines.append(f"| {method} | " + " | ".join(_fmt(row[c]) for c in cols) + " |")
        als = data["retrieval"]["als"].get("tuned_on_valid")
        if als:
            lines += [
                "",
                f"ALS picked on validation: factors={als['factors']}, regularization={als['regularization']}.",
            ]
        ranking = data["ranking"]
        cols = [c for c in ranking["mmoe"] if c.startswith(("auc_", "logloss_", "rmse_"))]
        lines += ["", f"Ranking on {ranking['_protocol']['test_impressions']:,} test impressions:", ""]
        lines.append("| model | " + " | ".join(cols) + " | train examples/s |")
        lines.append("|---|" + "---:|" * (len(cols) + 1))
        for method in RANKING_METHODS:
            row = ranking[method]
            lines.append(
                f"| {method} | "
                + " | ".join(_fmt(row[c]) for c in cols)
                + f" | {row['train_examples_per_s']:,.0f} |"
            )
        if "targets" in data:
            lines += ["", "Targets:", ""]
            for key, t in data["targets"].items():
                if "ratio" in t:
                    lines.append(
                        f"- {key}: {t['ratio']:.2f}x (target {t['target']}x) — {'met' if t['met'] else 'NOT met'}"
                    )
                else:
                    lines.append(f"- {key}: {'met' if t['met'] else 'NOT met'}")
        lines += ["", f"![recall@K]({Path('plots') / f'recall_{name}.png'})", ""]
    lines += ["## Reproduce", "", "```bash", results["command"], "```", ""]
    lines += ["Seeds, data fingerprints and library versions are in `docs/RESULTS.json`.", ""]
    return "\n".join(lines)


def plots(results: dict, out_dir: Path) -> list[Path]:
    """Write ``recall_<dataset>.png`` (recall@K per method) and ``ranking_auc.png`` into ``out_dir``;
    returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in results["datasets"].items():
        retrieval = data["retrieval"]
        ks = sorted(int(c.split("@")[1]) for c in retrieval["two_tower"] if c.startswith("recall@"))
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in RETRIEVAL_METHODS:
            ax.plot(ks, [retrieval[method][f"recall@{k}"] for k in ks], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (test)")
        ax.set_title(f"Retrieval on {name}")
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"recall_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(
        1, len(results["datasets"]), figsize=(5 * len(results["datasets"]), 4), squeeze=False
    )
    for ax, (name, data) in zip(axes[0], results["datasets"].items(), strict=True):
        tasks = [c for c in data["ranking"]["mmoe"] if c.startswith("auc_")]
        x = range(len(tasks))
        for i, method in enumerate(RANKING_METHODS):
            ax.bar(
                [v + 0.4 * i for v in x], [data["ranking"][method][t] for t in tasks], width=0.4, label=method
            )
        ax.set_xticks([v + 0.2 for v in x], [t.removeprefix("auc_") for t in tasks])
        ax.set_ylim(0.5, 1.0)
        ax.set_ylabel("AUC (test)")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    path = out_dir / "ranking_auc.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write(results: dict, docs: Path = Path("docs")) -> list[Path]:
    """Write ``RESULTS.json``, ``RESULTS.md`` and the plots under ``docs``, overwriting; returns the paths."""
    docs.mkdir(parents=True, exist_ok=True)
    flat = {
        name: {**{k: v for k, v in d["retrieval"].items()}, **d["ranking"]}
        for name, d in results["datasets"].items()
    }
    document = {
        **flat,
        **{k: v for k, v in results.items() if k != "datasets"},
        "details": results["datasets"],
    }
    (docs / "RESULTS.json").write_text(json.dumps(document, indent=2, default=float) + "\n")
    (docs / "RESULTS.md").write_text(markdown(results))
    return [docs / "RESULTS.json", docs / "RESULTS.md", *plots(results, docs / "plots")]
