"""The translation model's graph (no Graphviz needed): the encoder and the decoder framed, every mask reaching
the step that applies it, and the latents' edge into each decoder cross-attention -- where the source enters.

Configs are drawn by hypothesis (either decoder, one or two autoregressive layers, both detail levels, rolled
and unrolled, with and without the masks); shapes in the boxes are compared with the arrays of a real
forward pass, computed by ``test_trace.execute`` (itself checked against ``PerceiverSeq2Seq``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_seq2seq import random_seq2seq, seq2seq_configs
from test_trace import execute
from test_viz_graph import _box_of, _check_shapes, _mask_edges

from npperceiver.seq2seq import Seq2SeqConfig, causal_mask
from npperceiver.trace import SOURCE_ENTERS, block_title, format_shape, part_title, scope_title, seq2seq_steps
from npperceiver.viz.encoder_graph import build_seq2seq_graph, pretty
from npperceiver.viz.graph import Graph

details = st.sampled_from(["op", "layer"])


def _drawn_steps(config: Seq2SeqConfig, unroll: bool, **kw):
    """The trace the drawing shows: rolled, the first application of the encoder's block stands for every one."""
    steps = seq2seq_steps(config, **kw)
    return steps if unroll else [s for s in steps if s.block in (None, 0)]


def _decoder_cross(config: Seq2SeqConfig) -> list[str]:
    """The scopes of the decoder's cross-attentions to the latents."""
    if config.decoder == "queries":
        return ["decoding"]
    return [f"decoder{j}/cross" for j in range(config.num_decoder_layers)]


def _in(g: Graph, box: str, cluster: str) -> bool:
    return cluster in g.ancestors(g.nodes[box].cluster)


@given(config=seq2seq_configs(), detail=details, unroll=st.booleans(), masks=st.booleans())
def test_graph_is_well_formed_and_framed(config, detail, unroll, masks):
    g = build_seq2seq_graph(config, detail=detail, unroll=unroll, masks=masks)
    g.validate()  # kinds, endpoints, tables and their parts, clusters, compact edges, acyclic
    # The encoder and the decoder each in a frame of their own; the encoder's block inside the encoder's.
    assert {c.id for c in g.clusters.values() if c.role == "part"} == {"cluster_encoder", "cluster_decoder"}
    blocks = [c for c in g.clusters.values() if c.role == "block"]
    assert blocks and all(_in_cluster(g, c.id, "cluster_encoder") for c in blocks)
    assert _in(g, "cross/inputs_mask" if masks else _box_of(g, "cross/softmax"), "cluster_encoder")
    assert _in(g, _box_of(g, "output/last_hidden_state"), "cluster_encoder")
    for scope in _decoder_cross(config):
        assert _in(g, _box_of(g, f"{scope}/softmax"), "cluster_decoder")
        assert not _in(g, _box_of(g, f"{scope}/softmax"), "cluster_encoder")
    assert _in(g, _box_of(g, "head/lm_head"), "cluster_decoder")
    for outside in ("source/source_ids", "target/target_ids", "output/logits", "loss/loss"):  # inputs, results
        assert g.nodes[_box_of(g, outside)].cluster is None
    if not masks:
        assert not [e for e in g.edges if e.kind == "mask"]
        assert not [n for n in g.boxes() if n.kind == "mask" or n.mask]


def _in_cluster(g: Graph, cluster: str, outer: str) -> bool:
    return outer in g.ancestors(cluster)


