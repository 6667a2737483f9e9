"""House rule: npperceiver/ imports numpy and the standard library only; the layers import one way."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_levels(folder: Path) -> dict[str, set[str]]:
    """Map each .py file under ``folder`` to the absolute top-level modules it imports."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_npperceiver_imports_only_numpy_and_stdlib():
    allowed = set(sys.stdlib_module_names) | {"numpy", "npperceiver", "__future__"}
    bad = {f: sorted(n - allowed) for f, n in _imported_top_levels(ROOT / "npperceiver").items() if n - allowed}
    assert not bad, f"npperceiver/ must import numpy and the standard library only: {bad}"


def test_viz_never_imports_the_cli_or_click():
    bad = {f: sorted(n & {"cli", "click"}) for f, n in _imported_top_levels(ROOT / "viz").items() if n & {"cli", "click"}}
    assert not bad, bad


def test_importing_npperceiver_loads_no_heavy_or_drawing_module():
    code = ("import sys, npperceiver; "
            "print(sorted(m for m in ('graphviz', 'click', 'torch', 'transformers', 'scipy', 'viz', 'cli') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
