"""The one results recorder: what `--record` writes into docs/. Benchmarks go to BENCHMARKS.md (a section
each) and BENCHMARKS.json (a key each), retrain gates to RETRAIN.md and RETRAIN.json (a list), and A/B
reports and tuning tables are appended as sections to EXPERIMENTS.md and TUNING.md. Every entry names the
machine it was measured on (``machine``). Standard library only: the light commands import it too."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reels.deploy.retrain import RetrainResult

DOCS = Path("docs")


def machine() -> str:
    """Cores, CPU model, memory and OS of this machine, as every recorded number states it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: the platform's answer stands
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB RAM, {platform.system()} {platform.release()}"


def append_section(path: Path, text: str, title: str) -> Path:
    """Append the markdown ``text`` to ``path`` after a blank line, starting the file with ``title``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else title
    path.write_text(existing.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")
    return path


def _update_json(path: Path, empty: Any, change: Callable[[Any], Any]) -> Path:
    document = json.loads(path.read_text()) if path.exists() else empty
    path.write_text(json.dumps(change(document), indent=2, default=str) + "\n")
    return path


def benchmark(sections: dict[str, Any], markdown: str, docs: Path = DOCS) -> tuple[Path, Path]:
    """Store each of ``sections`` under its key of BENCHMARKS.json (replacing the previous run's) and
    append ``markdown`` to BENCHMARKS.md; the two paths."""
    md = append_section(docs / "BENCHMARKS.md", markdown, "# Benchmarks\n")
    return md, _update_json(docs / "BENCHMARKS.json", {}, lambda data: {**data, **sections})


def metric_text(value: float | None) -> str:
    """A metric as the recorded tables print it ("-" for none)."""
    return "-" if value is None else f"{value:.4f}"


def retrain(result: RetrainResult, command: str, docs: Path = DOCS) -> Path:
    """Append a retrain's gate to RETRAIN.md and its numbers to RETRAIN.json; the markdown path."""
    from reels.models.registry import load_manifest

    gate = load_manifest(result.candidate_dir)["gate"]  # written by the retrain, numpy-free JSON
    entry = {
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "command": command,
        "cluster": {"kind": result.cluster.kind, "workers": result.cluster.workers},
        "candidate_version": int(result.candidate_dir.name), "gate": gate,
        "timings_s": {k: round(v, 1) for k, v in result.timings.items()},
    }  # fmt: skip
    docs.mkdir(parents=True, exist_ok=True)
    _update_json(docs / "RETRAIN.json", [], lambda history: [*history, entry])
    window, candidate = gate["window"], gate["candidate"]
    lines = [
        f"### Retrain — {entry['date']}",
        "",
        f"Machine: {entry['machine']}. Command: `{command}`. Dask {result.cluster.kind} "
        f"({result.cluster.workers} worker(s)). Candidate version {entry['candidate_version']} vs serving "
        f"version {gate['serving_version']} on the window {window['test_start']} .. {window['end']} "
        f"({candidate['test_users']} users, {candidate['test_impressions']} impressions). "
        f"Timings (s): {entry['timings_s']}.",
        "",
        "| metric | candidate | serving | threshold | passed |",
        "|---|---:|---:|---:|---|",
    ]
    for name, check in gate["checks"].items():
        lines.append(f"| {name} | {metric_text(check['candidate'])} | {metric_text(check['serving'])} | "
                     f"{metric_text(check['threshold'])} | {'yes' if check['passed'] else 'no'} |")  # fmt: skip
    other = sorted(set(candidate) - set(gate["checks"]) - {"test_users", "test_impressions"})
    serving = gate["serving"] or {}
    lines += ["", "Other metrics, candidate / serving: "
              + ", ".join(f"{k} {metric_text(candidate[k])} / {metric_text(serving.get(k))}" for k in other)
              + f". Promoted: {'yes' if gate['passed'] else 'no'}."]  # fmt: skip
    title = (
        "# Retraining runs\n\nWritten by `reels retrain --record`: the promotion gate of each run "
        "(docs/SERVING.md).\n"
    )
    return append_section(docs / "RETRAIN.md", "\n".join(lines), title)