@given(config=seq2seq_configs(), detail=details, unroll=st.booleans())
def test_every_mask_reaches_the_step_that_applies_it_and_no_other(config, detail, unroll):
    g = build_seq2seq_graph(config, detail=detail, unroll=unroll)
    acting = {(_box_of(g, s.mask_source), _box_of(g, s.id), s.mask)
              for s in _drawn_steps(config, unroll) if s.mask_source is not None}
    assert sorted((e.tail, e.head, e.label.split()[0]) for e in _mask_edges(g)) == sorted(acting)
    # The source padding: into the encoder's cross-attention, nowhere else.
    assert [(e.tail, e.head) for e in _mask_edges(g, "inputs_mask")] == [("masks/inputs_mask", "cross/inputs_mask")]
    assert g.nodes["masks/attention_mask"].label == "source_mask"
    # The causal mask: into each decoder self-attention of the autoregressive decoder, and only there.
    causal = [e.head for e in _mask_edges(g, "causal_mask")]
    if config.decoder == "autoregressive":
        assert causal == [f"decoder{j}/self/causal_mask" for j in range(config.num_decoder_layers)]
        T = config.max_target_length
        assert all(e.label == f"causal_mask (1, 1, {T}, {T})" for e in _mask_edges(g, "causal_mask"))
    else:
        assert causal == [] and "masks/causal_mask" not in g.nodes
    # The target padding: into the loss's labels (-100), nowhere in the decoder.
    assert [(e.tail, e.head) for e in _mask_edges(g, "target_padding")] == [("target/padding", "loss/labels")]
    assert _mask_edges(g, "target_padding")[0].label == f"target_padding (B, {config.max_target_length})"
    # Nothing masks a decoder cross-attention, and the model takes no latent mask nor head_mask.
    for scope in _decoder_cross(config):
        layer = g.nodes[f"{scope}/layer"]
        boxes = {p for row in layer.parts for p in row}
        assert not [e for e in g.edges if e.kind == "mask" and e.head in boxes]
        assert "every latent is real" in " ".join(g.nodes[_box_of(g, f"{scope}/softmax")].notes)
    assert not [e for e in g.edges if e.dropped]
    assert not {"masks/head_mask", "masks/latent_mask"} & set(g.nodes)


@given(config=seq2seq_configs(), detail=details, unroll=st.booleans())
def test_the_decoder_cross_attention_reads_the_latents_where_the_source_enters(config, detail, unroll):
    """The picture answers "where does the source enter the decoder?": the latents' edge, marked, into the
    key/value side of every decoder cross-attention, and into nothing else."""
    g = build_seq2seq_graph(config, detail=detail, unroll=unroll)
    latents = _box_of(g, "output/last_hidden_state")
    heads = [e.head for e in g.edges_from(latents, "data")]
    assert heads == [_box_of(g, f"{scope}/layernorm2") for scope in _decoder_cross(config)]
    for e in g.edges_from(latents, "data"):
        assert e.remark == SOURCE_ENTERS
        assert e.label == f"(B, {config.encoder.num_latents}, {config.encoder.d_latents})"  # (B, N, D)
    assert [e for e in g.edges if e.remark == SOURCE_ENTERS] == g.edges_from(latents, "data")
    # The source itself reaches the encoder's cross-attention only.
    assert [e.head for e in g.edges_from(_box_of(g, "source/inputs"))] == [_box_of(g, "cross/layernorm2")]


@given(config=seq2seq_configs(), detail=details)
def test_what_each_decoder_reads(config, detail):
    g = build_seq2seq_graph(config, detail=detail)
    target = _box_of(g, "target/target_ids")
    if config.decoder == "queries":  # its queries are its own parameter; the target feeds the loss only
        assert sorted(e.head for e in g.edges_from(target)) == ["loss/labels", "target/padding"]
        assert [e.tail for e in g.edges_into(_box_of(g, "queries/queries"))] == ["queries/output_position_encodings"]
        assert not [n for n in g.nodes if n.startswith("decoder0/")]
    else:  # teacher forcing: the shifted target is embedded, then read by the first causal self-attention
        assert sorted(e.head for e in g.edges_from(target)) == [_box_of(g, "decoder_inputs/decoder_input_ids"),
                                                                "loss/labels", "target/padding"]
        assert [e.head for e in g.edges_from(_box_of(g, "decoder_inputs/inputs"), "data")] == \
            [_box_of(g, "decoder0/self/layernorm1")]
        for j in range(1, config.num_decoder_layers):  # each layer reads the one before
            assert [e.tail for e in g.edges_into(_box_of(g, f"decoder{j}/self/layernorm1"), "data")] == \
                [_box_of(g, f"decoder{j - 1}/cross/residual")]
    assert [e.tail for e in g.edges_into(_box_of(g, "loss/loss"), "data")] == [_box_of(g, "output/logits"),
                                                                               "loss/labels"]


@given(config=seq2seq_configs(), detail=details, unroll=st.booleans(), B=st.integers(1, 2), M=st.integers(1, 7),
       seed=st.integers(0, 100))
