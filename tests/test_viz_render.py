"""Real rendering with Graphviz's ``dot`` program (CI installs it; skipped where it is missing), and the
notebook API.

The pictures are read back from the SVG ``dot`` draws, as a reader would see them: the labels are there,
the order holds (q left of k left of v, each mask beside what it becomes, the layers top to bottom, each
inside its block's frame), no two boxes overlap, the legend explains every style drawn and no other, and
the small preset fits a 1920 x 1080 screen. Failures of ``dot`` itself are tried with fake ``dot`` programs.
"""

from __future__ import annotations

import itertools
import re
import shutil
import struct
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("graphviz")

import graphviz  # noqa: E402

import npperceiver as npp  # noqa: E402
from npperceiver.viz import encoder_diagram  # noqa: E402
from npperceiver.seq2seq import Seq2SeqConfig  # noqa: E402
from npperceiver.trace import SOURCE_ENTERS  # noqa: E402
from npperceiver.viz.encoder_graph import build_encoder_graph, build_mlm_graph, build_seq2seq_graph  # noqa: E402
from npperceiver.viz.render import (BAND, LEGEND, STYLE, RenderError, drawn, legend_rows, render,  # noqa: E402
                                    to_dot)

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")

SMALL, LP = npp.load_preset("small"), npp.load_preset("language-perceiver")
SVG = "{http://www.w3.org/2000/svg}"

CASES = {
    "small op": lambda: build_encoder_graph(SMALL, name="small.json"),
    "small op, unrolled, numeric": lambda: build_encoder_graph(SMALL, unroll=True, batch=2, seq_len=5),
    "small layer": lambda: build_encoder_graph(SMALL, detail="layer"),
    "small layer, unrolled, no masks": lambda: build_encoder_graph(SMALL, detail="layer", unroll=True, masks=False),
    "3 blocks of 3, op, per-layer masks": lambda: build_encoder_graph(
        npp.PerceiverConfig(**{**SMALL.to_dict(), "num_blocks": 3, "num_self_attends_per_block": 3}), compact=False),
    "language-perceiver": lambda: build_encoder_graph(LP, name="language-perceiver.json"),
    "small mlm": lambda: build_mlm_graph(SMALL, name="small.json"),
    "small mlm op, unrolled": lambda: build_mlm_graph(SMALL, detail="op", unroll=True),
    "seq2seq autoregressive": lambda: build_seq2seq_graph(Seq2SeqConfig.for_task("digits-to-words"),
                                                          name="digits-to-words"),
    "seq2seq queries op": lambda: build_seq2seq_graph(Seq2SeqConfig.for_task("words-to-digits", "queries"),
                                                      detail="op"),
    "seq2seq two layers, two blocks, op, unrolled": lambda: build_seq2seq_graph(Seq2SeqConfig(
        npp.PerceiverConfig(**{**SMALL.to_dict(), "max_position_embeddings": 64}), num_decoder_layers=2,
        d_decoder=16, num_decoder_heads=2, task="words-to-digits", target_vocab_size=13, max_target_length=7),
        detail="op", unroll=True),
}


def _svg(graph) -> ET.Element:
    root = ET.fromstring(render(to_dot(graph), "svg"))  # parses: well-formed XML
    assert root.tag == SVG + "svg"
    return root


def _texts(root: ET.Element) -> list[tuple[str, float, float]]:
    """Every text drawn, with its position (y grows downwards)."""
    return [((t.text or "").strip(), float(t.get("x")), float(t.get("y"))) for t in root.iter(SVG + "text")]


def _bboxes(root: ET.Element, kind: str) -> dict[str, tuple[float, float, float, float]]:
    """The box (x0, y0, x1, y1) of each drawn node or cluster, from every point and text it draws."""
    out = {}
    for g in root.iter(SVG + "g"):
        if g.get("class") != kind:
            continue
        xs, ys = [], []
        for el in g.iter():
            for value in (el.get("points"), el.get("d")):
                for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", value or ""):
                    xs.append(float(x))
                    ys.append(float(y))
        if xs:
            out[g.find(SVG + "title").text] = (min(xs), min(ys), max(xs), max(ys))
    return out


def _overlap(a, b, slack=0.5) -> bool:
    return a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


def _inside(a, b, slack=0.5) -> bool:
    return b[0] - slack <= a[0] and a[2] <= b[2] + slack and b[1] - slack <= a[1] and a[3] <= b[3] + slack


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG")
    return struct.unpack(">II", png[16:24])


