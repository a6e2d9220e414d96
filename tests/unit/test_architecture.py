"""The shape of the code, checked: dependencies flow one way between the packages, the CLI starts
without the ML stack, and every public function and class says what it is for."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Lowest first: a package may import its own layer and the layers before it, never a later one.
LAYERS = ("workflows", "feature_store", "models", "deploy", "client")
HEAVY = (
    "tensorflow",
    "nvtabular",
    "merlin",
    "faiss",
    "dask",
    "distributed",
    "pandas",
    "tritonclient",
    "redis",
)


def _modules() -> list[tuple[Path, str]]:
    return [(path, layer) for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))]


def _reels_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reels."):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("reels.")]
    return found


def test_no_package_imports_a_later_layer():
    upward = []
    for path, layer in _modules():
        for line, module in _reels_imports(path):
            target = module.split(".")[1]
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(layer):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert upward == [], "imports against the data flow:\n" + "\n".join(upward)


def test_the_contract_test_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from reels.client.config import load_config\n")
    assert _reels_imports(bad) == [(1, "reels.client.config")]


def test_model_repository_files_only_bind_the_adapter():
    for path in (ROOT / "model_repository").rglob("model.py"):
        modules = {m for _, m in _reels_imports(path)}
        assert modules == {"reels.deploy.triton.adapter"}, path


def _imported_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["config"], ["recommend", "--help"], ["retrain", "--help"], ["bench", "serving", "--help"]],
)
def test_cli_start_up_imports_no_ml_stack(argv):
    code = f"from reels.client.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    loaded = _imported_after(code)
    assert not loaded & set(HEAVY), f"reels {' '.join(argv)} imported {sorted(loaded & set(HEAVY))}"


def test_the_recommend_client_imports_no_ml_stack():
    loaded = _imported_after("import reels.client.triton_client")
    assert not loaded & {"tensorflow", "nvtabular", "merlin", "faiss", "dask", "pandas"}


def _undocumented(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    missing = [] if ast.get_docstring(tree) else ["module"]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            if not ast.get_docstring(node):
                missing.append(f"{node.lineno} {node.name}")
            if isinstance(node, ast.ClassDef):
                missing += [
                    f"{sub.lineno} {node.name}.{sub.name}"
                    for sub in node.body
                    if isinstance(sub, ast.FunctionDef)
                    and not sub.name.startswith("_")
                    and not ast.get_docstring(sub)
                ]
    return missing


def test_every_public_function_and_class_has_a_docstring():
    missing = [f"{path.relative_to(ROOT)}:{item}" for path, _ in _modules() for item in _undocumented(path)]
    assert missing == [], f"{len(missing)} without a docstring:\n" + "\n".join(missing)


def test_docs_cite_no_files_outside_the_repo_and_no_issue_numbers():
    import re

    offenders = []
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "deploy").glob("*.md")]:
        text = path.read_text()
        for pattern in (r"DESIGN\.md", r"STYLE\.md", r"issue #\d+", r"\[#\d+\]", r"\(#\d+\)"):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    for path, _ in _modules():
        if "DESIGN.md" in path.read_text():
            offenders.append(f"{path.relative_to(ROOT)}: DESIGN.md")
    assert offenders == []
