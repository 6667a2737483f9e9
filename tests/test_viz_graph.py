"""The encoder and MLM graph models (no Graphviz needed): well-formed, and true to HF's dataflow and masks.

Properties are checked over many configs drawn by hypothesis, in both detail levels, rolled and unrolled,
with the masks drawn per layer and compact (once into the block). Shapes in the boxes and on the edges are
compared with the arrays of a real forward pass, computed by ``test_trace.run_trace`` / ``execute`` (which
are themselves checked against the models). Every word in a box comes from the trace.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import configs
from test_trace import _case, execute, run_trace

import npperceiver as npp
from npperceiver.text import MLM_DECODER_HEADS
from npperceiver.trace import block_title, encoder_steps, format_shape, mlm_steps, scope_title
from npperceiver.viz.encoder_graph import (COMPACT_LAYERS, build_encoder_graph, build_mlm_graph, default_detail,
                                           pretty)
from npperceiver.viz.graph import Cluster, Edge, Graph, Node

details = st.sampled_from(["op", "layer"])
compacts = st.sampled_from([None, False, True])
SMALL = npp.load_preset("small")


@st.composite
def mlm_configs(draw):
    """Configs that suit PerceiverForMaskedLM: d_model divisible by the decoder's heads."""
    cfg = draw(configs(max_blocks=3, max_self_attends=3))
    d_model = draw(st.sampled_from([MLM_DECODER_HEADS, 2 * MLM_DECODER_HEADS]))
    try:
        return npp.PerceiverConfig(**{**cfg.to_dict(), "d_model": d_model, "max_position_embeddings": 6,
                                      "vocab_size": 11})
    except ValueError:  # the cross-attention's widths no longer split over its heads
        assume(False)


def _layers(g: Graph, self_only: bool = True) -> list[Node]:
    """The layer tables (a self-attention layer's id has "self" in it), in drawing order."""
    return [n for n in g.nodes.values() if n.kind == "table" and n.id.endswith("/layer")
            and (not self_only or "self" in n.id)]


def _box_of(g: Graph, step_id: str) -> str:
    """The box that shows a trace step."""
    (box,) = [n.id for n in g.boxes() if step_id in n.steps]
    return box


def _steps(config, model="encoder", unroll=False, **kw):
    """The trace the drawing shows: rolled, the first application of the block stands for every one."""
    steps = (mlm_steps if model == "mlm" else encoder_steps)(config, **kw)
    return steps if unroll else [s for s in steps if s.block in (None, 0)]


def _layer_of(box_id: str) -> int:
    """The index i of the self-attention layer ``self{i}`` a box belongs to."""
    return int(re.search(r"self(\d+)/", box_id)[1])


def _mask_edges(g: Graph, family=None):
    """The mask edges reaching an operation (not the ones HF drops), compact edges spelled out."""
    return [e for e in g.expanded_edges() if e.kind == "mask" and not e.dropped and family in (None, e.mask)
            and g.nodes[e.head].kind == "operation"]


# ---------------------------------------------------------------------------- the encoder
@given(config=configs(max_blocks=3, max_self_attends=3), detail=details, unroll=st.booleans(),
       masks=st.booleans(), compact=compacts)
