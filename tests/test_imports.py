"""House rules for imports: npperceiver/ imports numpy and the standard library only; imports go one way
(cli.py -> viz/ -> npperceiver/), with no cycle inside a package and no project import hidden in a function.

The graph is read from the source with ``ast`` (nothing is imported), with each file's module name as it is
installed: ``npperceiver/x.py`` is ``npperceiver.x``, ``viz/x.py`` is ``npperceiver.viz.x`` and ``cli.py`` is
``npperceiver_cli.cli`` (see pyproject.toml).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The one file of npperceiver/ that may reach the command line: ``python -m npperceiver``.
ENTRY_POINT = ROOT / "npperceiver" / "__main__.py"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] == "viz":
        parts = ["npperceiver", *parts]
    elif parts == ["cli"]:
        parts = ["npperceiver_cli", "cli"]
    return ".".join(parts)


def _project_files() -> list[Path]:
    return sorted([*(ROOT / "npperceiver").rglob("*.py"), *(ROOT / "viz").rglob("*.py"), ROOT / "cli.py"])


def _imports(path: Path, package: "str | None" = None) -> list[tuple[str, bool]]:
    """Every module ``path`` imports, absolute, with whether the import sits inside a function.
    ``package`` (default: the file's own) resolves relative imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if package is None:
        package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # typing only: never executed
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append((base, in_function))
                found.extend((f"{base}.{a.name}", in_function) for a in child.names)  # `from . import x`
            visit(child, nested)

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports at module level."""
    modules = {_module_name(p): p for p in _project_files()}
    return {name: {m for m, _ in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _top_levels(folder: Path) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): {m.split(".")[0] for m, _ in _imports(p)} for p in sorted(folder.rglob("*.py"))}


def test_npperceiver_imports_only_numpy_and_stdlib():
    allowed = set(sys.stdlib_module_names) | {"numpy", "npperceiver", "__future__"}
    bad = {f: sorted(n - allowed) for f, n in _top_levels(ROOT / "npperceiver").items()
           if n - allowed and ROOT / f != ENTRY_POINT}
    assert not bad, f"npperceiver/ must import numpy and the standard library only: {bad}"


def test_npperceiver_never_imports_viz_or_the_cli():
    bad = {name: sorted(m for m in deps if m.startswith(("npperceiver.viz", "npperceiver_cli")))
           for name, deps in _graph().items()
           if (name == "npperceiver" or name.startswith("npperceiver.")) and not name.startswith("npperceiver.viz")
           and name != "npperceiver.__main__"}
    assert not any(bad.values()), bad


def test_viz_never_imports_the_cli_or_click():
    bad = {f: sorted(n & {"cli", "click", "npperceiver_cli"}) for f, n in _top_levels(ROOT / "viz").items()
           if n & {"cli", "click", "npperceiver_cli"}}
    assert not bad, bad


def test_nothing_imports_the_uninstalled_top_level_names():
    """``viz`` and ``cli`` exist only in the repository; installed they are npperceiver.viz / npperceiver_cli."""
    bad = {str(p.relative_to(ROOT)): sorted({m.split(".")[0] for m, _ in _imports(p)} & {"viz", "cli"})
           for p in [*_project_files(), *(ROOT / "tests").glob("*.py")]}
    assert not any(bad.values()), bad


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``graph`` closes, each as the path that closes it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


PACKAGES = ["npperceiver", "npperceiver.viz"]


def _in(package: str, module: str) -> bool:
    inside = module == package or module.startswith(package + ".")
    return inside and not (package == "npperceiver" and module.startswith("npperceiver.viz"))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    graph = _graph()
    graph = {m: {d for d in deps if _in(package, d)} for m, deps in graph.items() if _in(package, m)}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_a_planted_cycle_and_a_hidden_import(tmp_path):
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    hidden = tmp_path / "x.py"
    hidden.write_text("import numpy\n\ndef f():\n    from . import text\n")
    found = _imports(hidden, package="npperceiver")
    assert ("npperceiver.text", True) in found and ("numpy", False) in found


@pytest.mark.parametrize("package", [*PACKAGES, "npperceiver_cli"])
def test_no_function_local_import_of_a_project_module(package):
    """Lazy imports are for optional third-party packages (graphviz, matplotlib, torch), never to hide a cycle."""
    modules = {_module_name(p) for p in _project_files()}
    bad = {str(p.relative_to(ROOT)): sorted({m for m, local in _imports(p) if local and m in modules})
           for p in _project_files() if _in(package, _module_name(p))}
    assert not any(bad.values()), bad


def test_importing_npperceiver_loads_no_heavy_or_drawing_module():
    code = ("import sys, npperceiver; "
            "print(sorted(m for m in ('graphviz', 'click', 'torch', 'transformers', 'scipy', 'matplotlib', "
            "'npperceiver.viz', 'npperceiver_cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