def test_shapes_in_the_drawing_are_the_shapes_of_a_real_forward_pass(config, detail, unroll, B, M, seed):
    g = build_seq2seq_graph(config, detail=detail, unroll=unroll, batch=B, seq_len=M)
    model = random_seq2seq(config, seed)
    rng = np.random.default_rng(seed)
    T = config.max_target_length
    given_values = {"source/source_ids": rng.integers(0, config.encoder.vocab_size, (B, M)),
                    "masks/attention_mask": np.ones((B, M), np.float32), "masks/causal_mask": causal_mask(T),
                    "target/target_ids": rng.integers(0, config.target_vocab_size, (B, T))}
    steps = seq2seq_steps(config, batch=B, seq_len=M)
    values = execute(steps, config.encoder, model.state_dict(), given_values, batch=B,
                     decoder_heads=config.num_decoder_heads)
    _check_shapes(g, steps, {sid: format_shape(v.shape) for sid, v in values.items()})


@given(config=seq2seq_configs(), detail=details, unroll=st.booleans(), masks=st.booleans())
def test_every_word_comes_from_the_trace(config, detail, unroll, masks):
    """Boxes say the trace's names, operations and notes; tables are titled by scope_title, the encoder's and
    the decoder's frames by part_title, the block's by block_title."""
    g = build_seq2seq_graph(config, detail=detail, unroll=unroll, masks=masks)
    by_id = {s.id: s for s in seq2seq_steps(config)}
    for n in g.boxes():
        steps = [by_id[s] for s in n.steps]
        words = {pretty(s.name) for s in steps}
        assert all(part.strip() in words or part.strip().startswith("split ") for part in
                   n.label.replace(" … ", " · ").replace(", ", " · ").split(" · ")), n.label
        assert set(n.lines) <= {pretty(s.op) for s in steps} and set(n.notes) <= {pretty(s.note) for s in steps}
    for t in (n for n in g.nodes.values() if n.kind == "table" and n.label):
        first = by_id[g.nodes[t.parts[0][0]].steps[0]]
        assert ": ".join((t.label, *t.lines)) in (scope_title(first, config, rolled=not unroll, masks=masks),
                                                   scope_title(first, config, masks=masks).partition(": ")[0])
    for c in g.clusters.values():
        expected = ": ".join(part_title(config, c.id[len("cluster_"):])) if c.role == "part" else \
            block_title(config.encoder, c.block)
        assert ": ".join((c.label, *c.lines)) == expected
    assert g.title.startswith("Perceiver encoder–decoder")


def test_the_recipe_models_by_id():
    auto = build_seq2seq_graph(Seq2SeqConfig.for_task("digits-to-words"), name="digits-to-words")
    assert auto.nodes["decoder0/self/causal_mask"].label == "+ causal_mask"
    assert auto.nodes["decoder0/self/causal_mask"].shape == "(B, 4, 10, 10)"  # (B, Hd, T, T)
    assert auto.nodes["decoder0/cross/layernorm2"].shape == "(B, 32, 64)"  # (B, N, D): the latents
    assert auto.nodes["output/logits"].shape == "(B, 10, 33)"  # (B, T, V)
    assert auto.nodes["loss/loss"].shape == "()"
    assert "autoregressive (T5-like)" in auto.title and "digits-to-words" in auto.title
    queries = build_seq2seq_graph(Seq2SeqConfig.for_task("words-to-digits", "queries"), detail="op")
    assert queries.nodes["decoding/scores"].shape == "(B, 4, 7, 32)"  # (B, Hd, T, N)
    assert queries.nodes["masks/inputs_mask"].shape == "(B, 1, 1, M)"
    assert "output queries (Perceiver IO)" in queries.title


def test_refuses_what_it_cannot_draw():
    config = Seq2SeqConfig.for_task("digits-to-words")
    with pytest.raises(ValueError, match="max_position_embeddings = 6"):
        build_seq2seq_graph(config, seq_len=7)
    with pytest.raises(ValueError, match="Seq2SeqConfig"):
        build_seq2seq_graph(config.encoder)
    with pytest.raises(ValueError, match="detail"):
        build_seq2seq_graph(config, detail="all")