def test_graph_is_well_formed(config, detail, unroll, masks, compact):
    g = build_encoder_graph(config, detail=detail, unroll=unroll, masks=masks, compact=compact)
    g.validate()  # kinds, endpoints, tables and their parts, clusters, compact edges, acyclic
    order = {n: i for i, n in enumerate(g.topological_order())}
    assert all(order[e.tail] < order[e.head] for e in g.edges if e.kind != "loop")
    NB, S = config.num_blocks, config.num_self_attends_per_block
    # One table per layer drawn: the cross-attention, and S self-attention layers (num_blocks * S unrolled).
    assert [t.id for t in _layers(g, self_only=False)][0] == "cross/layer"
    assert len(_layers(g)) == (NB * S if unroll else S)
    # The one backward edge: rolled with num_blocks > 1, from the block's last layer into its first.
    loops = [e for e in g.edges if e.kind == "loop"]
    assert len(loops) == (1 if NB > 1 and not unroll else 0)
    for e in loops:
        assert e.tail.startswith(f"self{S - 1}/") and e.head == "self0/layernorm1"
    # Every box shows the shape of what it outputs; every data edge carries one.
    assert all(n.shape.startswith("(") for n in g.boxes())
    assert all(e.label.startswith("(") for e in g.edges if e.kind == "data")
    # Ids are path-like; clusters are cluster_*, and only the self-attention blocks are clusters.
    assert all("/" in n for n in g.nodes) and all(c.startswith("cluster_block") for c in g.clusters)
    if not masks:
        assert not [e for e in g.edges if e.kind == "mask"]
        assert not [n for n in g.boxes() if n.kind == "mask" or n.mask]
        assert not [n for n in g.boxes() if any("mask" in note for note in n.notes)]


@given(config=configs(max_blocks=3, max_self_attends=3), detail=details, unroll=st.booleans(), compact=compacts)
def test_each_mask_lands_exactly_where_it_acts(config, detail, unroll, compact):
    g = build_encoder_graph(config, detail=detail, unroll=unroll, compact=compact)
    # Every step that applies a mask gets exactly one edge from the mask's box, and no other box gets one.
    acting = {(_box_of(g, s.mask_source), _box_of(g, s.id), s.mask)
              for s in _steps(config, unroll=unroll) if s.mask_source is not None}
    drawn = [(e.tail, e.head, e.label.split()[0]) for e in _mask_edges(g)]
    assert sorted(drawn) == sorted(acting)
    # inputs_mask in the cross-attention only; the latent mask in every self-attention layer; head_mask row
    # i in layer i of every block, never in the cross-attention.
    assert [e.head for e in _mask_edges(g, "inputs_mask")] == ["cross/inputs_mask"]
    assert sorted(e.head.rsplit("/", 1)[0] + "/layer" for e in _mask_edges(g, "attention_mask")) == \
        sorted(t.id for t in _layers(g))
    for e in _mask_edges(g, "head_mask"):
        layer = _layer_of(e.head)
        assert e.label.startswith(f"head_mask[{layer}] ") and e.head.endswith(f"self{layer}/head_mask")
    # Where HF drops a mask, the edge ends at the step whose note says so.
    dropped = {e.mask: e.head for e in g.edges if e.dropped}
    assert dropped == {"attention_mask": "cross/inputs_mask", "head_mask": _box_of(g, "cross/softmax")}
    assert "latent mask is ignored" in " ".join(g.nodes[dropped["attention_mask"]].notes)
    assert "head_mask=None" in " ".join(g.nodes[dropped["head_mask"]].notes)
    assert "PerceiverModel always passes attention_mask=None" in " ".join(g.nodes["masks/latent_mask"].notes)


@given(config=configs(max_blocks=3, max_self_attends=3), detail=details, unroll=st.booleans(), compact=compacts)
def test_compact_masks_enter_the_block_once_and_list_every_layer(config, detail, unroll, compact):
    g = build_encoder_graph(config, detail=detail, unroll=unroll, compact=compact)
    layers = len(_layers(g))
    drawn = [e for e in g.edges if e.kind == "mask" and not e.dropped and e.mask != "inputs_mask"
             and g.nodes[e.head].kind == "operation"]
    if not (layers > COMPACT_LAYERS if compact is None else compact):
        assert all(e.into is None for e in drawn) and len(drawn) == 2 * layers
        assert all(e.remark == f"row {_layer_of(e.head)}" for e in drawn if e.mask == "head_mask")
        return
    # One edge per mask, into the frame around every self-attention layer, standing for one edge to each.
    outer = "cluster_blocks" if unroll and config.num_blocks > 1 else "cluster_block0" if unroll else "cluster_block"
    assert sorted(e.mask for e in drawn) == ["attention_mask", "head_mask"]
    for e in drawn:
        assert e.into == outer and len(e.each) == layers and e.head == e.each[0][0]
    assert next(e for e in drawn if e.mask == "attention_mask").remark == \
        f"added in each of the {layers} layer{'s' * (layers > 1)}"
    assert next(e for e in drawn if e.mask == "head_mask").remark.startswith("row i → layer i")


