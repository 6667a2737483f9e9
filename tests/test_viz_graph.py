"""The encoder graph model (no Graphviz needed): well-formed, and true to HF's dataflow and masks.

Properties are checked over many configs drawn by hypothesis, in both detail levels, rolled and unrolled.
Shapes on the edges are compared with the arrays of a real forward pass, computed by
``test_shapes.run_trace`` (which is itself checked against the model's outputs).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import configs
from test_shapes import _case, run_trace

import npperceiver as npp
from npperceiver.shapes import encoder_steps, format_shape
from viz.encoder_graph import build_encoder_graph, default_detail
from viz.graph import Cluster, Edge, Graph, Node

details = st.sampled_from(["op", "layer"])


def _self_clusters(g: Graph):
    return [c for c in g.clusters.values() if c.role == "self"]


def _mask_edges(g: Graph, family: str):
    """Mask edges of one mask that reach an operation (not the notes where HF drops them)."""
    return [e for e in g.edges if e.kind == "mask" and e.mask == family and not e.dropped
            and g.nodes[e.head].kind == "operation"]


@given(config=configs(max_blocks=3, max_self_attends=3), detail=details, unroll=st.booleans(),
       masks=st.booleans())
def test_graph_is_well_formed(config, detail, unroll, masks):
    g = build_encoder_graph(config, detail=detail, unroll=unroll, masks=masks)
    g.validate()  # kinds, endpoints, cluster nesting, no empty cluster, acyclic
    for e in g.edges:
        assert e.tail in g.nodes and e.head in g.nodes
    order = {n: i for i, n in enumerate(g.topological_order())}
    assert all(order[e.tail] < order[e.head] for e in g.edges)
    assert all(c.id.startswith("cluster_") for c in g.clusters.values())
    # One cluster per self-attention layer drawn: S rolled, num_blocks * S unrolled.
    S, NB = config.num_self_attends_per_block, config.num_blocks
    assert len(_self_clusters(g)) == (NB * S if unroll else S)
    assert sum(c.role == "cross" for c in g.clusters.values()) == 1
    assert sorted(c.layer for c in _self_clusters(g)) == sorted(list(range(S)) * (NB if unroll else 1))
    # Every data edge carries a shape.
    assert all(e.label.startswith("(") for e in g.edges if e.kind == "data")
    # Without masks, nothing of them is drawn.
    if not masks:
        assert not [e for e in g.edges if e.kind == "mask"]
        assert not [n for n in g.nodes.values() if n.kind == "mask" or n.mask]


@given(config=configs(max_blocks=3, max_self_attends=3), detail=details, unroll=st.booleans())
def test_masks_land_where_hf_applies_them(config, detail, unroll):
    g = build_encoder_graph(config, detail=detail, unroll=unroll)
    selfs = _self_clusters(g)
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


@given(config=configs(), detail=details, unroll=st.booleans(), B=st.integers(1, 3), M=st.integers(1, 5),
       seed=st.integers(0, 1000))
def test_edge_shapes_are_the_shapes_of_a_real_forward_pass(config, detail, unroll, B, M, seed):
    g = build_encoder_graph(config, detail=detail, unroll=unroll, batch=B, seq_len=M)
    model, x, am, lm, hm = _case(config, B, M, seed)
    steps = encoder_steps(config, batch=B, seq_len=M)
    real = {sid: format_shape(v.shape) for sid, v in run_trace(steps, model, x, am, lm, hm).items()}
    by_id = {s.id: s for s in steps}
    for e in g.edges:
        if e.kind != "data":
            continue
        tail, head = g.nodes[e.tail], g.nodes[e.head]
        fed = [t for h in head.steps for t in by_id[h].inputs if t in tail.steps] or list(tail.steps[-1:])
        assert fed and {real[t] for t in fed} == {e.label}, (e, fed)
    for e in g.edges:  # a mask edge names its mask and the real shape of what the layer adds or multiplies
        if e.kind == "mask" and not e.dropped and e.label.startswith(("inputs_mask", "attention_mask")):
            src = g.nodes[e.tail].steps[-1]
            assert e.label.endswith(real[src])


def test_small_preset_graph_by_id():
    g = build_encoder_graph(npp.load_preset("small"), detail="op")
    assert {"cross/softmax", "self0/head_mask", "self1/head_mask", "masks/inputs_mask"} <= set(g.nodes)
    assert g.nodes["self0/head_mask"].label == "× head_mask[0]"
    assert g.nodes["cross/scores"].lines == ("query @ keyᵀ / √12",)  # 1/sqrt(qk head dim) = 1/sqrt(24/2)
    assert "cross/query_residual" in g.nodes
    no_res = npp.PerceiverConfig(**{**npp.load_preset("small").to_dict(), "use_query_residual": False})
    g2 = build_encoder_graph(no_res, detail="op")
    assert "cross/query_residual" not in g2.nodes and "self0/query_residual" in g2.nodes
    unrolled = build_encoder_graph(npp.load_preset("small"), detail="op", unroll=True)
    assert {"block0/self1/head_mask", "block1/self1/head_mask"} <= set(unrolled.nodes)
    assert "self0/head_mask" not in unrolled.nodes


def test_default_detail_keeps_big_encoders_legible():
    assert default_detail(npp.load_preset("small")) == "op"
    assert default_detail(npp.load_preset("language-perceiver")) == "layer"
    g = build_encoder_graph(npp.load_preset("language-perceiver"))
    assert len(_self_clusters(g)) == 26 and len(g.nodes) < 60


def test_bad_detail_is_refused():
    with pytest.raises(ValueError, match="detail"):
        build_encoder_graph(npp.load_preset("small"), detail="ops")


# ---------------------------------------------------------------------------- the graph model itself
def _tiny() -> Graph:
    g = Graph()
    g.add_cluster(Cluster("cluster_a", "a"))
    g.add_node(Node("x", "tensor", "x", cluster="cluster_a"))
    g.add_node(Node("y", "operation", "y"))
    g.add_edge(Edge("x", "y", "data", "(B, 1)"))
    return g


@pytest.mark.parametrize("break_it, message", [
    (lambda g: g.add_edge(Edge("y", "x", "data")), "cycle"),
    (lambda g: g.add_edge(Edge("x", "nowhere", "data")), "unknown node"),
    (lambda g: g.add_edge(Edge("x", "y", "wiring")), "unknown kind"),
    (lambda g: g.add_node(Node("z", "blob", "z")), "unknown kind"),
    (lambda g: g.add_node(Node("z", "tensor", "z", cluster="cluster_nope")), "unknown cluster"),
    (lambda g: g.add_cluster(Cluster("box", "b")), "must start with 'cluster_'"),
    (lambda g: g.add_cluster(Cluster("cluster_e", "empty")), "empty"),
    (lambda g: g.add_cluster(Cluster("cluster_b", "b", parent="cluster_nope")), "unknown parent"),
    (lambda g: g.add_edge(Edge("x", "y", "data", dropped=True)), "only mask edges"),
    (lambda g: g.rows.append(("x", "ghost")), "layout hint"),
])
def test_validate_catches_malformed_graphs(break_it, message):
    g = _tiny()
    g.validate()
    break_it(g)
    with pytest.raises(ValueError, match=message):
        g.validate()


def test_cluster_loops_and_duplicates_are_refused():
    g = _tiny()
    g.clusters["cluster_a"] = Cluster("cluster_a", "a", parent="cluster_b")
    g.clusters["cluster_b"] = Cluster("cluster_b", "b", parent="cluster_a")
    with pytest.raises(ValueError, match="nested in itself"):
        g.validate()
    with pytest.raises(ValueError, match="duplicate"):
        _tiny().add_node(Node("x", "tensor", "again"))
