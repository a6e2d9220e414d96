"""Benchmarks: each writes its section of docs/BENCHMARKS.md and its key of docs/BENCHMARKS.json."""

from __future__ import annotations

import json
from pathlib import Path

DOCS = Path("docs")


def record(key: str, report: dict, markdown: str, docs: Path = DOCS) -> None:
    """Store ``report`` under ``key`` in BENCHMARKS.json and append ``markdown`` to BENCHMARKS.md."""
    docs.mkdir(exist_ok=True)
    json_path = docs / "BENCHMARKS.json"
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    data[key] = report
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path = docs / "BENCHMARKS.md"
    text = md_path.read_text() if md_path.exists() else "# Benchmarks\n\n"
    md_path.write_text(text.rstrip("\n") + "\n\n" + markdown)
