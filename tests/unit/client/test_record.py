"""The results recorder: sections appended under a title, benchmark keys merged, retrain gates listed."""

import json
from types import SimpleNamespace

from reels.client import record


def test_append_section_starts_the_file_with_its_title_once(tmp_path):
    path = tmp_path / "docs" / "TUNING.md"
    record.append_section(path, "### first\n\n| a |\n", "# Tuning\n")
    record.append_section(path, "### second\n", "# Tuning\n")
    assert path.read_text() == "# Tuning\n\n### first\n\n| a |\n\n### second\n"


def test_benchmark_replaces_its_keys_and_keeps_the_others(tmp_path):
    record.benchmark({"store": {"keys_per_s": 1}}, "### Online store — 1\n", docs=tmp_path)
    md, js = record.benchmark(
        {"ingest": {"x": 2}, "freshness": {"p99_ms": 3}}, "### Event ingest\n", tmp_path
    )
    record.benchmark({"store": {"keys_per_s": 4}}, "### Online store — 2\n", docs=tmp_path)
    assert json.loads(js.read_text()) == {
        "store": {"keys_per_s": 4},
        "ingest": {"x": 2},
        "freshness": {"p99_ms": 3},
    }
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\n### Online store — 1") and text.endswith("### Online store — 2\n")


def test_retrain_appends_the_gate_to_markdown_and_json(tmp_path):
    candidate = tmp_path / "models" / "2"
    candidate.mkdir(parents=True)
    gate = {
        "serving_version": 1, "window": {"test_start": "2026-01-02", "end": "2026-01-03"},
        "candidate": {"recall@20": 0.2, "ndcg@20": 0.1, "test_users": 5, "test_impressions": 50},
        "serving": {"recall@20": 0.19, "ndcg@20": 0.09},
        "checks": {"recall@20": {"candidate": 0.2, "serving": 0.19, "threshold": 0.19, "passed": True}},
        "passed": True,
    }  # fmt: skip
    (candidate / "manifest.json").write_text(json.dumps({"gate": gate}))
    result = SimpleNamespace(
        candidate_dir=candidate,
        cluster=SimpleNamespace(kind="LocalCluster", workers=2),
        timings={"train_s": 1.23},
    )
    docs = tmp_path / "docs"
    for _ in range(2):
        path = record.retrain(result, "reels retrain synthetic --record", docs)
    assert path == docs / "RETRAIN.md"
    entries = json.loads((docs / "RETRAIN.json").read_text())
    assert (
        len(entries) == 2
        and entries[0]["candidate_version"] == 2
        and entries[0]["timings_s"] == {"train_s": 1.2}
    )
    text = path.read_text()
    assert text.startswith("# Retraining runs") and text.count("### Retrain") == 2
    assert "| recall@20 | 0.2000 | 0.1900 | 0.1900 | yes |" in text and "ndcg@20 0.1000 / 0.0900" in text


def test_machine_names_cores_and_memory():
    assert "cores" in record.machine() and "GiB RAM" in record.machine()
