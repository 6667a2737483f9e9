"""Real rendering with Graphviz's ``dot`` program (CI installs it; skipped where it is missing).

The pictures come from :func:`npperceiver.viz.render.layout_dot`, which places every node, box and edge itself
(``viz/layout.py``). These tests read the placed drawing back from Graphviz (``-Tjson0``) and check what a
reader would: no two boxes overlap, the columns and rows stand in order, every box lies inside the
clusters that hold it, every edge starts on its tail and ends on its head (a compact edge on its
cluster's border), and the small preset fits a 1920 x 1080 screen at 100 %.
"""

from __future__ import annotations

import itertools
import json
import shutil
import struct
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("graphviz")

import graphviz  # noqa: E402

import npperceiver as npp  # noqa: E402
from npperceiver.viz.encoder_graph import build_encoder_graph, build_mlm_graph  # noqa: E402
from npperceiver.viz.render import LEGEND_EDGES, STYLE, layout_dot, legend_rows, render, to_dot  # noqa: E402

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")

SMALL, LP = npp.load_preset("small"), npp.load_preset("language-perceiver")


def _svg_text(svg: bytes) -> str:
    root = ET.fromstring(svg)  # parses: well-formed XML
    assert root.tag.endswith("svg")
    return " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG")
    return struct.unpack(">II", png[16:24])


def _placed(graph, source: str):
    """Boxes (x0, y0, x1, y1) of the nodes and clusters, and the end points of each edge, as drawn."""
    data = json.loads(graphviz.pipe("neato", "json0", source.encode("utf-8"), neato_no_op=2))
    nodes, clusters, edges = {}, {}, []
    names = {}
    for obj in data["objects"]:
        names[obj["_gvid"]] = obj.get("name")
        if "pos" in obj and obj["name"] in graph.nodes:
            x, y = map(float, obj["pos"].split(","))
            w, h = float(obj["width"]) * 36, float(obj["height"]) * 36
            nodes[obj["name"]] = (x - w, y - h, x + w, y + h)
        elif obj.get("name", "").startswith("cluster_") and "bb" in obj:
            clusters[obj["name"]] = tuple(map(float, obj["bb"].split(",")))
    for e in data.get("edges", []):
        parts = e["pos"].split()
        end = [p[2:] for p in parts if p.startswith("e,")]
        points = [p for p in parts if not p.startswith(("e,", "s,"))]
        first = tuple(map(float, points[0].split(",")))
        last = tuple(map(float, (end or points[-1:])[0].split(",")))
        edges.append((int(e["id"][4:]), names[e["tail"]], names[e["head"]], first, last))
    return nodes, clusters, edges


def _points(source: str, index: int) -> list:
    """The points of edge ``index`` as placed (Graphviz coordinates)."""
    data = json.loads(graphviz.pipe("neato", "json0", source.encode("utf-8"), neato_no_op=2))
    pos = next(e["pos"] for e in data["edges"] if e.get("id") == f"edge{index}")
    return [tuple(map(float, p.lstrip("es,").split(","))) for p in pos.split()]


def _overlap(a, b, slack=0.5) -> bool:
    return a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


def _near(point, box, slack=3.0) -> bool:
    return box[0] - slack <= point[0] <= box[2] + slack and box[1] - slack <= point[1] <= box[3] + slack


def _check_layout(graph, source: str) -> None:
    nodes, clusters, edges = _placed(graph, source)
    assert set(nodes) == set(graph.nodes)
    for a, b in itertools.combinations(nodes, 2):
        assert not _overlap(nodes[a], nodes[b]), (a, b)
    for a, b in itertools.combinations(clusters, 2):  # boxes either nest or stand apart
        if a not in graph.ancestors(b) and b not in graph.ancestors(a):
            assert not _overlap(clusters[a], clusters[b]), (a, b)
    for n, box in nodes.items():
        for c in graph.ancestors(graph.nodes[n].cluster):
            if c in clusters:
                cb = clusters[c]
                assert cb[0] <= box[0] + 0.5 and box[2] <= cb[2] + 0.5 and cb[1] <= box[1] + 0.5 and box[3] <= cb[3] + 0.5, (n, c)
    for row in graph.rows:  # side by side, in the order given
        xs = [nodes[n][0] for n in row]
        assert all(a < b for a, b in zip(xs, xs[1:])), row
    for band in graph.layout:  # columns left to right, pieces top to bottom
        right = None
        for column in band:
            boxes = [[nodes[n] for n in graph.piece_nodes(piece)] for piece in column]
            left = min(b[0] for bs in boxes for b in bs)
            assert right is None or left > right, column
            right = max(b[2] for bs in boxes for b in bs)
            tops = [max(b[3] for b in bs) for bs in boxes]  # y grows upwards in Graphviz
            assert tops == sorted(tops, reverse=True), column
    assert sorted(i for i, *_ in edges) == list(range(len(graph.edges)))  # each edge drawn once
    for i, tail, head, first, last in edges:
        e = graph.edges[i]
        assert (tail, head) == (e.tail, e.head)
        if e.kind == "loop":  # round inside the block it repeats
            block = next(c for c in graph.ancestors(graph.nodes[tail].cluster) if graph.clusters[c].role == "block")
            assert all(_near(p, clusters[block], slack=0) for p in _points(source, i)), (tail, head)
        assert _near(first, nodes[tail]), (tail, head, first)
        if e.into is not None:  # on the top border of the cluster it stands for
            box = clusters[e.into]
            assert box[0] <= last[0] <= box[2] and abs(last[1] - box[3]) < 3, (tail, e.into, last)
        else:
            assert _near(last, nodes[head]), (tail, head, last)