@needs_dot
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_picture_is_tidy_and_in_order(case):
    graph = CASES[case]()
    root = _svg(graph)
    nodes, clusters = _bboxes(root, "node"), _bboxes(root, "cluster")
    drawn_nodes = {n.id for n in graph.nodes_in(None) + [n for c in graph.clusters for n in graph.nodes_in(c)]}
    band = {n for n in drawn_nodes if n not in nodes}
    assert set(nodes) == (drawn_nodes - band) | ({BAND} if band else set())
    for a, b in itertools.combinations(nodes, 2):  # no two boxes overlap
        assert not _overlap(nodes[a], nodes[b]), (a, b)
    for a, b in itertools.combinations(clusters, 2):  # frames nest or stand apart
        if not (_inside(clusters[a], clusters[b]) or _inside(clusters[b], clusters[a])):
            assert not _overlap(clusters[a], clusters[b]), (a, b)
    for c in graph.clusters:  # each block's frame holds its layers, and only those
        for n in nodes:
            held = n in graph.nodes and graph.within(n, c)
            assert _inside(nodes[n], clusters[c]) == held or not held and not _overlap(nodes[n], clusters[c]), (n, c)
    # The layers one under the other, in the order they run.
    layers = [t.id for t in graph.nodes.values() if t.kind == "table" and t.id.endswith("/layer")]
    tops = [nodes[t][1] for t in layers if not t.startswith("decoder")]
    assert tops == sorted(tops) and len(set(tops)) == len(tops)
    # In each layer, the query side left of the key/value side, and q left of k left of v.
    texts = _texts(root)
    for t in layers:
        box = nodes[t]
        inside = [(text, x, y) for text, x, y in texts if box[0] <= x <= box[2] and box[1] <= y <= box[3]]
        for row in (("layernorm1", "layernorm2"), ("query", "key", "value")):
            found = [(x, y) for name in row for text, x, y in inside if text.split(" · ")[0] == name]
            if len(found) == len(row):
                ys = [y for _, y in found]
                assert [x for x, _ in found] == sorted(x for x, _ in found) and max(ys) - min(ys) < 5, (t, row)
    # Each mask beside (layer detail: left of) or above (op detail) what it becomes.
    if "masks/attention_mask" in graph.nodes:
        given = [(x, y) for text, x, y in texts if text == graph.nodes["masks/attention_mask"].label]
        made = [(x, y) for text, x, y in texts if text == "inputs_mask"][0]
        assert made[1] > given[0][1] if graph.detail == "op" else made[0] > given[0][0]


@needs_dot
@pytest.mark.parametrize("case", ["small op", "small op, unrolled, numeric", "language-perceiver", "small mlm"])
def test_svg_carries_every_box_and_the_legend(case):
    graph = CASES[case]()
    text = " ".join(t for t, _, _ in _texts(_svg(graph)))
    for n in graph.boxes():  # every box's name (its first words) and the shape it outputs
        assert n.label.split(" · ")[0].split(", ")[0] in text, n.id
        assert n.shape in text.replace("\xa0", " "), n.id
    for t in graph.nodes.values():
        if t.kind == "table":
            assert t.label.split()[0] in text
    for words in ("in a box:", "data", graph.title):
        assert words in text
    if "numeric" in case:
        assert "(2, 5, 24)" in text and "(2, 4, 16, 16)" in text


@needs_dot
def test_small_fits_a_screen_the_overview_a_page_and_language_perceiver_two_screens():
    """The small diagram (op detail, the default) is readable without zooming on a 1920 x 1080 screen; in
    its layer-detail overview, which opens the README, the smallest text (9 pt, 12 px) stays at 10 px or more
    when a page 880 px wide scales it down; the 26-layer encoder, rolled, fits two screens' height."""
    w, h = _png_size(render(to_dot(build_encoder_graph(SMALL, name="small.json")), "png"))
    assert w <= 1920 and h <= 1080, (w, h)
    w, h = _png_size(render(to_dot(build_encoder_graph(SMALL, detail="layer", name="small.json")), "png"))
    assert 12 * min(1, 880 / w) >= 10, (w, h)
    w, h = _png_size(render(to_dot(build_encoder_graph(LP, name="language-perceiver.json")), "png"))
    assert w <= 1920 and h <= 2160, (w, h)


@needs_dot
def test_png_and_pdf_render_and_dot_is_the_source_itself():
    source = to_dot(build_encoder_graph(SMALL, detail="layer"))
    assert render(source, "png").startswith(b"\x89PNG") and render(source, "pdf").startswith(b"%PDF")
    assert render(source, "dot") == source.encode()
    with pytest.raises(ValueError, match="format"):
        render(source, "jpg")


