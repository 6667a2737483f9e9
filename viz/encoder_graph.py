"""The Perceiver encoder of one config as a graph: its layers, and how data and each mask flow through them.

:func:`build_encoder_graph` reads the forward trace (:func:`npperceiver.trace.encoder_steps`), the one the
``explain`` table prints and the tests execute against the model, so every box shows steps of the real
forward pass, worded as the trace words them, with the shape their array has. :func:`build_mlm_graph`
does the same for the masked language model (:func:`npperceiver.trace.mlm_steps`), and
:func:`build_seq2seq_graph` for the translation model (:func:`npperceiver.trace.seq2seq_steps`): the
encoder and the decoder each in a frame, and the latents' edge into every decoder cross-attention marked
as where the source enters the decoder.

Each group of steps (a layer, the inputs, the masks, ...) is a table titled by
:func:`npperceiver.trace.scope_title`, its parts the boxes of its steps. A layer's first row is where it
reads its input: the query side and, in a cross-attention, the key/value side beside it. ``detail="op"``
gives every operation a box (a projection and its split into heads share one, as do the MLP's three
steps); ``detail="layer"`` gives a box to each run of steps between the masks. Rolled (the default) the
self-attention block is drawn once, framed, and a loop edge feeds it back ``num_blocks`` times; unrolled,
every application is drawn. Each mask reaches exactly the step that applies it; where HF drops one, the
edge ends, ``dropped``, at the step whose note says so. With more than :data:`COMPACT_LAYERS`
self-attention layers drawn, the latent mask and ``head_mask`` enter the block's frame once, as *compact*
edges that list every step they reach.
"""

from __future__ import annotations

import re
from dataclasses import replace
from itertools import groupby, zip_longest
from typing import Optional, Union

from npperceiver.config import PerceiverConfig
from npperceiver.seq2seq import Seq2SeqConfig
from npperceiver.trace import (
    SOURCE_ENTERS, Dim, Step, block_title, encoder_steps, format_shape, mlm_steps, part_title, scope_title,
    seq2seq_steps,
)

from .graph import Cluster, Edge, Graph, Node

DETAILS = ("layer", "op")

#: With more self-attention layers drawn than this, the latent mask and head_mask enter the block once
#: (a compact edge) rather than once per layer: edges to the lower layers would run beside the upper ones.
COMPACT_LAYERS = 1

#: Layer detail: with more self-attention layers drawn than this, each is a table of one row.
ROW_LAYERS = 4

#: The mask family of each mask step, by the id of the step; the renderer colours by family.
MASK_FAMILY = {"masks/attention_mask": "inputs_mask", "masks/inputs_mask": "inputs_mask",
               "masks/latent_mask": "attention_mask", "masks/attention_bias": "attention_mask",
               "masks/head_mask": "head_mask", "masks/head_mask_5d": "head_mask",
               "masks/causal_mask": "causal_mask", "target/padding": "target_padding"}

#: Op detail: steps drawn in the box of an earlier step of their layer. The split into heads goes with its
#: projection, the merge of the heads with the product by the values, the query residual with the output
#: projection, the MLP's activation and second Linear with its first. The splits, bookkeeping, go unnamed
#: in a box's title (their operation still has its line).
_JOIN = {"split_query": "query", "split_key": "key", "split_value": "value", "merge_heads": "context",
         "query_residual": "output", "mlp_act": "mlp_dense1", "mlp_dense2": "mlp_dense1"}
_UNNAMED = ("split_query", "split_key", "split_value")

#: Where HF throws a mask away: (mask step, the step whose note says so, the words on the edge).
_DROPS = (("masks/attention_bias", "cross/inputs_mask", "ignored"),
          ("masks/head_mask_5d", "cross/softmax", "not passed"),
          ("masks/inputs_mask", "decoder/softmax", "dropped"))

