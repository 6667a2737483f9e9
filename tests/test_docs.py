"""docs/ cannot rot: every example runs, every local link resolves, every linked test exists."""

import ast
import doctest
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
TEST_REF = re.compile(r"tests/(test_\w+\.py)::(\w+)")


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_examples_run(page):
    """Each `>>>` example in the page gives the output the page shows."""
    if "import numpy as np, torch" in page.read_text(encoding="utf-8"):
        pytest.importorskip("torch", reason=f"{page.name} compares with HF and needs torch")
        pytest.importorskip("transformers", reason=f"{page.name} compares with HF and needs transformers")
    if "attention_figure(" in page.read_text(encoding="utf-8"):
        pytest.importorskip("matplotlib", reason=f"{page.name} draws an attention figure (the plot extra)")
    result = doctest.testfile(str(page), module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {page.name} failed (see output above)"


@pytest.mark.parametrize("page", [*DOCS, ROOT / "README.md"], ids=lambda p: p.name)
def test_local_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = [t for t in LINK.findall(text) if "://" not in t and not (page.parent / t).exists()]
    assert not broken, f"{page.name} links to missing files: {broken}"


def _test_names(file: Path) -> set[str]:
    tree = ast.parse(file.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_linked_tests_exist(page):
    """A claim that cites `tests/test_x.py::test_y` cites a test that is really there."""
    missing = []
    for file, name in TEST_REF.findall(page.read_text(encoding="utf-8")):
        path = ROOT / "tests" / file
        if not path.exists() or name not in _test_names(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"{page.name} cites tests that do not exist: {missing}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_quoted_command_output_is_current(page):
    """Command output quoted in a page is exactly what the command prints (`python -m tests.regen_docs`)."""
    from regen_docs import blocks, run_command

    for command, quoted in blocks(page.read_text(encoding="utf-8")):
        assert quoted == run_command(command), f"{page.name}: output of `{command}` is stale; run python -m tests.regen_docs"