@given(config=configs(), detail=details, unroll=st.booleans(), B=st.integers(1, 3), M=st.integers(1, 5),
       seed=st.integers(0, 1000))
def test_shapes_in_the_drawing_are_the_shapes_of_a_real_forward_pass(config, detail, unroll, B, M, seed):
    g = build_encoder_graph(config, detail=detail, unroll=unroll, batch=B, seq_len=M)
    model, x, am, lm, hm = _case(config, B, M, seed)
    steps = encoder_steps(config, batch=B, seq_len=M)
    real = {sid: format_shape(v.shape) for sid, v in run_trace(steps, model, x, am, lm, hm).items()}
    _check_shapes(g, steps, real)


def _check_shapes(g: Graph, steps, real: dict) -> None:
    by_id = {s.id: s for s in steps}
    for n in g.boxes():  # each box shows the shape of the last step it draws
        assert n.shape == real[n.steps[-1]], (n.id, n.shape)
    flows: dict[tuple[str, str], set[str]] = {}
    for e in g.expanded_edges():
        tail, head = g.nodes[e.tail], g.nodes[e.head]
        if e.kind == "data":
            flows.setdefault((e.tail, e.head), set()).add(e.label)
        elif e.kind == "mask" and not e.dropped and e.label.startswith(("inputs_mask", "attention_mask")):
            assert e.label.endswith(real[tail.steps[-1]])  # the mask's name and the shape the layer adds
    for (tail, head), labels in flows.items():  # one edge per array flowing: the tail's steps the head reads
        fed = [t for h in g.nodes[head].steps for t in by_id[h].inputs if t in g.nodes[tail].steps]
        assert labels == {real[t] for t in fed or g.nodes[tail].steps[-1:]}, (tail, head, labels)


@given(config=configs(max_blocks=2, max_self_attends=2), detail=details, unroll=st.booleans(), masks=st.booleans())
def test_every_word_comes_from_the_trace(config, detail, unroll, masks):
    """Titles are the trace's step names, lines its operations, notes its notes; tables are titled by
    scope_title, the block frames by block_title: the drawing words nothing itself."""
    g = build_encoder_graph(config, detail=detail, unroll=unroll, masks=masks)
    by_id = {s.id: s for s in encoder_steps(config)}
    for n in g.boxes():
        steps = [by_id[s] for s in n.steps]
        words = {pretty(s.name) for s in steps}
        assert all(part.strip() in words or part.strip().startswith("split ") for part in
                   n.label.replace(" … ", " · ").replace(", ", " · ").split(" · ")), n.label
        assert set(n.lines) <= {pretty(s.op) for s in steps} and set(n.notes) <= {pretty(s.note) for s in steps}
    for t in (n for n in g.nodes.values() if n.kind == "table" and n.label):
        first = by_id[g.nodes[t.parts[0][0]].steps[0]]
        assert ": ".join((t.label, *t.lines)) in (scope_title(first, config, rolled=not unroll, masks=masks),
                                                   scope_title(first, config).partition(": ")[0])
    for c in g.clusters.values():
        assert ": ".join((c.label, *c.lines)) == block_title(config, c.block)