_PRETTY = (("->", "→"), ("key^T", "keyᵀ"), ("E^T", "Eᵀ"), (" x ", " × "), ("x head_mask", "× head_mask"))


def pretty(text: str) -> str:
    """The trace's ASCII operators as a slide writes them: ``->`` as →, ``x`` as ×, ``sqrt(12)`` as √12."""
    for ascii_text, nice in _PRETTY:
        text = text.replace(ascii_text, nice)
    head, sqrt, tail = text.partition("sqrt(")
    return f"{head}√{tail.replace(')', '', 1)}" if sqrt else text


def default_detail(config: PerceiverConfig, unroll: bool = False) -> str:
    """``op`` while the drawing has at most 8 layers, ``layer`` beyond (language-perceiver has 27)."""
    return "op" if 1 + drawn_self_layers(config, unroll) <= 8 else "layer"


def drawn_self_layers(config: PerceiverConfig, unroll: bool) -> int:
    """How many self-attention layers a drawing shows: S rolled, num_blocks x S unrolled."""
    return config.num_self_attends_per_block * (config.num_blocks if unroll else 1)


def build_encoder_graph(config: PerceiverConfig, *, detail: Optional[str] = None, unroll: bool = False,
                        batch: Dim = "B", seq_len: Dim = "M", masks: bool = True, name: str = "",
                        compact: Optional[bool] = None) -> Graph:
    """The encoder of ``config`` (HF ``PerceiverModel``) as a :class:`~npperceiver.viz.graph.Graph`.

    ``detail``: "op" (a box per operation) or "layer" (a table per PerceiverLayer); None picks
    :func:`default_detail`. ``unroll``: draw every application of the self-attention block. ``batch``,
    ``seq_len``: sizes for B and M, or letters to keep them symbolic. ``masks``: draw the three masks.
    ``name``: what the title calls the config. ``compact``: the latent mask and head_mask enter each block
    once; None: when more than :data:`COMPACT_LAYERS` self-attention layers are drawn.
    """
    detail = default_detail(config, unroll) if detail is None else detail
    steps = encoder_steps(config, batch=batch, seq_len=seq_len)
    return _Builder(config, steps, "encoder", detail, unroll, masks, compact, name).build()


def build_mlm_graph(config: PerceiverConfig, *, detail: str = "layer", unroll: bool = False, batch: Dim = "B",
                    seq_len: Dim = "M", masks: bool = True, name: str = "", compact: Optional[bool] = None) -> Graph:
    """The masked language model of ``config`` (HF ``PerceiverForMaskedLM``) as a graph: the encoder
    drawing with the text preprocessor, the decoder's output queries and cross-attention to the latents,
    and the embedding decoder. Options as :func:`build_encoder_graph`; ``ValueError`` if the config does not
    suit the MLM."""
    steps = mlm_steps(config, batch=batch, seq_len=seq_len)
    return _Builder(config, steps, "mlm", detail, unroll, masks, compact, name).build()


def build_seq2seq_graph(config: Seq2SeqConfig, *, detail: str = "layer", unroll: bool = False, batch: Dim = "B",
                        seq_len: Dim = "M", masks: bool = True, name: str = "",
                        compact: Optional[bool] = None) -> Graph:
    """The translation model of ``config`` (``npperceiver.seq2seq.PerceiverSeq2Seq``, either decoder) as a
    graph: the source's embedding, the Perceiver encoder framed, the target (or the output queries), the
    decoder framed, the logits and the loss; the source padding mask into the encoder's cross-attention,
    the causal mask into each decoder self-attention, the target padding into the loss, and the latents
    into each decoder cross-attention, the edge marked as where the source enters the decoder. Options as
    :func:`build_encoder_graph`; ``ValueError`` for a config that is not a ``Seq2SeqConfig``."""
    steps = seq2seq_steps(config, batch=batch, seq_len=seq_len)
    return _Builder(config.encoder, steps, "seq2seq", detail, unroll, masks, compact, name, full=config).build()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


