"""What `pip install .` puts into site-packages: npperceiver and its own namespaced pieces, nothing generic."""

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    try:
        import setuptools  # noqa: F401 - the build backend, needed without build isolation
    except ImportError:
        pytest.skip("setuptools is not installed")
    if not _can_build_wheels():
        pytest.skip("this setuptools cannot build wheels without build isolation: it needs the `wheel` "
                    "package (or setuptools >= 70.1)")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True)
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def _can_build_wheels() -> bool:
    """setuptools builds wheels itself from 70.1 on; older ones need the separate `wheel` package."""
    for module in ("setuptools.command.bdist_wheel", "wheel.bdist_wheel"):
        try:
            importlib.import_module(module)
            return True
        except ImportError:
            pass
    return False


def test_wheel_installs_only_namespaced_top_level_names(wheel_names):
    top = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"npperceiver", "npperceiver_cli"}


def test_wheel_holds_the_drawing_the_command_and_the_presets(wheel_names):
    assert "npperceiver/viz/render.py" in wheel_names and "npperceiver/viz/__init__.py" in wheel_names
    assert "npperceiver_cli/cli.py" in wheel_names
    assert "npperceiver/presets/small.json" in wheel_names
    assert not [n for n in wheel_names if n.startswith(("npperceiver_cli/tests", "npperceiver_cli/benchmarks"))]
    # npperceiver_cli is the repository root's .py files: cli.py and nothing else
    assert [n for n in wheel_names if n.startswith("npperceiver_cli/")] == ["npperceiver_cli/cli.py"]


def test_python_dash_m_npperceiver_runs_the_command():
    out = subprocess.run([sys.executable, "-m", "npperceiver", "--version"], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == f"npperceiver, version {__import__('npperceiver').__version__}"