def test_small_preset_by_id():
    g = build_encoder_graph(SMALL, detail="op")
    assert {"cross/softmax", "self0/head_mask", "self1/head_mask", "masks/inputs_mask"} <= set(g.nodes)
    assert g.nodes["self0/head_mask"].label == "× head_mask[0]"
    assert g.nodes["cross/scores"].lines == ("query @ keyᵀ / √12",)  # 1/sqrt(qk head dim) = 1/sqrt(24/2)
    assert g.nodes["cross/scores"].shape == "(B, 2, 16, M)"
    # The layer reads the query side (layernorm1) and the key/value side (layernorm2) side by side, then
    # the three projections side by side, q before k before v.
    assert g.nodes["cross/layer"].parts[:2] == (("cross/layernorm1", "cross/layernorm2"),
                                                ("cross/query", "cross/key", "cross/value"))
    assert [e.tail for e in g.edges_into("cross/layernorm1")] == ["inputs/embeddings"]
    assert [e.tail for e in g.edges_into("cross/layernorm2")] == ["inputs/inputs"]
    # A projection and its split into heads share a box; the output projection and the query residual too.
    assert g.nodes["cross/query"].steps == ("cross/query", "cross/split_query")
    assert g.nodes["cross/output"].steps == ("cross/output", "cross/query_residual")
    assert [e.tail for e in g.edges_into("cross/output", "residual")] == ["inputs/embeddings"]
    no_res = npp.PerceiverConfig(**{**SMALL.to_dict(), "use_query_residual": False})
    assert build_encoder_graph(no_res, detail="op").nodes["cross/output"].steps == ("cross/output",)
    # Rolled, the block goes round again; unrolled, every application has its own ids.
    assert [(e.tail, e.head) for e in g.edges if e.kind == "loop"] == [("self1/residual", "self0/layernorm1")]
    unrolled = build_encoder_graph(SMALL, detail="op", unroll=True)
    assert {"block0/self1/head_mask", "block1/self1/head_mask"} <= set(unrolled.nodes)
    assert list(unrolled.clusters) == ["cluster_blocks", "cluster_block0", "cluster_block1"]
    assert default_detail(SMALL) == "op" and default_detail(npp.load_preset("language-perceiver")) == "layer"


def test_layer_detail_parts_are_the_runs_between_the_masks():
    g = build_encoder_graph(SMALL, detail="layer")
    assert [[g.nodes[p].label for p in row] for row in g.nodes["self0/layer"].parts] == [
        ["layernorm1 · query · key · value"], ["scores"], ["+ attention_mask"], ["softmax"], ["× head_mask[0]"],
        ["@ value · merge heads · output.dense · + query residual · layernorm · mlp.dense1 · gelu · "
         "mlp.dense2 · + residual"]]
    assert [len(row) for row in g.nodes["cross/layer"].parts][0] == 2  # query side, key/value side


def test_language_perceiver_is_one_row_per_layer_and_compact():
    g = build_encoder_graph(npp.load_preset("language-perceiver"))
    assert g.detail == "layer" and len(_layers(g)) == 26 and all(len(t.parts) == 1 for t in _layers(g))
    assert [g.nodes[p].label for p in g.nodes["self3/layer"].parts[0]] == [
        "layernorm1 … scores", "+ attention_mask", "softmax", "× head_mask[3]", "@ value … + residual"]
    drawn = [e for e in g.edges if e.kind == "mask" and not e.dropped and e.mask != "inputs_mask"
             and g.nodes[e.head].kind == "operation"]
    assert len(drawn) == 2 and all(e.into == "cluster_block" and len(e.each) == 26 for e in drawn)


def test_bad_detail_is_refused():
    with pytest.raises(ValueError, match="detail"):
        build_encoder_graph(SMALL, detail="ops")
    with pytest.raises(ValueError, match="detail"):
        build_mlm_graph(SMALL, detail="all")


