"""`reels bench hops`' null ensemble: the repository's own contract with steps that do no work."""

from __future__ import annotations

from reels.client.bench.hops import ENSEMBLE, STEPS, null_repository
from reels.client.cli import build_parser
from reels.deploy.triton.repository import SOURCE


def test_the_null_repository_keeps_the_contract_and_replaces_only_the_steps_code(tmp_path):
    repository = null_repository(tmp_path / "repository")
    for model in (ENSEMBLE, *STEPS):
        assert (repository / model / "config.pbtxt").read_text() == (
            SOURCE / model / "config.pbtxt"
        ).read_text()
    for step in STEPS:
        code = (repository / step / "1" / "model.py").read_text()
        compile(code, f"{step}/model.py", "exec")  # valid Python, with no import of this project
        assert "class TritonPythonModel" in code and "reels" not in code.replace("reels bench hops", "")
    args = build_parser().parse_args(["bench", "hops", "--catalog", "100000", "--concurrency", "1", "8"])
    assert (args.catalog, args.concurrency) == (100000, [1, 8])