def _styles_drawn(graph) -> set[tuple]:
    """The styles a picture uses, in the legend's terms."""
    used = {("node", n.kind, None) for n in graph.nodes.values()}
    used |= {("node", "operation", "inputs_mask") for n in graph.boxes() if n.kind == "operation" and n.mask}
    for e in graph.edges:
        if drawn(graph, e):
            style = "dropped" if e.dropped else "compact" if e.into else "marked" if e.remark and e.kind == "data" \
                else e.kind
            used.add(("edge", style, e.mask if style == "mask" else None))
            if e.into:  # a compact edge is a mask edge too: its colour says which
                used.add(("edge", "mask", e.mask))
    return used | {("cluster", c.role, None) for c in graph.clusters.values()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_legend_explains_every_style_drawn_and_no_other(case):
    graph = CASES[case]()
    assert {row[:3] for row in legend_rows(graph)} == _styles_drawn(graph)
    legend = to_dot(graph).split("in a box:")[0]
    for what, key, family, text in legend_rows(graph):  # with the colour it is drawn in
        styles = {"edge": STYLE["edge"], "node": STYLE["node"], "cluster": STYLE["cluster"]}[what]
        color = STYLE["mask"][family]["color"] if family else styles[key].get("color")
        assert text in legend.replace("&#x27;", "'") and (color is None or color in legend), text
    assert {row[:3] for row in LEGEND} >= _styles_drawn(CASES["small mlm op, unrolled"]())


def test_the_block_frame_is_not_a_mask_style():
    """The block's frame is drawn in its own style, not the latent mask's green dashes (it is there whether
    or not a latent mask is)."""
    block = STYLE["cluster"]["block"]
    assert "dashed" not in block["style"] and block["color"] not in {m["color"] for m in STYLE["mask"].values()}


# ---------------------------------------------------------------------------- when dot fails
@pytest.fixture
def fake_dot(tmp_path, monkeypatch):
    """Put a fake ``dot`` (a shell script) first on PATH."""
    def install(script: str) -> None:
        program = tmp_path / "dot"
        program.write_text("#!/bin/sh\n" + script + "\n")
        program.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    return install


@pytest.mark.parametrize("script, words", [
    ('echo "Error: syntax error in line 3" >&2; exit 2', "`dot` failed (exit code 2): Error: syntax error in line 3"),
    ("kill -SEGV $$", "`dot` was killed by signal 11 (SIGSEGV)"),
    ('cat >/dev/null; echo "not a picture"', "`dot` wrote no svg picture"),
    ("cat >/dev/null", "`dot` wrote no svg picture"),
])
def test_a_failing_dot_is_one_clear_error(fake_dot, script, words):
    fake_dot(script)
    with pytest.raises(RenderError) as err:
        render("digraph { a }", "svg")
    assert str(err.value) == words and "\n" not in str(err.value)


def test_a_missing_dot_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RenderError, match="not on PATH"):
        render("digraph { a }", "png")


# ---------------------------------------------------------------------------- the notebook API
def test_encoder_diagram_is_the_drawing_as_a_graphviz_source():
    diagram = encoder_diagram(SMALL, detail="layer", batch=2)
    assert isinstance(diagram, graphviz.Source)
    assert diagram.source == to_dot(build_encoder_graph(SMALL, detail="layer", batch=2))
    assert encoder_diagram("small").source == to_dot(build_encoder_graph(SMALL, name="small.json"))
    mlm = encoder_diagram(SMALL, model="mlm", unroll=True, masks=False, legend=False)
    assert mlm.source == to_dot(build_mlm_graph(SMALL, detail="layer", unroll=True, masks=False), legend=False)
    assert "in a box:" not in mlm.source
    for bad, match in ((dict(model="gpt"), "model"), (dict(detail="all"), "detail")):
        with pytest.raises(ValueError, match=match):
            encoder_diagram(SMALL, **bad)
    with pytest.raises(ValueError, match="preset"):
        encoder_diagram("tiny")


@needs_dot
def test_encoder_diagram_shows_itself_in_a_notebook():
    bundle = encoder_diagram(SMALL, detail="layer")._repr_mimebundle_()  # what Jupyter calls to display it
    assert "encoder.cross_attention" in bundle["image/svg+xml"]


@needs_dot
@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("seq2seq")])
def test_the_translation_picture_shows_where_the_source_enters(case):
    """The encoder's frame and the decoder's stand apart; the decoder's layers run top to bottom; the words
    on the latents' edge are drawn, between the encoder's foot and the decoder cross-attention's head."""
    graph = CASES[case]()
    root = _svg(graph)
    nodes, clusters = _bboxes(root, "node"), _bboxes(root, "cluster")
    assert not _overlap(clusters["cluster_encoder"], clusters["cluster_decoder"])
    layers = [t for t in graph.nodes if t.endswith("/layer") and t.startswith("decod")]
    tops = [nodes[t][1] for t in layers]
    assert layers and tops == sorted(tops) and len(set(tops)) == len(tops)
    texts = _texts(root)
    enters = [y for text, _, y in texts if text == SOURCE_ENTERS]
    crosses = [t for t in layers if "/cross/" in t or t.startswith("decoding")]
    assert len(enters) == len(crosses)  # one label per decoder cross-attention
    latents = nodes["output/last_hidden_state"]
    assert all(latents[1] <= y <= nodes[t][1] + 5 for y, t in zip(sorted(enters), crosses))
    words = " ".join(t for t, _, _ in texts)
    assert "perceiver: the Perceiver encoder" in words and graph.clusters["cluster_decoder"].label in words


def test_encoder_diagram_draws_the_translation_model():
    config = Seq2SeqConfig.for_task("words-to-digits", "queries")
    diagram = encoder_diagram(config, model="seq2seq", detail="op")
    assert diagram.source == to_dot(build_seq2seq_graph(config, detail="op"))
    assert encoder_diagram(config, model="seq2seq").source == to_dot(build_seq2seq_graph(config))  # layer detail
    for model, cfg in (("seq2seq", SMALL), ("encoder", config), ("mlm", config)):
        with pytest.raises(ValueError, match="Seq2SeqConfig"):
            encoder_diagram(cfg, model=model)