# ---------------------------------------------------------------------------- the masked language model
@given(config=mlm_configs(), detail=details, unroll=st.booleans(), compact=compacts)
def test_mlm_graph_masks_and_dataflow(config, detail, unroll, compact):
    g = build_mlm_graph(config, detail=detail, unroll=unroll, compact=compact)
    g.validate()
    acting = {(_box_of(g, s.mask_source), _box_of(g, s.id), s.mask)
              for s in _steps(config, "mlm", unroll) if s.mask_source is not None}
    assert sorted((e.tail, e.head, e.label.split()[0]) for e in _mask_edges(g)) == sorted(acting)
    # The padding mask acts in the encoder's cross-attention only; HF drops it on the way to the decoder
    # (query_mask), and the decoder's step says so. No latent mask in PerceiverForMaskedLM.
    dropped = {e.mask: (e.tail, e.head) for e in g.edges if e.dropped}
    assert dropped == {"inputs_mask": ("masks/inputs_mask", _box_of(g, "decoder/softmax")),
                       "head_mask": ("masks/head_mask_5d", _box_of(g, "cross/softmax"))}
    assert "query_mask" in " ".join(g.nodes[dropped["inputs_mask"][1]].notes)
    assert "masks/latent_mask" not in g.nodes and not _mask_edges(g, "attention_mask")
    # The preprocessor feeds the encoder; the token embedding is also the output layer (tied by use).
    assert [e.head for e in g.edges_from("text/embeddings")] == ["text/token_embeddings", "embedding_decoder/logits"]
    assert [e.head for e in g.edges_from("text/inputs")] == ["cross/layernorm2"]
    # The decoder's queries come from its own parameter; it reads the latents as keys and values.
    assert [e.tail for e in g.edges_into("decoder_query/queries")] == ["decoder_query/output_position_encodings"]
    assert [e.head for e in g.edges_from("output/last_hidden_state")] == ["decoder/layernorm2"]
    assert g.nodes["output/logits"].shape == f"(B, {config.max_position_embeddings}, {config.vocab_size})"
    # The decoder's heads are the text path's, not a number written in the drawing.
    assert f"({MLM_DECODER_HEADS} heads, no mask)" in " ".join(g.nodes["decoder/layer"].lines)


@given(config=mlm_configs(), detail=details, unroll=st.booleans(), B=st.integers(1, 2), M=st.integers(1, 6),
       seed=st.integers(0, 100))
def test_mlm_shapes_in_the_drawing_are_the_shapes_of_a_real_forward_pass(config, detail, unroll, B, M, seed):
    g = build_mlm_graph(config, detail=detail, unroll=unroll, batch=B, seq_len=M)
    model = npp.PerceiverForMaskedLM.init(config, seed=seed)
    rng = np.random.default_rng(seed)
    given_values = {"text/input_ids": rng.integers(0, config.vocab_size, (B, M)),
                    "masks/attention_mask": np.ones((B, M), np.float32),
                    "masks/head_mask": np.ones((config.num_self_attention_layers, config.num_self_attention_heads),
                                               np.float32)}
    steps = mlm_steps(config, batch=B, seq_len=M)
    real = {sid: format_shape(v.shape) for sid, v in execute(steps, config, model.state_dict(), given_values,
                                                             batch=B).items()}
    _check_shapes(g, steps, real)


def test_mlm_refuses_configs_it_cannot_run():
    cfg = npp.PerceiverConfig(**{**SMALL.to_dict(), "d_model": 20})
    with pytest.raises(ValueError, match="divisible by 8"):
        build_mlm_graph(cfg)


# ---------------------------------------------------------------------------- the graph model itself
def _graph() -> Graph:
    """A table of two boxes in a block that goes round, fed by a box outside."""
    g = Graph()
    g.add_cluster(Cluster("cluster_b", "block", role="block"))
    g.add_node(Node("x", "tensor", "x"))
    g.add_node(Node("p", "operation", "p", cluster="cluster_b"))
    g.add_node(Node("q", "operation", "q", cluster="cluster_b"))
    g.add_node(Node("t", "table", "t", cluster="cluster_b", parts=(("p",), ("q",))))
    g.add_edge(Edge("x", "p", "data", "(B, 1)"))
    g.add_edge(Edge("p", "q", "data", "(B, 1)"))
    g.add_edge(Edge("q", "p", "loop"))  # round inside the block: allowed, and not a cycle
    g.add_edge(Edge("x", "p", "mask", "m", into="cluster_b", each=(("p", "m"), ("q", "m"))))
    return g


