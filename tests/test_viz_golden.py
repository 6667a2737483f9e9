"""Golden DOT text for the presets, compared exactly.

When the drawing changes on purpose, regenerate the files and review the diff:

    NPPERCEIVER_REGEN_GOLDEN=1 python -m pytest tests/test_viz_golden.py

The DOT text is :func:`npperceiver.viz.render.to_dot` (no ``dot`` program needed): exactly what
``npperceiver draw-encoder --format dot`` writes and what ``dot`` draws for svg, png and pdf. It depends on
the ``graphviz`` Python package's formatting, which is stable within a release series.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("graphviz")

import npperceiver as npp  # noqa: E402
from npperceiver.viz.encoder_graph import build_encoder_graph, build_mlm_graph  # noqa: E402
from npperceiver.viz.render import to_dot  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("NPPERCEIVER_REGEN_GOLDEN") == "1"

CASES = {
    "small-op": ("small", dict(detail="op")),
    "small-op-unrolled": ("small", dict(detail="op", unroll=True)),
    "small-layer": ("small", dict(detail="layer")),
    "small-layer-numeric": ("small", dict(detail="layer", batch=2, seq_len=7)),
    "small-op-no-masks": ("small", dict(detail="op", masks=False)),
    "language-perceiver-layer": ("language-perceiver", dict(detail="layer")),
    "small-mlm": ("small", dict(model="mlm")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_dot(case):
    preset, options = CASES[case]
    options = dict(options)
    build = build_mlm_graph if options.pop("model", None) == "mlm" else build_encoder_graph
    dot = to_dot(build(npp.load_preset(preset), name=f"{preset}.json", **options))
    path = GOLDEN / f"{case}.dot"
    if REGEN:
        path.write_text(dot, encoding="utf-8")
    assert path.exists(), f"missing {path}; create it with NPPERCEIVER_REGEN_GOLDEN=1 python -m pytest {__file__}"
    assert dot == path.read_text(encoding="utf-8"), (
        f"{path.name} differs from the drawing; if the change is intended, regenerate with "
        f"NPPERCEIVER_REGEN_GOLDEN=1 python -m pytest tests/test_viz_golden.py and review the diff")