class _Builder:
    def __init__(self, config: PerceiverConfig, steps: list[Step], model: str, detail: str, unroll: bool,
                 masks: bool, compact: Optional[bool], name: str,
                 full: Optional[Union[PerceiverConfig, Seq2SeqConfig]] = None):
        if detail not in DETAILS:
            raise ValueError(f"detail must be one of {', '.join(DETAILS)}, got {detail!r}")
        if not unroll:  # the block drawn once: its first application, whose output stands for the last
            kept = [s for s in steps if s.block in (None, 0)]
            out = [s for s in kept if s.block == 0][-1].id
            ids = {s.id for s in kept}
            steps = [replace(s, inputs=tuple(i if i in ids else out for i in s.inputs)) for s in kept]
        self.cfg, self.model, self.detail, self.unroll, self.masks = config, model, detail, unroll, masks
        self.name = name
        self.full = config if full is None else full  # the model's config, as the trace's titles take it
        self.steps, self.by_id = steps, {s.id: s for s in steps}
        self.compact = drawn_self_layers(config, unroll) > COMPACT_LAYERS if compact is None else compact
        self.g = Graph()
        self.drawn_as: dict[str, str] = {}  # step id -> id of the box showing it
        self.reached: dict[tuple[str, str], list[tuple[str, str]]] = {}  # compact: (mask, block) -> its edges

    def node_id(self, step_id: str) -> str:
        """Rolled drawings call block 0's layers ``self0``, ``self1``; unrolled ones keep ``block1/self0``."""
        return step_id[len("block0/"):] if not self.unroll and step_id.startswith("block0/") else step_id

    def build(self) -> Graph:
        g = self.g
        g.title, g.subtitle, g.detail = *self.title(), self.detail
        for scope, group in groupby(self.steps, key=lambda s: s.scope):
            group = list(group)
            if _is_layer(scope):
                self.layer(group, self.block_cluster(group[0]) or self.frame(scope))
            elif scope == "output":
                for s in group:
                    self.box(s.id, [s], self.frame(s.id))
            elif scope != "masks" or self.masks:  # the inputs, the masks, the decoder's queries, ...
                self.group(group, self.frame(scope))
        for s in self.steps:
            self.edges_into(s)
        self.compact_edges()
        self.dropped_edges()
        if not self.unroll and self.cfg.num_blocks > 1:  # the block's output goes round into its first layer
            block = [s for s in self.steps if s.block == 0]
            g.add_edge(Edge(self.drawn_as[block[-1].id], self.drawn_as[block[0].id], "loop",
                            format_shape(block[-1].shape)))
        g.validate()
        return g

    def title(self) -> tuple[str, tuple[str, ...]]:
        cfg, c, s = self.cfg, self.cfg.cross_attention, self.cfg.self_attention
        S, NB = cfg.num_self_attends_per_block, cfg.num_blocks
        name = f" · {self.name}" if self.name else ""
        how = f"{self.detail} detail, {'unrolled' if self.unroll else 'rolled'} · transformers 4.57.6"
        sizes = (f"N = {cfg.num_latents} latents × D = {cfg.d_latents} · inputs of C = {cfg.d_model} channels · "
                 f"{cfg.hidden_act}",
                 f"cross-attention {_plural(c.num_heads, 'head')} · self-attention {S} × {NB} = "
                 f"{_plural(S * NB, 'layer')} applied, {_plural(s.num_heads, 'head')}")
        if self.model == "seq2seq":
            full = self.full
            return (f"Perceiver encoder–decoder, {part_title(full, 'decoder')[0].split(': ')[1]}{name}",
                    (f"PerceiverSeq2Seq · B batch, M source bytes · {how}",
                     f"decoder: T = {full.max_target_length} target positions · E = {full.d_decoder} · "
                     f"Hd = {_plural(full.num_decoder_heads, 'head')} · V = {full.target_vocab_size} target tokens"
                     + (f" · {_plural(full.num_decoder_layers, 'layer')}" if full.decoder == "autoregressive" else ""),
                     *sizes))
        if self.model == "mlm":
            return (f"Perceiver IO masked language model{name}",
                    (f"PerceiverForMaskedLM · B batch, M tokens · {how}",
                     f"V = {cfg.vocab_size} tokens · P = {cfg.max_position_embeddings} positions", *sizes))
        return f"Perceiver encoder{name}", (f"PerceiverModel · B batch, M inputs · {how}", *sizes)

    # ------------------------------------------------------------------ clusters
    def frame(self, scope: str) -> Optional[str]:
        """The translation model's frame around the encoder's or the decoder's steps, made on first use; None
        for the inputs, masks, target, logits and loss (and in every other model)."""
        if self.model != "seq2seq":
            return None
        if scope in ("cross", "output/last_hidden_state") or scope.startswith("block"):
            part = "encoder"
        elif scope.startswith("decod") or scope == "head":
            part = "decoder"
        else:
            return None
        cid = f"cluster_{part}"
        if cid not in self.g.clusters:
            title, what = part_title(self.full, part)
            self.g.add_cluster(Cluster(cid, title, (what,), None, "part"))
        return cid

    def block_cluster(self, s: Step) -> Optional[str]:
        """The cluster of the layer's self-attention block (None for a cross-attention), made on first use.
        Unrolled with several blocks, the blocks stand in one cluster of their own."""
        if s.block is None:
            return None
        NB = self.cfg.num_blocks
        outer = "cluster_blocks" if self.unroll and NB > 1 else None
        cid = f"cluster_block{s.block}" if self.unroll else "cluster_block"
        base = self.frame("cross")  # the encoder's frame, in the translation model
        for c, parent, b in ((outer, base, None), (cid, outer or base, s.block if self.unroll else None)):
            if c is not None and c not in self.g.clusters:
                title, _, what = block_title(self.cfg, b if c != outer else None).partition(": ")
                self.g.add_cluster(Cluster(c, title, (what,) if what else (), parent, "block", block=b))
        return cid

    # ------------------------------------------------------------------ boxes
    def box(self, node_id: str, steps: list[Step], cluster: Optional[str], label: Optional[str] = None,
            lines: Optional[tuple] = None) -> str:
        """A box showing ``steps``, worded by the trace: the first step's name (or ``label``), each step's
        operation (or ``lines``) and the notes; the shape of the last step."""
        kind = {"input": "tensor", "output": "tensor", "parameter": "parameter", "mask": "mask"}.get(
            steps[0].kind, "operation")
        source = next((s.mask_source for s in steps if s.mask_source), None)
        family = MASK_FAMILY.get(steps[0].id, MASK_FAMILY.get(source)) if self.masks else None
        notes = tuple(pretty(s.note) for s in steps if s.note and (self.masks or "mask" not in s.note))
        self.g.add_node(Node(node_id, kind, pretty(steps[0].name if label is None else label),
                             tuple(pretty(s.op) for s in steps) if lines is None else lines,
                             format_shape(steps[-1].shape), cluster, family, notes, steps[0].module,
                             tuple(s.id for s in steps)))
        for s in steps:
            self.drawn_as[s.id] = node_id
        return node_id

    def group(self, steps: list[Step], cluster: Optional[str] = None) -> None:
        """A group of steps that is not a layer (the inputs, the masks, the text preprocessor, ...): a table
        titled by the trace, a box per step. The latents come before the inputs, as the query side comes
        before the keys and values; each mask stands beside what it becomes (op detail: above it); the text
        preprocessor shows what it is given over what it computes. Without masks, a mask among other steps
        (the target's padding) is left out."""
        steps = [s for s in steps if self.masks or s.kind != "mask" or s.scope == "masks"]
        by_name = {s.id.rsplit("/", 1)[1]: s.id for s in steps}
        boxes = {s.id: self.box(s.id, [s], cluster) for s in steps}
        embedded = [["embeddings", "token_embeddings"], ["position_embeddings", "inputs"]]
        rows = {"inputs": [["latents"], ["embeddings", "inputs"]],
                "text": [["input_ids"], *embedded],
                "source": [["source_ids"], *embedded],
                "target": [["target_ids", "padding"]],
                "decoder_inputs": [["decoder_input_ids"], *embedded],
                "decoder_query": [["output_position_encodings"], ["queries"]],
                "queries": [["output_position_encodings"], ["queries"]],
                "head": [["layernorm"], ["lm_head"]],
                "loss": [["labels"], ["loss"]],
                "masks": [["attention_mask", "inputs_mask"], ["latent_mask", "attention_bias"],
                          ["head_mask", "head_mask_5d"], ["causal_mask"]]}.get(steps[0].scope, [list(by_name)])
        if steps[0].scope == "masks" and self.detail == "op":  # above what it becomes, not beside it
            rows = [list(r) for r in zip_longest(*rows)]
        rows = [[boxes[by_name[n]] for n in row if n in by_name] for row in rows]
        title, _, what = scope_title(steps[0], self.full, self.model, masks=self.masks).partition(": ")
        self.g.add_node(Node(f"{steps[0].scope}/group", "table", title, (what,) if what else (), cluster=cluster,
                             parts=tuple(tuple(r) for r in rows if r)))

    def layer(self, steps: list[Step], block: Optional[str]) -> None:
        """A PerceiverLayer as one table, titled by the trace, its parts the boxes of its steps, row by row.

        The first row is where the layer reads its input: the query side (layernorm1, query) and, in a
        cross-attention, the key/value side beside it. Op detail: then a box per operation (the three
        projections side by side; steps joined as :data:`_JOIN` says). Layer detail: the runs of steps
        between the masks, each mask a box of its own; beyond :data:`ROW_LAYERS` self-attention layers, all
        in one row, each run named by its first and last step. Without masks, a step that applies one is
        drawn as its input's box.
        """
        scope, op = self.node_id(steps[0].scope), self.detail == "op"
        one_row = not op and steps[0].layer is not None and drawn_self_layers(self.cfg, self.unroll) > ROW_LAYERS
        what = lambda s: s.id.rsplit("/", 1)[1]  # noqa: E731
        kv_side = ("layernorm2", "key", "value") if any(what(s) == "layernorm2" for s in steps) else ()
        shown = [s for s in steps if s.mask is None or self.masks]
        head = [s for s in shown if what(s) in ("layernorm1", "layernorm2", "query", "key", "value")]
        rest = shown if one_row else [s for s in shown if s not in head]
        if op:  # the layernorms, the three projections, then a row per operation
            rows = [[[s] for s in head if what(s).startswith("layernorm")],
                    [[s] for s in head if not what(s).startswith("layernorm")]]
            for s in rest:
                if what(s) in _JOIN:
                    next(b for r in rows for b in r if what(b[0]) == _JOIN[what(s)]).append(s)
                else:
                    rows.append([[s]])
        else:  # the two sides, then the runs between the masks
            runs: list[list[Step]] = []
            for s in rest:
                if runs and s.mask is None and runs[-1][-1].mask is None:
                    runs[-1].append(s)
                else:
                    runs.append([s])
            rows = [runs] if one_row else [[[s for s in head if (what(s) in kv_side) == k] for k in (False, True)],
                                           *[[run] for run in runs]]

        def box(run: list[Step]) -> str:
            names = [s.name for s in run if s.id.rsplit("/", 1)[1] not in _UNNAMED]
            label = (f"{names[0]} … {names[-1]}" if one_row and len(names) > 2 else
                     ", ".join(names) if op else " · ".join(names))
            return self.box(f"{scope}/{run[0].id.rsplit('/', 1)[1]}", run, block, label, None if op else ())

        parts = [[box(run) for run in row if run] for row in rows]
        for s in steps:
            if s.mask is not None and not self.masks:
                self.drawn_as[s.id] = self.drawn_as[s.inputs[0]]
        title, _, doing = scope_title(steps[0], self.full, self.model, rolled=not self.unroll,
                                      masks=self.masks).partition(": ")
        self.g.add_node(Node(f"{scope}/layer", "table", title, () if one_row else (doing,), cluster=block,
                             module=re.split(r"\.(?:attention|self)\.", steps[0].module)[0],
                             parts=tuple(map(tuple, parts))))

    # ------------------------------------------------------------------ edges
    def edges_into(self, s: Step) -> None:
        """Edges into the box showing ``s``: its data, its residual and its mask; none inside one box, one per
        array that flows. Compact mask edges are gathered for :meth:`compact_edges`."""
        if s.id not in self.drawn_as:
            return
        g, head = self.g, self.drawn_as[s.id]

        def edge(src: str, kind: str, label: str, **kw) -> None:
            tail = self.drawn_as[src]
            if tail != head and not any((e.tail, e.kind, e.label) == (tail, kind, label) for e in g.edges_into(head)):
                g.add_edge(Edge(tail, head, kind, label, **kw))

        for src in s.inputs:
            if src in self.drawn_as:
                mask = MASK_FAMILY.get(src)
                enters = self.model == "seq2seq" and src == "output/last_hidden_state"  # into the decoder
                edge(src, "mask" if mask else "data", format_shape(self.by_id[src].shape), mask=mask,
                     remark=SOURCE_ENTERS if enters else "")
        if s.residual is not None:
            edge(s.residual, "residual", format_shape(self.by_id[s.residual].shape))
        if s.mask_source in self.drawn_as and s.mask is not None:
            label = self.mask_label(s)
            blocks = [c for c in g.ancestors(g.nodes[head].cluster) if g.clusters[c].role == "block"]
            block = ([None, *blocks])[-1]  # the outermost block frame
            if self.compact and block and s.mask_source != "masks/inputs_mask":
                self.reached.setdefault((s.mask_source, block), []).append((head, label))
            else:
                edge(s.mask_source, "mask", label, mask=MASK_FAMILY[s.mask_source],
                     remark=f"row {s.layer}" if s.mask.startswith("head_mask") else "")

    def mask_label(self, s: Step) -> str:
        shape = self.by_id[s.mask_source].shape
        return f"{s.mask} {format_shape(shape[1:] if s.mask.startswith('head_mask') else shape)}"

    def compact_edges(self) -> None:
        """Compact form: the latent mask and head_mask each drawn once into each block they reach."""
        S, NB = self.cfg.num_self_attends_per_block, self.cfg.num_blocks
        for (src, block), each in self.reached.items():
            if src == "masks/head_mask_5d":
                remark = "row i → layer i" + (" of every block" if NB > 1 else "")
            else:
                remark = f"added in each of the {_plural(len(each), 'layer')}"
            self.g.add_edge(Edge(src, each[0][0], "mask", each[0][1], mask=MASK_FAMILY[src], into=block,
                                 each=tuple(each), remark=remark))

    def dropped_edges(self) -> None:
        """Where HF throws a mask away: a dropped edge to the step whose note says so."""
        for src, at, words in _DROPS:
            if src in self.drawn_as and at in self.drawn_as:
                self.g.add_edge(Edge(src, self.drawn_as[at], "mask", self.by_id[src].name, mask=MASK_FAMILY[src],
                                     dropped=True, remark=words))


def _is_layer(scope: str) -> bool:
    """Whether a scope of the trace is a PerceiverLayer (or the translation decoder's PerceiverAttention):
    cross, decoder, block{b}/self{i}; decoder{j}/self, decoder{j}/cross, decoding."""
    return scope in ("cross", "decoder", "decoding") or "/self" in scope or scope.endswith("/cross")