@pytest.mark.parametrize("break_it, message", [
    (lambda g: g.add_edge(Edge("q", "x", "data")), "cycle"),
    (lambda g: g.add_edge(Edge("x", "nowhere", "data")), "unknown node"),
    (lambda g: g.add_edge(Edge("x", "q", "wiring")), "unknown kind"),
    (lambda g: g.add_node(Node("z", "blob", "z")), "unknown kind"),
    (lambda g: g.add_node(Node("z", "tensor", "z", cluster="cluster_nope")), "unknown cluster"),
    (lambda g: g.add_cluster(Cluster("box", "b")), "must start with 'cluster_'"),
    (lambda g: g.add_cluster(Cluster("cluster_e", "empty")), "empty"),
    (lambda g: g.add_cluster(Cluster("cluster_c", "c", parent="cluster_nope")), "unknown parent"),
    (lambda g: g.add_edge(Edge("x", "q", "data", dropped=True)), "only mask edges"),
    # tables: edges end on their parts, parts are boxes of the table's cluster, in one table only
    (lambda g: g.add_edge(Edge("x", "t", "data")), "must end on a part"),
    (lambda g: g.add_node(Node("u", "table", "u", cluster="cluster_b", parts=(("x",),))), "in the table's cluster"),
    (lambda g: g.add_node(Node("u", "table", "u", cluster="cluster_b", parts=(("p",),))), "two tables"),
    (lambda g: g.add_node(Node("u", "operation", "u", parts=(("x",),))), "only a table"),
    # compact edges: into a real cluster, standing for edges to boxes inside it, the drawn head among them
    (lambda g: g.add_edge(Edge("x", "p", "mask", into="cluster_nope", each=(("p", "m"),))), "unknown cluster"),
    (lambda g: g.add_edge(Edge("x", "p", "mask", into="cluster_b", each=(("p", "m"), ("x", "m")))), "inside"),
    (lambda g: g.add_edge(Edge("x", "q", "mask", into="cluster_b", each=(("p", "m"),))), "one of its targets"),
    (lambda g: g.add_edge(Edge("x", "p", "mask", into="cluster_b")), "needs both"),
    # a loop edge goes round inside one block
    (lambda g: g.add_edge(Edge("p", "x", "loop")), "inside one block"),
])
def test_validate_catches_malformed_graphs(break_it, message):
    g = _graph()
    g.validate()
    break_it(g)
    with pytest.raises(ValueError, match=message):
        g.validate()


def test_expanded_edges_spell_compact_edges_out_and_tables_stand_for_their_parts():
    g = _graph()
    out = [(e.tail, e.head, e.label, e.into) for e in g.expanded_edges() if e.kind == "mask"]
    assert out == [("x", "p", "m", None), ("x", "q", "m", None)]
    assert g.table_of("q") == "t" and g.table_of("x") is None
    assert [n.id for n in g.nodes_in("cluster_b")] == ["t"] and [n.id for n in g.boxes()] == ["x", "p", "q"]


def test_cluster_loops_and_duplicates_are_refused():
    g = _graph()
    g.clusters["cluster_b"] = Cluster("cluster_b", "b", parent="cluster_c")
    g.clusters["cluster_c"] = Cluster("cluster_c", "c", parent="cluster_b")
    with pytest.raises(ValueError, match="nested in itself"):
        g.validate()
    with pytest.raises(ValueError, match="duplicate"):
        _graph().add_node(Node("x", "tensor", "again"))