CASES = {
    "small op": lambda: build_encoder_graph(SMALL, name="small.json"),
    "small layer, unrolled": lambda: build_encoder_graph(SMALL, detail="layer", unroll=True),
    "small op, unrolled, numeric": lambda: build_encoder_graph(SMALL, unroll=True, batch=2, seq_len=5),
    "small without masks": lambda: build_encoder_graph(SMALL, masks=False),
    "language-perceiver": lambda: build_encoder_graph(LP, name="language-perceiver.json"),
    "3 blocks of 1, layer, compact": lambda: build_encoder_graph(
        npp.PerceiverConfig(**{**SMALL.to_dict(), "num_blocks": 3, "num_self_attends_per_block": 1}),
        detail="layer", compact=True),
    "2 blocks of 3, op (the loop runs along the block's foot)": lambda: build_encoder_graph(
        npp.PerceiverConfig(**{**SMALL.to_dict(), "num_blocks": 2, "num_self_attends_per_block": 3}), detail="op"),
    "small mlm": lambda: build_mlm_graph(SMALL, name="small.json"),
    "small mlm op": lambda: build_mlm_graph(SMALL, detail="op"),
}


@needs_dot
@pytest.mark.parametrize("case", sorted(CASES))
def test_layout_is_tidy(case):
    graph = CASES[case]()
    _check_layout(graph, layout_dot(graph))


@needs_dot
@pytest.mark.parametrize("case", ["small op", "small op, unrolled, numeric", "language-perceiver", "small mlm"])
def test_svg_parses_and_carries_the_labels(case):
    graph = CASES[case]()
    text = _svg_text(render(layout_dot(graph), "svg"))
    mlm = "mlm" in case
    for label in ("inputs_mask", "head_mask", "last_hidden_state", "encoder.cross_attention",
                  "encoder.self_attends.0", "in a box:", "HF drops"):
        assert label in text, label
    if mlm:
        for label in ("Perceiver IO masked language model",
                      "input_ids", "perceiver.input_preprocessor", "decoding cross-attention", "logits",
                      "the decoder gets no mask: HF drops query_mask", "@ Eᵀ + bias"):
            assert label in text, label
    else:
        for label in ("Perceiver encoder", "embeddings.latents", "latent_mask"):
            assert label in text, label
    if "numeric" in case:
        assert "(2, 5, 24)" in text and "(2, 4, 16, 16)" in text


@needs_dot
def test_small_preset_fits_a_screen_and_language_perceiver_stays_compact():
    """The small diagram is readable without zooming on a 1920 x 1080 screen; the 26-layer one, rolled,
    fits within two screens' height (two columns of layers, the masks drawn once into the block)."""
    w, h = _png_size(render(layout_dot(build_encoder_graph(SMALL, name="small.json")), "png"))
    assert w <= 1920 and h <= 1080, (w, h)
    w, h = _png_size(render(layout_dot(build_encoder_graph(LP, name="language-perceiver.json")), "png"))
    assert w <= 1920 and h <= 2160, (w, h)


@needs_dot
def test_png_and_pdf_render():
    graph = build_encoder_graph(SMALL, detail="layer")
    assert render(layout_dot(graph), "png").startswith(b"\x89PNG")
    assert render(layout_dot(graph), "pdf").startswith(b"%PDF")
    assert render(to_dot(graph), "png").startswith(b"\x89PNG")  # Graphviz's own layout of the plain DOT works too


def test_dot_format_needs_no_program_and_legend_follows_the_style_table():
    src = to_dot(build_encoder_graph(SMALL))
    assert render(src, "dot") == src.encode()
    for _, mask, _ in LEGEND_EDGES:
        if mask:
            assert STYLE["mask"][mask]["color"] in src
    assert src.count("subgraph cluster_") >= 6
    with pytest.raises(ValueError, match="format"):
        render(src, "jpg")


def test_legend_lists_only_the_styles_drawn():
    def kinds(graph):
        nodes, edges = legend_rows(graph)
        return {text for _, _, text in nodes + edges}

    small = kinds(build_encoder_graph(SMALL))  # op detail: operations that apply a mask, per-layer masks
    assert {"a mask acts here", "block applied again", "attention_mask → inputs_mask"} <= small
    assert "into a block: every layer in it" not in small
    lp = kinds(build_encoder_graph(LP))  # compact, one block: no loop
    assert "into a block: every layer in it" in lp and "block applied again" not in lp
    hidden = kinds(build_encoder_graph(SMALL, masks=False))
    assert not {"mask", "HF drops a mask", "a mask HF drops", "head_mask"} & hidden
    mlm = kinds(build_mlm_graph(SMALL))  # no latent mask in the MLM
    assert "latent_mask → the encoder's attention_mask" not in mlm and "head_mask" in mlm
