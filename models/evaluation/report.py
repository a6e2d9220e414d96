"""Writes the evaluation to docs/RESULTS.json, docs/RESULTS.md and docs/plots/*.png (never typed by hand)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reels.models.evaluation.bootstrap import MIN_TEST_USERS  # noqa: E402

RETRIEVAL_METHODS = ("two_tower", "als", "popularity", "trending", "random", "hindsight", "oracle")
RANKING_METHODS = ("mmoe", "ple", "shared_bottom")


# The stated recall@20 goals of the two-tower per data set (``targets``): over ALS and popularity on
# MovieLens-100k, a share of the oracle on synthetic data (where the generator's truth gives one).
RATIO_TARGETS: dict[str, dict[str, float]] = {
    "movielens": {"als": 1.2, "popularity": 2.0},
    "synthetic": {"oracle": 0.6},
}


def targets(retrieval: dict, ranking: dict, ratios: Mapping[str, float] = RATIO_TARGETS["movielens"]) -> dict:
    """The project's targets checked on one dataset's numbers: the two-tower's recall@20 over each
    baseline of ``ratios`` at least its value (``RATIO_TARGETS``; over the oracle: a share of it), where
    the results hold that ratio, and the served multi-task ranker's AUC >= shared-bottom's on every task
    (``<served>_auc_ge_shared_bottom``; the served architecture is ``_protocol.served_architecture``, MMoE
    when absent). A target is ``met`` only when the lower bound of its bootstrap interval clears it (ratios:
    lower bound >= target; AUC: lower bound of the served model minus shared-bottom >= 0). With fewer than
    ``MIN_TEST_USERS`` test users nothing is judged: ``{"not_judged": reason}``."""
    users = retrieval["_protocol"]["test_users"]
    if users < MIN_TEST_USERS:
        return {"not_judged": f"only {users} test users (fewer than {MIN_TEST_USERS}): the intervals are too "
                              "wide to say whether a target is met; use a larger test window"}  # fmt: skip
    out = {}
    for other, target in ratios.items():
        ratio = retrieval["_ratios"].get(f"two_tower/{other}", {}).get("recall@20")
        if ratio is None:
            continue
        lo = ratio["ci"][0]
        name = (
            "two_tower_recall@20_share_of_oracle" if other == "oracle" else f"two_tower_recall@20_vs_{other}"
        )
        out[name] = {
            "ratio": ratio["ratio"], "ci95": ratio["ci"], "target": target, "met": lo is not None and lo >= target,
        }  # fmt: skip
    served = ranking.get("_protocol", {}).get("served_architecture", "mmoe")
    if served == "shared_bottom":
        return out  # the baseline itself is served: there is no multi-task gain to judge
    model, shared = ranking[served], ranking["shared_bottom"]
    differences = ranking["_differences"][f"{served}-shared_bottom"]
    aucs = [k for k in model if k.startswith("auc_")]
    out[f"{served}_auc_ge_shared_bottom"] = {
        "per_task": {
            k: {served: model[k], "shared_bottom": shared[k], "difference_ci95": differences[k]} for k in aucs
        },
        "met": all(differences[k][0] >= 0 for k in aucs),
    }
    return out


def _gate_lines(gates: dict) -> list[str]:
    """The expert-utilisation table of the gated rankers (validation window): per gate, the mean weight
    of each expert it mixes, the mean per-row entropy against its maximum, and the entropy of the mean."""
    if not gates:
        return []
    rows = next((g["rows"] for by_gate in gates.values() for g in by_gate.values()), 0)
    lines = [
        "",
        f"Expert utilisation on {rows:,} validation impressions: mean gate weight per expert, mean per-row",
        "gate entropy H (nats; Hmax = a uniform gate that does not route) and entropy of the mean weights",
        "(low: every row sent to the same few experts).",
        "",
        "| model | gate | mean weight per expert | H | Hmax | H(mean) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for model, by_gate in gates.items():
        for gate, g in by_gate.items():
            weights = ", ".join(f"{e} {w:.2f}" for e, w in zip(g["experts"], g["mean_weight"], strict=True))
            lines.append(
                f"| {model} | {gate} | {weights} | {g['mean_entropy']:.3f} | {g['max_entropy']:.3f} "
                f"| {g['entropy_of_mean']:.3f} |"
            )
    return lines


def _settings_lines(settings: dict | None, *models: str, ranking: dict | None = None) -> list[str]:
    """One line naming the settings each of ``models`` was trained with, and whether the validation
    search picked them (the two-tower's are in ``settings``, each ranker's in its ranking row)."""
    if not settings:
        return []
    how = (
        "picked on the validation window (see the validation search below)"
        if settings.get("picked_on_validation")
        else "as configured (no validation search)"
    )
    parts = []
    for model in models:
        values = settings.get(model) if ranking is None else ranking[model].get("settings")
        if values:
            served = " (served)" if model == settings.get("served_ranker") else ""
            text = ", ".join(f"{k}={v}" for k, v in values.items())
            parts.append(f"{model}{served}: {text}")
    return ["", f"Settings, {how}: " + "; ".join(parts) + "."] if parts else []


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _transfer_lines(ranking: dict) -> list[str]:
    """The served ranker's task heads against every task's labels, and how the labels nest."""
    transfer = ranking.get("_task_transfer")
    if not transfer:
        return []
    tasks = list(transfer["auc"])
    served = ranking["_protocol"].get("served_architecture", "mmoe")
    lines = [
        "",
        f"How much the tasks share, on the test impressions: AUC of each {served} head's scores on every",
        "task's labels, and the share of one task's positives that are also another's. A head that ranks",
        "another task about as well as that task's own head, or labels nested in each other, mean one",
        "driver behind the tasks: experts kept apart per task then have little different to learn.",
        "",
        "| row task | "
        + " | ".join(f"its head's AUC on {t}" for t in tasks)
        + " | "
        + " | ".join(f"P({t} \\| row task)" for t in tasks)
        + " |",
        "|---|" + "---:|" * (2 * len(tasks)),
    ]
    for head in tasks:
        auc = " | ".join(f"{transfer['auc'][head][t]:.4f}" for t in tasks)
        given = " | ".join(f"{transfer['given'][head][t]:.2f}" for t in tasks)
        lines.append(f"| {head} | {auc} | {given} |")
    return lines


def _interval_lines(retrieval: dict) -> list[str]:
    """Recall@20 intervals per method, the ratios we claim with theirs, and each model as a share of the
    oracle (synthetic data only)."""
    lines = []
    bounds = [
        f"{m} [{retrieval[m]['ci95']['recall@20'][0]:.4f}, {retrieval[m]['ci95']['recall@20'][1]:.4f}]"
        for m in RETRIEVAL_METHODS if m in retrieval and "recall@20" in retrieval[m].get("ci95", {})
    ]  # fmt: skip
    if bounds:
        n = retrieval["_protocol"].get("bootstrap_resamples", "")
        lines += [
            "",
            f"recall@20, 95 % bootstrap intervals ({n} resamples of test users): " + ", ".join(bounds) + ".",
        ]
    for pair, by_metric in retrieval.get("_ratios", {}).items():
        r = by_metric.get("recall@20")
        if r and r["ci"][0] is not None:
            a, b = pair.split("/")
            what = f"{a} as a share of the oracle" if b == "oracle" else f"{a} / {b}"
            lines.append(f"- {what}, recall@20: {r['ratio']:.2f}x [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]")
    return lines


def _segment_lines(retrieval: dict) -> list[str]:
    """Recall@20 per method on the query users without and with a history before the test window, with
    the two-tower's ratios to popularity and to the hindsight feed on each."""
    segments = retrieval.get("_segments")
    if not segments:
        return []
    first = next(iter(segments.values()))  # every segment holds the same methods and ratios
    methods = [m for m in RETRIEVAL_METHODS if m != "random" and m in first["recall@20"]]
    pairs = list(first["ratios"])
    lines = [
        "",
        "recall@20 by the query user's history before the test window (no history: a new user, whose query",
        "holds only their own features and the request's context), 95 % intervals in brackets:",
        "",
        "| query users | users | "
        + " | ".join(methods)
        + " | "
        + " | ".join(p.replace("/", " / ") for p in pairs)
        + " |",
        "|---|---:|" + "---:|" * (len(methods) + len(pairs)),
    ]
    for name, seg in segments.items():
        cells = [
            f"{seg['recall@20'][m]:.4f} [{seg['ci95'][m][0]:.4f}, {seg['ci95'][m][1]:.4f}]" for m in methods
        ]
        for pair in pairs:
            r = seg["ratios"][pair]
            lo, hi = r["ci"]
            cells.append(f"{r['ratio']:.2f}x" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None else ""))
        lines.append(f"| {name} | {seg['users']:,} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    """The text of ``docs/RESULTS.md``: protocol, retrieval and ranking tables and targets per dataset."""
    lines = [
        "# Results",
        "",
        f"Written by `{results['command']}` on {results['date']} ({results['machine']}).",
        "",
    ]
    lines += [
        "Protocol: time split in whole days (each data set's windows below); models trained on the training",
        "window only; ALS (and, with",
        "the validation search, the two-tower and every ranker) tuned on the validation window; every number",
        "below is on the test window. Retrieval is full-catalog, excluding",
        "videos the user interacted with before the test window; each query user's query is their first test",
        "event (features and history as of then). See `models/evaluation/offline.py`.",
        "Intervals are 95 % bootstrap intervals resampling test users (a user's events move together; ratios",
        "and AUC differences on paired resamples). A target is met only when its interval's lower bound clears",
        f"it, and targets are not judged with fewer than {MIN_TEST_USERS} test users. On synthetic data the",
        "oracle ranks by the generator's own probability that the user views each video in the test",
        "window: how its feeds are filled (personal taste, trending and popular videos, favourite creators)",
        "times the chance of a view. No model that learns from the logs can rank better in expectation, so",
        "each model's share of the oracle is how much of what is learnable it has learnt.",
        "The hindsight row is the best feed one could show every query user alike, picked from the test",
        "window itself: each video scores the recall it earns among the other query users. It knows the",
        "future, so it is a reference, not a model: a model above it knows something about each user that no",
        "feed shared by everyone shows.",
        "",
    ]
    for name, data in results["datasets"].items():
        proto = data["retrieval"]["_protocol"]
        lines += [f"## {name}", ""]
        events = f", {proto['test_events']:,} test events" if "test_events" in proto else ""
        split = results.get("data", {}).get(name, {}).get("split")
        if split:
            day = {key: str(value)[:10] for key, value in split.items()}
            lines += [
                f"Windows: training from {day['start']}, validation from {day['valid_start']}, test from "
                f"{day['test_start']} until {day['end']} (exclusive).",
                "",
            ]
        lines += [
            f"Retrieval: {proto['test_users']} test users{events}, {proto['relevant_per_user']:.1f} relevant videos "
            f"each on average, catalog {proto['catalog']:,} videos.",
            "",
        ]
        cols = [c for c in data["retrieval"]["two_tower"] if "@" in c]
        lines.append("| method | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for method in RETRIEVAL_METHODS:
            if method not in data["retrieval"]:
                continue
            row = data["retrieval"][method]
            lines.append(f"| {method} | " + " | ".join(_fmt(row[c]) for c in cols) + " |")
        lines += _interval_lines(data["retrieval"])
        lines += _segment_lines(data["retrieval"])
        als = data["retrieval"]["als"].get("tuned_on_valid")
        if als:
            lines += [
                "",
                f"ALS picked on validation: factors={als['factors']}, regularization={als['regularization']}.",
            ]
        trending = data["retrieval"].get("trending", {}).get("tuned_on_valid")
        if trending:
            lines += [
                "",
                f"Trending (the most viewed videos of the training window's last days) picked on validation: "
                f"the last {trending['days']:g} day(s).",
            ]
        lines += _settings_lines(data.get("settings"), "two_tower")
        ranking = data["ranking"]
        methods = [m for m in RANKING_METHODS if m in ranking]
        served = ranking["_protocol"].get("served_architecture", "mmoe")
        cols = [c for c in ranking[methods[0]] if c.startswith(("auc_", "logloss_", "rmse_"))]
        lines += [
            "",
            f"Ranking on {ranking['_protocol']['test_impressions']:,} test impressions (served: {served}; the",
            "others trained beside it on the same features and training window, with the settings below):",
            "",
        ]
        lines.append("| model | " + " | ".join(cols) + " | train examples/s |")
        lines.append("|---|" + "---:|" * (len(cols) + 1))
        for method in methods:
            row = ranking[method]
            speed = row.get("train_examples_per_s")
            lines.append(
                f"| {method} | "
                + " | ".join(_fmt(row[c]) for c in cols)
                + f" | {f'{speed:,.0f}' if speed else '—'} |"
            )
        lines += _settings_lines(data.get("settings"), *methods, ranking=ranking)
        if "_differences" in ranking:
            lines += ["", f"AUC minus shared-bottom's, 95 % bootstrap intervals over {ranking['_protocol']['test_users']:,} "
                      "test users (paired resamples):", ""]  # fmt: skip
            for pair, diff in ranking["_differences"].items():
                lines.append(
                    f"- {pair}: " + ", ".join(f"{k} [{lo:+.4f}, {hi:+.4f}]" for k, (lo, hi) in diff.items())
                )
        lines += _transfer_lines(ranking)
        lines += _gate_lines(ranking.get("_gates", {}))
        if "targets" in data:
            lines += ["", "Targets (met only when the 95 % interval's lower bound clears the target):", ""]
            for key, t in data["targets"].items():
                if key == "not_judged":
                    lines.append(f"- not judged: {t}")
                elif "ratio" in t:
                    lo, hi = t.get("ci95", [None, None])
                    ci = f", 95 % CI [{lo:.2f}, {hi:.2f}]" if lo is not None else ""
                    lines.append(
                        f"- {key}: {t['ratio']:.2f}x{ci} (target {t['target']}x) — {'met' if t['met'] else 'NOT met'}"
                    )
                else:
                    lines.append(f"- {key}: {'met' if t['met'] else 'NOT met'}")
        if "search" in data:
            from reels.models.evaluation.search import markdown as search_markdown

            lines += ["", search_markdown(data["search"], name)]
        if "tradeoff" in data:
            from reels.models.evaluation.tradeoff import markdown as tradeoff_markdown

            lines += ["", tradeoff_markdown(data["tradeoff"], name, Path("plots") / f"tradeoff_{name}.png")]
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
        for method in (m for m in RETRIEVAL_METHODS if m in retrieval):
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
        if "tradeoff" in data:
            from reels.models.evaluation.tradeoff import plot as tradeoff_plot

            title = f"Diversity trade-off on {name}"
            written.append(tradeoff_plot(data["tradeoff"], out_dir / f"tradeoff_{name}.png", title))
    fig, axes = plt.subplots(
        1, len(results["datasets"]), figsize=(5 * len(results["datasets"]), 4), squeeze=False
    )
    for ax, (name, data) in zip(axes[0], results["datasets"].items(), strict=True):
        methods = [m for m in RANKING_METHODS if m in data["ranking"]]
        tasks = [c for c in data["ranking"][methods[0]] if c.startswith("auc_")]
        x, width = range(len(tasks)), 0.8 / len(methods)
        for i, method in enumerate(methods):
            ax.bar(
                [v + width * i for v in x],
                [data["ranking"][method][t] for t in tasks],
                width=width,
                label=method,
            )
        ax.set_xticks(
            [v + width * (len(methods) - 1) / 2 for v in x], [t.removeprefix("auc_") for t in tasks]
        )
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
