"""The encoder and MLM graph models (no Graphviz needed): well-formed, and true to HF's dataflow and masks.

Properties are checked over many configs drawn by hypothesis, in both detail levels, rolled and unrolled,
with the masks drawn once per layer and in the compact form (once into the block). Shapes in the boxes
and on the edges are compared with the arrays of a real forward pass, computed by
``test_trace.run_trace`` / ``test_trace.execute`` (which are themselves checked against the models).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import configs
from test_trace import _case, execute, run_trace

import npperceiver as npp
from npperceiver.trace import encoder_steps, format_shape, mlm_steps
from npperceiver.viz.encoder_graph import COMPACT_LAYERS, build_encoder_graph, build_mlm_graph, default_detail
from npperceiver.viz.graph import Cluster, Edge, Graph, Node

details = st.sampled_from(["op", "layer"])
compacts = st.sampled_from([None, False, True])


@st.composite
def mlm_configs(draw):
    """Configs that suit PerceiverForMaskedLM: d_model divisible by 8 (the decoder's 8 heads)."""
    cfg = draw(configs(max_blocks=3, max_self_attends=3))
    d_model = draw(st.sampled_from([8, 16]))
    try:
        return npp.PerceiverConfig(**{**cfg.to_dict(), "d_model": d_model, "max_position_embeddings": 6,
                                      "vocab_size": 11})
    except ValueError:  # the cross-attention's widths no longer split over its heads
        assume(False)


def _self_layers(g: Graph):
    """The drawn self-attention layers: one cluster each (op detail: its operations; layer detail: its box)."""
    return [c for c in g.clusters.values() if c.role == "self"]


def _mask_edges(g: Graph, family: str):
    """Mask edges of one mask that reach an operation (not the notes where HF drops them), compact edges
    spelled out: one per operation they stand for."""
    return [e for e in g.expanded_edges() if e.kind == "mask" and e.mask == family and not e.dropped
            and g.nodes[e.head].kind == "operation"]


# ---------------------------------------------------------------------------- the encoder
@given(config=configs(max_blocks=3, max_self_attends=3), detail=details, unroll=st.booleans(),
       masks=st.booleans(), compact=compacts)
def test_graph_is_well_formed(config, detail, unroll, masks, compact):
    g = build_encoder_graph(config, detail=detail, unroll=unroll, masks=masks, compact=compact)
    g.validate()  # kinds, endpoints, compact edges, cluster nesting, no empty cluster, acyclic, layout pieces
    order = {n: i for i, n in enumerate(g.topological_order())}
    assert all(order[e.tail] < order[e.head] for e in g.edges if e.kind != "loop")
    # The one backward edge: rolled with num_blocks > 1, the block's output goes round into its first layer.
    loops = [e for e in g.edges if e.kind == "loop"]
    NB, S = config.num_blocks, config.num_self_attends_per_block
    assert len(loops) == (1 if NB > 1 and not unroll else 0)
    for e in loops:
        assert g.within(e.tail, "cluster_self" + str(S - 1)) and g.within(e.head, "cluster_self0")
    # One cluster per self-attention layer drawn: S rolled, num_blocks * S unrolled.
    assert len(_self_layers(g)) == (NB * S if unroll else S)
    assert sum(c.role == "cross" for c in g.clusters.values()) == 1
    assert sorted(c.layer for c in _self_layers(g)) == sorted(list(range(S)) * (NB if unroll else 1))
    # Every data edge carries a shape; every box but the notes shows one.
    assert all(e.label.startswith("(") for e in g.edges if e.kind == "data")
    assert all(n.shape.startswith("(") for n in g.nodes.values() if n.kind != "note")
    # The layout names every node once, in pieces: sources on top, then the layers.
    assert sorted(n for piece in g.pieces() for n in g.piece_nodes(piece)) == sorted(g.nodes)
    assert g.layout[1][0][0] == "cluster_cross"
    # Without masks, nothing of them is drawn.
    if not masks:
        assert not [e for e in g.edges if e.kind == "mask"]
        assert not [n for n in g.nodes.values() if n.kind == "mask" or n.mask]


@given(config=configs(max_blocks=3, max_self_attends=3), detail=details, unroll=st.booleans(), compact=compacts)
def test_masks_land_where_hf_applies_them(config, detail, unroll, compact):
    g = build_encoder_graph(config, detail=detail, unroll=unroll, compact=compact)
    selfs = _self_layers(g)
    # inputs_mask: only in the cross-attention, once.
    inputs = _mask_edges(g, "inputs_mask")
    assert len(inputs) == 1 and g.within(inputs[0].head, "cluster_cross")
    assert inputs[0].label.startswith("inputs_mask")
    # The latent mask (the encoder's attention_mask): in every self-attention layer, once, nowhere else.
    latent = _mask_edges(g, "attention_mask")
    assert sorted(next(c.id for c in selfs if g.within(e.head, c.id)) for e in latent) == sorted(c.id for c in selfs)
    assert not any(g.within(e.head, "cluster_cross") for e in latent)
    # head_mask: row i only in layer i (of every block), never in the cross-attention.
    heads = _mask_edges(g, "head_mask")
    assert len(heads) == len(selfs)
    for c in selfs:
        into = [e for e in heads if g.within(e.head, c.id)]
        assert len(into) == 1 and into[0].label.startswith(f"head_mask[{c.layer}] ")
    assert not any(g.within(e.head, "cluster_cross") for e in heads)
    # Where HF drops a mask, the drawing says so: the latent mask and head_mask end at a note in the
    # cross-attention, and a note says PerceiverModel never passes a latent mask.
    dropped = {e.mask for e in g.edges if e.dropped}
    assert dropped == {"attention_mask", "head_mask"}
    assert all(g.nodes[e.head].kind == "note" and g.within(e.head, "cluster_cross") for e in g.edges if e.dropped)
    assert any(n.kind == "note" and "PerceiverModel" in n.label for n in g.nodes.values())


@given(config=configs(max_blocks=3, max_self_attends=3), detail=details, unroll=st.booleans(), compact=compacts)
def test_compact_masks_are_drawn_once_and_say_where_they_go(config, detail, unroll, compact):
    g = build_encoder_graph(config, detail=detail, unroll=unroll, compact=compact)
    layers = len(_self_layers(g))
    is_compact = layers > COMPACT_LAYERS if compact is None else compact
    drawn = [e for e in g.edges if e.kind == "mask" and e.mask in ("attention_mask", "head_mask") and not e.dropped
             and g.nodes[e.head].kind != "mask"]
    if not is_compact:
        assert all(e.into is None for e in g.edges) and len(drawn) == 2 * layers
        return
    # One drawn edge per mask, into the cluster holding every self-attention layer, standing for one edge
    # to each layer (the head_mask one with row i for layer i).
    into = "cluster_blocks" if unroll else "cluster_block"
    assert sorted(e.mask for e in drawn) == ["attention_mask", "head_mask"]
    for e in drawn:
        assert e.into == into and len(e.each) == layers and e.head == e.each[0][0]
        assert all(g.within(head, into) for head, _ in e.each)
        assert e.remark  # the words on the drawn edge say it reaches every layer
    assert "each of the" in next(e for e in drawn if e.mask == "attention_mask").remark
    assert "row i → layer i" in next(e for e in drawn if e.mask == "head_mask").remark


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
    for n in g.nodes.values():  # each box shows the shape of the last step it draws
        if n.steps:
            assert n.shape == real[n.steps[-1]], (n.id, n.shape)
    for e in g.expanded_edges():
        if e.kind != "data":
            continue
        tail, head = g.nodes[e.tail], g.nodes[e.head]
        fed = [t for h in head.steps for t in by_id[h].inputs if t in tail.steps] or list(tail.steps[-1:])
        assert fed and {real[t] for t in fed} == {e.label}, (e, fed)
    for e in g.expanded_edges():  # a mask edge names its mask and the real shape of what the layer adds
        if e.kind == "mask" and not e.dropped and e.label.startswith(("inputs_mask", "attention_mask")):
            assert e.label.endswith(real[g.nodes[e.tail].steps[-1]])


def test_small_preset_graph_by_id():
    g = build_encoder_graph(npp.load_preset("small"), detail="op")
    assert {"cross/softmax", "self0/head_mask", "self1/head_mask", "masks/inputs_mask"} <= set(g.nodes)
    assert g.nodes["self0/head_mask"].label == "× head_mask[0]"
    assert g.nodes["cross/scores"].lines == ("query @ keyᵀ / √12",)  # 1/sqrt(qk head dim) = 1/sqrt(24/2)
    assert g.nodes["cross/scores"].shape == "(B, 2, 16, M)"
    # The output projection and the query residual share a box, which the layer input reaches.
    assert g.nodes["cross/output"].steps == ("cross/output", "cross/query_residual")
    assert any(e.kind == "residual" and e.head == "cross/output" for e in g.edges)
    no_res = npp.PerceiverConfig(**{**npp.load_preset("small").to_dict(), "use_query_residual": False})
    g2 = build_encoder_graph(no_res, detail="op")
    assert g2.nodes["cross/output"].steps == ("cross/output",) and "no query residual" in g2.nodes["cross/output"].lines[0]
    unrolled = build_encoder_graph(npp.load_preset("small"), detail="op", unroll=True)
    assert {"block0/self1/head_mask", "block1/self1/head_mask"} <= set(unrolled.nodes)
    assert "self0/head_mask" not in unrolled.nodes
    # Rolled, the block goes round again: its output feeds its first layer.
    assert [(e.tail, e.head) for e in g.edges if e.kind == "loop"] == [("self1/residual", "self0/input")]
    # The layout: sources and masks, then one column per layer, the result under the last.
    assert g.layout == [[["cluster_inputs"], ["cluster_masks"]],
                        [["cluster_cross"], ["cluster_self0"], ["cluster_self1", "last_hidden_state"]]]


def test_language_perceiver_is_compact_and_in_columns():
    g = build_encoder_graph(npp.load_preset("language-perceiver"))
    assert default_detail(npp.load_preset("language-perceiver")) == "layer"
    assert len(_self_layers(g)) == 26 and len(g.nodes) < 60
    drawn = [e for e in g.edges if e.kind == "mask" and not e.dropped and e.mask != "inputs_mask"
             and g.nodes[e.head].kind != "mask"]
    assert len(drawn) == 2 and all(e.into == "cluster_block" for e in drawn)  # not 52 edges
    # The cross-attention in a column of its own, then the 26 layers in two columns of 13, in order.
    assert [len(column) for column in g.layout[1]] == [1, 13, 14]
    assert [p for column in g.layout[1][1:] for p in column][:-1] == [f"cluster_self{i}" for i in range(26)]
    assert default_detail(npp.load_preset("small")) == "op"
    assert all(e.into is None for e in build_encoder_graph(npp.load_preset("small")).edges)


def test_bad_detail_is_refused():
    with pytest.raises(ValueError, match="detail"):
        build_encoder_graph(npp.load_preset("small"), detail="ops")
    with pytest.raises(ValueError, match="detail"):
        build_mlm_graph(npp.load_preset("small"), detail="all")


# ---------------------------------------------------------------------------- the masked language model
@given(config=mlm_configs(), detail=details, unroll=st.booleans(), compact=compacts)
def test_mlm_graph_masks_and_dataflow(config, detail, unroll, compact):
    g = build_mlm_graph(config, detail=detail, unroll=unroll, compact=compact)
    g.validate()
    selfs = _self_layers(g)
    # The padding mask acts in the encoder's cross-attention only; HF drops it on the way to the decoder
    # (query_mask), and a note in the decoder says so.
    inputs = _mask_edges(g, "inputs_mask")
    assert len(inputs) == 1 and g.within(inputs[0].head, "cluster_cross")
    to_decoder = [e for e in g.edges if e.mask == "inputs_mask" and e.dropped]
    assert len(to_decoder) == 1 and g.nodes[to_decoder[0].head].kind == "note"
    assert g.within(to_decoder[0].head, "cluster_decoder") and "query_mask" in g.nodes[to_decoder[0].head].label
    assert not any(e.kind == "mask" and not e.dropped and g.within(e.head, "cluster_decoder")
                   for e in g.expanded_edges())
    # No latent mask in PerceiverForMaskedLM; head_mask row i in layer i, as in the encoder.
    assert not _mask_edges(g, "attention_mask") and "masks/latent_mask" not in g.nodes
    heads = _mask_edges(g, "head_mask")
    for c in selfs:
        into = [e for e in heads if g.within(e.head, c.id)]
        assert len(into) == 1 and into[0].label.startswith(f"head_mask[{c.layer}] ")
    # The preprocessor feeds the encoder; the token embedding is also the output layer (tied by use).
    assert [e.head for e in g.edges_from("text/embeddings")] == ["text/token_embeddings",
                                                                "embedding_decoder/logits"]
    assert any(g.within(e.head, "cluster_cross") for e in g.edges_from("text/inputs"))
    # The decoder's queries come from its own parameter, not from the input; it reads the latents.
    queries = g.edges_into("decoder_query/queries")
    assert [e.tail for e in queries] == ["decoder_query/output_position_encodings"]
    assert any(g.within(e.head, "cluster_decoder_attention") for e in g.edges_from("last_hidden_state"))
    assert g.nodes["logits"].shape == f"(B, {config.max_position_embeddings}, {config.vocab_size})"


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
    cfg = npp.PerceiverConfig(**{**npp.load_preset("small").to_dict(), "d_model": 20})
    with pytest.raises(ValueError, match="divisible by 8"):
        build_mlm_graph(cfg)


# ---------------------------------------------------------------------------- the graph model itself
def _tiny() -> Graph:
    g = Graph()
    g.add_cluster(Cluster("cluster_a", "a"))
    g.add_node(Node("x", "tensor", "x", cluster="cluster_a"))
    g.add_node(Node("y", "operation", "y"))
    g.add_edge(Edge("x", "y", "data", "(B, 1)"))
    return g


def _with_block() -> Graph:
    g = _tiny()
    g.add_cluster(Cluster("cluster_b", "block", role="block"))
    g.add_node(Node("p", "operation", "p", cluster="cluster_b"))
    g.add_node(Node("q", "operation", "q", cluster="cluster_b"))
    g.add_edge(Edge("p", "q", "data", "(B, 1)"))
    return g


@pytest.mark.parametrize("break_it, message", [
    (lambda g: g.add_edge(Edge("y", "x", "data")), "cycle"),
    (lambda g: g.add_edge(Edge("x", "nowhere", "data")), "unknown node"),
    (lambda g: g.add_edge(Edge("x", "y", "wiring")), "unknown kind"),
    (lambda g: g.add_node(Node("z", "blob", "z")), "unknown kind"),
    (lambda g: g.add_node(Node("z", "tensor", "z", cluster="cluster_nope")), "unknown cluster"),
    (lambda g: g.add_cluster(Cluster("box", "b")), "must start with 'cluster_'"),
    (lambda g: g.add_cluster(Cluster("cluster_e", "empty")), "empty"),
    (lambda g: g.add_cluster(Cluster("cluster_c", "c", parent="cluster_nope")), "unknown parent"),
    (lambda g: g.add_edge(Edge("x", "y", "data", dropped=True)), "only mask edges"),
    (lambda g: g.rows.append(("x", "ghost")), "layout hint"),
    # compact edges: into a real cluster, standing for edges to nodes inside it, the drawn head among them
    (lambda g: g.add_edge(Edge("x", "p", "mask", into="cluster_nope", each=(("p", "m"),))), "unknown cluster"),
    (lambda g: g.add_edge(Edge("x", "p", "mask", into="cluster_b", each=(("p", "m"), ("y", "m")))), "not a node inside"),
    (lambda g: g.add_edge(Edge("x", "q", "mask", into="cluster_b", each=(("p", "m"),))), "must be one of"),
    (lambda g: g.add_edge(Edge("x", "p", "mask", into="cluster_b")), "needs both"),
    # a loop edge goes round inside one block
    (lambda g: g.add_edge(Edge("y", "x", "loop")), "inside one block"),
    # layout pieces: known, disjoint, covering every node
    (lambda g: g.layout.append([["cluster_a"], ["cluster_nope"]]), "unknown piece"),
    (lambda g: g.layout.append([["cluster_a", "x", "y", "cluster_b"]]), "two layout pieces"),
    (lambda g: g.layout.append([["cluster_a", "y"]]), "leaves out"),
])
def test_validate_catches_malformed_graphs(break_it, message):
    g = _with_block()
    g.add_edge(Edge("q", "p", "loop"))  # round inside the block: allowed, and not a cycle
    g.add_edge(Edge("x", "p", "mask", "m", into="cluster_b", each=(("p", "m"), ("q", "m"))))
    g.validate()
    break_it(g)
    with pytest.raises(ValueError, match=message):
        g.validate()


def test_expanded_edges_spell_compact_edges_out():
    g = _with_block()
    g.add_edge(Edge("x", "p", "mask", "row", mask="head_mask", into="cluster_b", each=(("p", "row 0"), ("q", "row 1"))))
    out = [(e.tail, e.head, e.label, e.into) for e in g.expanded_edges() if e.kind == "mask"]
    assert out == [("x", "p", "row 0", None), ("x", "q", "row 1", None)]


def test_cluster_loops_and_duplicates_are_refused():
    g = _tiny()
    g.clusters["cluster_a"] = Cluster("cluster_a", "a", parent="cluster_b")
    g.clusters["cluster_b"] = Cluster("cluster_b", "b", parent="cluster_a")
    with pytest.raises(ValueError, match="nested in itself"):
        g.validate()
    with pytest.raises(ValueError, match="duplicate"):
        _tiny().add_node(Node("x", "tensor", "again"))
