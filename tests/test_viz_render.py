"""Real rendering with Graphviz's ``dot`` program (CI installs it; skipped where it is missing)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("graphviz")

import npperceiver as npp  # noqa: E402
from viz.encoder_graph import build_encoder_graph  # noqa: E402
from viz.render import LEGEND_EDGES, STYLE, _disorder, _plain_positions, layout_dot, render, to_dot  # noqa: E402

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")


def _svg_text(svg: bytes) -> str:
    root = ET.fromstring(svg)  # parses: well-formed XML
    assert root.tag.endswith("svg")
    return " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))


@needs_dot
@pytest.mark.parametrize("preset, options", [("small", {}), ("small", dict(unroll=True, batch=2, seq_len=5)),
                                             ("language-perceiver", {})])
def test_svg_parses_and_carries_the_labels(preset, options):
    g = build_encoder_graph(npp.load_preset(preset), name=f"{preset}.json", **options)
    text = _svg_text(render(layout_dot(g), "svg"))
    assert f"Perceiver encoder: {preset}.json" in text
    for label in ("inputs", "embeddings.latents", "attention_mask", "latent_mask", "head_mask", "last_hidden_state",
                  "encoder.cross_attention", "encoder.self_attends.0", "legend", "HF drops two masks here"):
        assert label in text, label
    if options.get("batch"):
        assert "(2, 5, 24)" in text and "head_mask[1] (1, 4, 1, 1)" in text


@needs_dot
@pytest.mark.parametrize("options", [{}, dict(unroll=True), dict(masks=False), dict(detail="layer")])
def test_columns_come_out_left_to_right(options):
    g = build_encoder_graph(npp.load_preset("small"), **options)
    assert _disorder(g, _plain_positions(layout_dot(g))) == 0


@needs_dot
def test_png_and_pdf_render():
    src = to_dot(build_encoder_graph(npp.load_preset("small"), detail="layer"))
    assert render(src, "png").startswith(b"\x89PNG")
    assert render(src, "pdf").startswith(b"%PDF")


def test_dot_format_needs_no_program_and_legend_follows_the_style_table():
    src = to_dot(build_encoder_graph(npp.load_preset("small")))
    assert render(src, "dot") == src.encode()
    for _, mask, _ in LEGEND_EDGES:
        if mask:
            assert STYLE["mask"][mask]["color"] in src
    assert src.count("subgraph cluster_") >= 6
    with pytest.raises(ValueError, match="format"):
        render(src, "jpg")
