"""The Perceiver encoder of one config as a graph: its layers and how data and each mask flow through them.

:func:`build_encoder_graph` reads nothing but the config and npperceiver's step-by-step shape inference
(:func:`npperceiver.trace.encoder_steps`), the same trace ``npperceiver explain`` prints and the tests
execute against the model -- so every shape in the drawing is the shape of a real array of the forward pass.
:func:`build_mlm_graph` does the same for the masked language model (:func:`npperceiver.trace.mlm_steps`).

What it draws (HF transformers 4.57.6, ``modeling_perceiver.py``):

* the sources: ``inputs`` (B, M, C) and the latent array (N, D), broadcast to (B, N, D);
* ``encoder.cross_attention``: one cluster, latents attending to the inputs, with ``+ inputs_mask``;
* the self-attention block: one cluster per ``encoder.self_attends[i]``, each with ``+ attention_mask``
  (the latent mask) and ``x head_mask[i]`` after the softmax. Rolled (the default) the block is drawn once,
  with a loop edge saying it is applied ``num_blocks`` times with shared weights; unrolled, every
  application is drawn, and layer i of every block reads row i of ``head_mask``, as HF does;
* the three masks as sources of their own, above the layers they reach, with notes where HF drops one.
  With more than :data:`COMPACT_LAYERS` self-attention layers drawn, the latent mask and ``head_mask`` each
  enter the block once, as a *compact* edge that lists every layer it reaches (``Edge.each``);
* for the MLM also: the text preprocessor, the decoder's output queries and its cross-attention to the
  latents (no mask: HF drops ``query_mask``), and the embedding decoder, tied to the token embedding.

``detail="op"`` draws every operation; ``detail="layer"`` draws each ``PerceiverLayer`` as one box, masks
still entering it. Every box shows the shape of what it outputs (``Node.shape``); the data edges carry the
same shapes as labels, for tests and tooltips.

Left out: dropout on the attention probabilities (the identity outside training), HF's output records
(hidden states and attentions are the arrays the boxes already show), the tokenizer and the MLM's loss.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import groupby
from typing import TYPE_CHECKING, Optional

from npperceiver.text import decoder_attention_dims
from npperceiver.trace import Dim, Step, encoder_steps, format_shape, mlm_steps

from .graph import Cluster, Edge, Graph, Node

if TYPE_CHECKING:  # pragma: no cover
    from npperceiver.config import PerceiverConfig

DETAILS = ("layer", "op")
MODELS = ("encoder", "mlm")

#: With more self-attention layers drawn than this, the latent mask and head_mask enter the block once
#: (compact edges) instead of once per layer.
COMPACT_LAYERS = 4

#: Which family each mask belongs to, by the id of the step that produces it; the renderer colours by
#: family. "inputs_mask": HF's attention_mask over the inputs; "attention_mask": the latent mask; "head_mask".
MASK_FAMILY = {
    "masks/attention_mask": "inputs_mask",
    "masks/inputs_mask": "inputs_mask",
    "masks/latent_mask": "attention_mask",
    "masks/attention_bias": "attention_mask",
    "masks/head_mask": "head_mask",
    "masks/head_mask_5d": "head_mask",
}

_PRETTY = (("->", "→"), ("key^T", "keyᵀ"), ("E^T", "Eᵀ"), (" x ", " × "), ("x head_mask", "× head_mask"),
           ("sqrt(", "√("))


def pretty(text: str) -> str:
    """ASCII operators of the shape trace, written the way a lecture slide would write them."""
    for ascii_text, nice in _PRETTY:
        text = text.replace(ascii_text, nice)
    if "√(" in text:  # √(12) -> √12
        head, _, tail = text.partition("√(")
        number, _, rest = tail.partition(")")
        text = f"{head}√{number}{rest}"
    return text


def default_detail(config: "PerceiverConfig", unroll: bool = False) -> str:
    """``op`` while the drawing has at most 8 layers, ``layer`` beyond (language-perceiver has 27)."""
    layers = 1 + config.num_self_attends_per_block * (config.num_blocks if unroll else 1)
    return "op" if layers <= 8 else "layer"


def drawn_self_layers(config: "PerceiverConfig", unroll: bool) -> int:
    """How many self-attention layers a drawing shows: S rolled, num_blocks x S unrolled."""
    return config.num_self_attends_per_block * (config.num_blocks if unroll else 1)


def build_encoder_graph(
    config: "PerceiverConfig",
    *,
    detail: Optional[str] = None,
    unroll: bool = False,
    batch: Dim = "B",
    seq_len: Dim = "M",
    masks: bool = True,
    name: str = "",
    compact: Optional[bool] = None,
) -> Graph:
    """The encoder of ``config`` (HF ``PerceiverModel``) as a :class:`~npperceiver.viz.graph.Graph`.

    Parameters
    ----------
    detail : "op" (every operation) or "layer" (one box per PerceiverLayer); None picks
        :func:`default_detail`.
    unroll : draw every one of the ``num_blocks`` applications of the self-attention block.
    batch, seq_len : sizes for B and M, or letters to keep them symbolic.
    masks : draw the three masks (and the notes about them).
    name : what the title calls the config (a file name or preset name).
    compact : draw the latent mask and head_mask once into the block; None: when more than
        :data:`COMPACT_LAYERS` self-attention layers are drawn.
    """
    detail = default_detail(config, unroll) if detail is None else detail
    _check_detail(detail)
    steps = encoder_steps(config, batch=batch, seq_len=seq_len)
    return _Builder(config, steps, "encoder", detail, unroll, masks, compact, name).build()


def build_mlm_graph(
    config: "PerceiverConfig",
    *,
    detail: str = "layer",
    unroll: bool = False,
    batch: Dim = "B",
    seq_len: Dim = "M",
    masks: bool = True,
    name: str = "",
    compact: Optional[bool] = None,
) -> Graph:
    """The masked language model of ``config`` (HF ``PerceiverForMaskedLM``) as a graph.

    The encoder drawing extended with the text preprocessor, the decoder's output queries and its
    cross-attention to the latents, and the embedding decoder; options as :func:`build_encoder_graph`.
    ``ValueError`` if the config does not suit the MLM (``d_model`` must be divisible by 8).
    """
    _check_detail(detail)
    steps = mlm_steps(config, batch=batch, seq_len=seq_len)
    return _Builder(config, steps, "mlm", detail, unroll, masks, compact, name).build()


def _check_detail(detail: str) -> None:
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, got {detail!r}")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


class _Builder:
    def __init__(self, config, steps: list[Step], model: str, detail: str, unroll: bool, masks: bool,
                 compact: Optional[bool], name: str):
        self.cfg, self.model, self.detail, self.unroll, self.masks, self.name = (
            config, model, detail, unroll, masks, name)
        if not unroll:  # the block is drawn once: keep its first application, whose output is the result
            kept = [s for s in steps if s.block in (None, 0)]
            kept_ids = {s.id for s in kept}
            block_output = [s for s in kept if s.block == 0][-1].id
            steps = [replace(s, inputs=tuple(i if i in kept_ids else block_output for i in s.inputs)) for s in kept]
        self.steps = steps
        self.by_id = {s.id: s for s in steps}
        self.compact = drawn_self_layers(config, unroll) > COMPACT_LAYERS if compact is None else compact
        self.g = Graph()
        self.drawn_as: dict[str, str] = {}  # step id -> id of the node that shows it
        self.column: dict[str, int] = {}  # node id -> layout column of its layer (layers only)
        self.reached: dict[str, list[tuple[str, str]]] = {}  # compact: mask step -> [(node, label)] it reaches
        self.top = "cluster_perceiver" if model == "mlm" else None  # where the model's parts go

    # ------------------------------------------------------------------ ids
    def node_id(self, step_id: str) -> str:
        """Rolled drawings call block 0's layers ``self0``, ``self1``; unrolled ones keep ``block1/self0``."""
        if not self.unroll and step_id.startswith("block0/"):
            return step_id[len("block0/"):]
        return step_id

    def layer_scope(self, s: Step) -> str:
        """``cross``, ``decoder``, ``self0`` (rolled) or ``block1/self0`` (unrolled)."""
        return self.node_id(s.scope)

    @staticmethod
    def cluster_id(scope: str) -> str:
        return "cluster_" + scope.replace("/", "_")

    # ------------------------------------------------------------------ the whole graph
    def build(self) -> Graph:
        g = self.g
        g.title, g.subtitle = self.title()
        if self.model == "mlm":
            g.add_cluster(Cluster("cluster_perceiver", "perceiver", role="model",
                                  lines=("PerceiverModel with a text preprocessor and a decoder",)))
        column = 0
        for scope, group in groupby(self.steps, key=lambda s: s.scope):
            group = list(group)
            if scope == "text":
                self.text_preprocessor(group)
            elif scope == "inputs":
                self.sources(group)
            elif scope == "masks":
                if self.masks:
                    self.mask_sources(group)
            elif scope == "output":
                self.output(group[0])
            elif scope == "decoder_query":
                self.decoder_query(group)
            elif scope == "embedding_decoder":
                self.embedding_decoder(group)
            else:  # a PerceiverLayer: cross, block{b}/self{i} or decoder
                self.layer_cluster(group[0])
                if self.detail == "op":
                    self.layer_ops(group, column)
                else:
                    self.layer_box(group, column)
                column += 1
        if self.masks:
            self.compact_mask_edges()
            self.mask_notes()
        self.loop_edge()
        g.layout = self.layout()
        shown: dict[str, list[str]] = {}
        for step_id, node_id in self.drawn_as.items():
            shown.setdefault(node_id, []).append(step_id)
        for node_id, node in list(g.nodes.items()):  # record which steps each node shows, and its shape
            steps = tuple(shown.get(node_id, node.steps))
            shape = node.shape or (format_shape(self.by_id[steps[-1]].shape) if steps else "")
            g.nodes[node_id] = replace(node, steps=steps, shape=shape)
        g.validate()
        return g

    def title(self) -> tuple[str, tuple[str, ...]]:
        cfg = self.cfg
        c, s = cfg.cross_attention, cfg.self_attention
        S, NB = cfg.num_self_attends_per_block, cfg.num_blocks
        name = f" · {self.name}" if self.name else ""
        how = f"{self.detail} detail, {'unrolled' if self.unroll else 'rolled'}"
        sizes = (f"N = {cfg.num_latents} latents × D = {cfg.d_latents} · inputs of C = {cfg.d_model} channels · "
                 f"cross-attention {_plural(c.num_heads, 'head')} · self-attention {S} × {NB} = "
                 f"{_plural(S * NB, 'layer')} applied, {_plural(s.num_heads, 'head')} · {cfg.hidden_act}")
        if self.model == "mlm":
            return (f"Perceiver IO masked language model{name}",
                    (f"PerceiverForMaskedLM · V = {cfg.vocab_size} tokens · P = {cfg.max_position_embeddings} "
                     f"positions · B batch, M tokens · {how} · transformers 4.57.6",
                     sizes))
        return (f"Perceiver encoder{name}",
                (f"PerceiverModel · B batch, M inputs · {how} · transformers 4.57.6", sizes))

    # ------------------------------------------------------------------ nodes and edges
    def add(self, s: Step, node: Node, column: Optional[int] = None) -> None:
        """Add ``node`` if new, and record that it shows step ``s``."""
        if node.id not in self.g.nodes:
            self.g.add_node(node)
        self.drawn_as[s.id] = node.id
        if column is not None:
            self.column[node.id] = column

    def step_node(self, s: Step, cluster: Optional[str], label: Optional[str] = None, lines=None, **kw) -> None:
        """A node showing one step of the trace, its kind from the step's."""
        kind = {"input": "tensor", "output": "tensor", "parameter": "parameter", "op": "operation",
                "mask": "mask"}[s.kind]
        lines = (pretty(s.op),) if lines is None else lines
        self.add(s, Node(self.node_id(s.id), kind, pretty(label or s.name), lines, cluster, module=s.module, **kw))

    def described_steps(self, steps: list[Step], cluster: str, text: dict, **kw) -> None:
        """Draw each step with the label and lines ``text[step.id]`` gives it, and the edges into it.
        Each keyword maps step ids to a node attribute (``mask=MASK_FAMILY``: each mask node's family)."""
        for s in steps:
            label, lines = text[s.id]
            self.step_node(s, cluster, label, lines, **{attr: by_id[s.id] for attr, by_id in kw.items()})
            self.edges_into(s)

    def edges_into(self, s: Step, rename: Optional[dict] = None, residuals: bool = True) -> None:
        """Edges into the node showing step ``s``: its data, its residual and (when drawn) its mask.

        ``rename`` maps step ids to nodes that stand for them here (a layer's input node). Edges inside
        one node (a layer box, an MLP box) are not drawn; an edge from one layout column to the next is
        marked ``wrap``. In the compact form the latent mask and head_mask are only recorded here, and
        drawn once per mask by :meth:`compact_mask_edges`.
        """
        g, head = self.g, self.drawn_as[s.id]
        rename = rename or {}
        existing = {(e.tail, e.head, e.kind) for e in g.edges_into(head)}

        def edge(src: str, kind: str, label: str = "", mask: Optional[str] = None, remark: str = "") -> None:
            tail = rename.get(src, self.drawn_as[src])
            if tail == head or (tail, head, kind) in existing:
                return
            existing.add((tail, head, kind))
            wrap = tail in self.column and head in self.column and self.column[tail] != self.column[head]
            g.add_edge(Edge(tail, head, kind, label, mask=mask, wrap=wrap, remark=remark))

        for src in s.inputs:
            remark = ""
            edge(src, "mask" if src in MASK_FAMILY else "data", format_shape(self.by_id[src].shape),
                 MASK_FAMILY.get(src), remark)
        if s.residual is not None and residuals:
            edge(s.residual, "residual")
        if s.mask_source is not None and self.masks:
            if self.compact and s.mask_source in ("masks/attention_bias", "masks/head_mask_5d"):
                self.reached.setdefault(s.mask_source, []).append((head, self.mask_label(s)))
            else:
                edge(s.mask_source, "mask", self.mask_label(s), MASK_FAMILY[s.mask_source])

    def mask_label(self, s: Step) -> str:
        src = self.by_id[s.mask_source]
        if s.mask.startswith("head_mask"):
            return f"{s.mask} {format_shape(src.shape[1:])}"
        return f"{s.mask} {format_shape(src.shape)}"

    # ------------------------------------------------------------------ sources
    def text_preprocessor(self, steps: list[Step]) -> None:
        """MLM: input_ids -> token embedding lookup -> + position embeddings (HF PerceiverTextPreprocessor)."""
        self.g.add_cluster(Cluster("cluster_text", "perceiver.input_preprocessor", self.top, role="inputs",
                                   lines=("PerceiverTextPreprocessor",)))
        V, P, C = self.cfg.vocab_size, self.cfg.max_position_embeddings, self.cfg.d_model
        text = {
            "text/input_ids": ("input_ids", ("token ids: [CLS] bytes [SEP] [PAD]…",)),
            "text/embeddings": ("embeddings", (f"token embedding E: {V} tokens × {C}",
                                               "also the output layer: embedding_decoder uses Eᵀ")),
            "text/token_embeddings": ("E[input_ids]", ("one row of E per token",)),
            "text/position_embeddings": ("position_embeddings", (f"{P} positions × {C}",)),
            "text/inputs": ("+ position_embeddings[:M]", ("position m added to token m",)),
        }
        self.described_steps(steps, "cluster_text", text)

    def sources(self, steps: list[Step]) -> None:
        mlm = self.model == "mlm"
        self.g.add_cluster(Cluster("cluster_inputs", "perceiver.embeddings" if mlm else "inputs and latents",
                                   self.top, role="inputs", lines=("the latent array",) if mlm else ()))
        N, D = self.cfg.num_latents, self.cfg.d_latents
        text = {
            "inputs/inputs": ("inputs", ("the input array",)),
            "inputs/latents": ("embeddings.latents", (f"learned: {N} latents × {D}",)),
            "inputs/embeddings": ("expand to batch", ("the same latents for every row",)),
        }
        self.described_steps(steps, "cluster_inputs", text)

    def mask_sources(self, steps: list[Step]) -> None:
        mlm = self.model == "mlm"
        label = "the masks" if mlm else "the three masks"
        self.g.add_cluster(Cluster("cluster_masks", label, self.top, role="masks",
                                   lines=("as PerceiverModel.forward prepares them",)))
        text = {
            "masks/attention_mask": ("attention_mask", ("over the inputs · 1 keeps, 0 drops",)),
            "masks/inputs_mask": ("inputs_mask", ("invert_attention_mask: 1 → 0, 0 → float32 min",)),
            "masks/latent_mask": ("latent_mask", ("over the latents · 1 keeps, 0 drops",)),
            "masks/attention_bias": ("the encoder's attention_mask", ("invert_attention_mask: 1 → 0, 0 → float32 min",)),
            "masks/head_mask": ("head_mask", ("per layer and head · multiplies",)),
            "masks/head_mask_5d": ("get_head_mask", ("one row per layer",)),
        }
        if mlm:
            text["masks/attention_mask"] = ("attention_mask", ("padding: 1 keeps a token, 0 drops it",))
        self.described_steps(steps, "cluster_masks", text, mask=MASK_FAMILY)
        given = [s.id for s in steps if not s.inputs]
        if "masks/latent_mask" not in given:  # else mask_notes sets the row, with the note in it
            self.g.rows.append(tuple(self.drawn_as[i] for i in given))  # the masks as given, side by side

    def mask_notes(self) -> None:
        """Notes where HF drops a mask, tied to the place it is dropped."""
        g, cfg = self.g, self.cfg
        S, L = cfg.num_self_attends_per_block, cfg.num_self_attention_layers
        if "masks/latent_mask" in self.by_id:
            g.add_node(Node("masks/latent_mask_note", "note", "HF: PerceiverModel never passes it",
                            ("its encoder gets attention_mask=None",), "cluster_masks"))
            g.add_edge(Edge("masks/latent_mask", "masks/latent_mask_note", "note"))
        if L > S:
            unread = f"rows {S}…{L - 1}" if L - S > 1 else f"row {S}"
            g.add_node(Node("masks/head_mask_note", "note", f"HF: {unread} never read",
                            (f"layer i of every block reads row i",), "cluster_masks"))
            g.add_edge(Edge("masks/head_mask_5d", "masks/head_mask_note", "note"))
        dropped = (["the latent mask: inputs_mask replaces it"] if "masks/latent_mask" in self.by_id else [])
        dropped.append("head_mask: not passed (None)")
        g.add_node(Node("cross/dropped_masks", "note", f"HF drops {'two masks' if len(dropped) > 1 else 'a mask'} here:",
                        tuple(dropped), "cluster_cross"))
        if "masks/attention_bias" in self.by_id:
            g.add_edge(Edge("masks/attention_bias", "cross/dropped_masks", "mask", "ignored", mask="attention_mask",
                            dropped=True))
        g.add_edge(Edge("masks/head_mask_5d", "cross/dropped_masks", "mask", "not passed", mask="head_mask",
                        dropped=True))
        g.bottoms.append("cross/dropped_masks")  # under the layer, where the dropped masks can reach it
        if self.model == "mlm":
            g.add_node(Node("decoder/no_mask", "note", "the decoder gets no mask: HF drops query_mask",
                            ("HF passes the inverted attention_mask as query_mask;",
                             "its cross-attention takes inputs_mask=None instead"), "cluster_decoder_attention"))
            g.add_edge(Edge("masks/inputs_mask", "decoder/no_mask", "mask", "query_mask", mask="inputs_mask",
                            dropped=True))
            g.bottoms.append("decoder/no_mask")
        # each note beside the mask it is about
        if "masks/latent_mask_note" in g.nodes:
            g.rows.append(("masks/attention_mask", "masks/latent_mask", "masks/latent_mask_note", "masks/head_mask"))
        if "masks/head_mask_note" in g.nodes:
            g.rows.append(tuple(n for n in ("masks/inputs_mask", "masks/attention_bias", "masks/head_mask_5d",
                                            "masks/head_mask_note") if n in g.nodes))

    def compact_mask_edges(self) -> None:
        """Compact form: the latent mask and head_mask drawn once each, into the cluster of the layers."""
        if not self.reached:
            return
        into = "cluster_blocks" if self.unroll else "cluster_block"
        NB, S = self.cfg.num_blocks, self.cfg.num_self_attends_per_block
        L = NB * S
        every = f"each of the {_plural(S, 'layer')}" + (" of every block" if self.unroll and NB > 1 else "")
        if "masks/attention_bias" in self.reached:
            shape = format_shape(self.by_id["masks/attention_bias"].shape)
            each = tuple(self.reached["masks/attention_bias"])
            self.g.add_edge(Edge("masks/attention_bias", each[0][0], "mask", each[0][1], mask="attention_mask",
                                 into=into, each=each, remark=f"attention_mask {shape}: added in {every}"))
        if "masks/head_mask_5d" in self.reached:
            each = tuple(self.reached["masks/head_mask_5d"])
            unread = f" (rows ≥ {S} never read)" if L > S else ""
            where = " of every block" if NB > 1 else ""
            self.g.add_edge(Edge("masks/head_mask_5d", each[0][0], "mask", each[0][1], mask="head_mask",
                                 into=into, each=each, remark=f"head_mask: row i → layer i{where}{unread}"))

    # ------------------------------------------------------------------ layers
    def layer_cluster(self, first: Step) -> None:
        cfg, g = self.cfg, self.g
        if first.scope == "cross":
            d = cfg.cross_attention
            g.add_cluster(Cluster("cluster_encoder", "encoder", self.top, role="encoder", lines=("PerceiverEncoder",)))
            lines = (f"latents attend to the inputs · {_plural(d.num_heads, 'head')}",)
            g.add_cluster(Cluster("cluster_cross", "encoder.cross_attention", "cluster_encoder", role="cross",
                                  lines=lines if self.detail == "op" else ()))  # a layer's box says it already
            return
        if first.scope == "decoder":
            lines = ("output queries attend to the latents · 8 heads",)
            g.add_cluster(Cluster("cluster_decoder_attention", "decoder.decoding_cross_attention", "cluster_decoder",
                                  role="decoder", lines=lines if self.detail == "op" else ()))
            return
        b, i, NB, S = first.block, first.layer, cfg.num_blocks, cfg.num_self_attends_per_block
        d = cfg.self_attention
        if self.unroll:
            parent = "cluster_encoder"
            if NB > 1 or self.compact:
                parent = "cluster_blocks"
                if parent not in g.clusters:
                    g.add_cluster(Cluster(parent, f"encoder.self_attends · {_plural(NB, 'block')} of {S}",
                                          "cluster_encoder", role="blocks",
                                          lines=("the same weights in every block",)))
            block_id = f"cluster_block{b}"
            if block_id not in g.clusters:
                g.add_cluster(Cluster(block_id, f"self-attention block, application {b + 1} of {NB}", parent,
                                      role="block", block=b, lines=self.block_lines()))
        else:
            block_id = "cluster_block"
            if block_id not in g.clusters:
                title = f"self-attention block × {NB}" if NB > 1 else "self-attention block"
                g.add_cluster(Cluster(block_id, title, "cluster_encoder", role="block", lines=self.block_lines()))
        g.add_cluster(Cluster(self.cluster_id(self.layer_scope(first)), f"encoder.self_attends.{i}", parent=block_id,
                              role="self", block=b if self.unroll else None, layer=i,
                              lines=(f"latents attend to latents · {_plural(d.num_heads, 'head')}",)))

    def block_lines(self) -> tuple[str, ...]:
        """What the block's label says: shared weights; in the compact layer drawing, what every layer does."""
        NB = self.cfg.num_blocks
        lines = []
        if not self.unroll:
            lines.append(f"num_blocks = {NB}, the same weights each time" if NB > 1 else "num_blocks = 1")
        if self.compact and self.detail == "layer":
            lines += ["every layer, the same way with its own weights:",
                      *self.layer_lines(self.cfg.self_attention, "self", layer="i")]
        return tuple(lines)

    def layer_lines(self, d, kind: str, layer="") -> tuple[str, ...]:
        """The lines that say what one PerceiverLayer computes, with this config's widths."""
        cfg = self.cfg
        who = {"cross": "latents attend to the inputs", "self": "latents attend to latents",
               "decoder": "output queries attend to the latents"}[kind]
        added = {"cross": " + inputs_mask", "self": " + attention_mask" if self.has_latent_mask() else "",
                 "decoder": ""}[kind] if self.masks else ""
        scaled = f"q·kᵀ/√{d.qk_head_dim}{added}"
        head = f" × head_mask[{layer}]" if kind == "self" and self.masks else ""
        per_head = (f"{d.qk_head_dim} per head" if d.qk_head_dim == d.v_head_dim
                    else f"per head: q, k {d.qk_head_dim}, v {d.v_head_dim}")
        if d.kv_dim == d.q_dim and d.qk_channels == d.v_channels:
            proj = f"q, k, v {d.q_dim} → {d.qk_channels}"
        else:
            proj = f"q {d.q_dim} → {d.qk_channels} · k, v {d.kv_dim} → {d.qk_channels}, {d.v_channels}"
        residual = "+ query residual" if d.use_query_residual else "no query residual"
        return (
            f"{who} · {_plural(d.num_heads, 'head')}",
            f"{proj} · {per_head}",
            f"softmax({scaled}){head} @ v" + (" · no mask" if kind == "decoder" and self.masks else ""),
            f"output {d.v_channels} → {d.output_channels} · {residual}",
            f"LayerNorm · MLP {d.q_dim} → {d.mlp_hidden} → {d.q_dim} ({cfg.hidden_act}) · + residual",
        )

    def has_latent_mask(self) -> bool:
        return "masks/latent_mask" in self.by_id

    def layer_ops(self, steps: list[Step], column: int) -> None:
        """The operations of one layer. A projection and its split into heads share a box, as do the MLP's
        two Linears and activation, and the product with the values and the merge of the heads; a
        self-attention layer starts from a node for its input."""
        g = self.g
        scope = self.layer_scope(steps[0])
        cluster = self.layer_cluster_id(steps[0])
        by_name = {s.id.rsplit("/", 1)[1]: s for s in steps}
        rename = {}
        if steps[0].layer is not None:  # the layer's input: the previous layer's output
            hidden = by_name["layernorm1"].inputs[0]
            node_id = f"{scope}/input"
            g.add_node(Node(node_id, "tensor", "hidden_states", (), cluster, module="hidden_states", steps=(hidden,)))
            self.column[node_id] = column
            g.add_edge(Edge(self.drawn_as[hidden], node_id, "data", format_shape(self.by_id[hidden].shape),
                            wrap=self.column.get(self.drawn_as[hidden], column) != column))
            rename[hidden] = node_id
        dims = self.dims(steps[0])
        for s in steps:
            what = s.id.rsplit("/", 1)[1]
            if s.mask is not None and not self.masks:  # without masks, a mask step is its input
                self.drawn_as[s.id] = self.drawn_as[s.inputs[0]]
                continue
            group = _GROUPS.get(what)
            if group is not None and f"{scope}/{group}" in g.nodes:  # a later step of a box
                self.drawn_as[s.id] = f"{scope}/{group}"
                continue
            mask = MASK_FAMILY[s.mask_source] if s.mask is not None else None
            title, lines, module = pretty(s.name), (pretty(s.op),), s.module
            if what in ("query", "key", "value"):
                split = by_name[f"split_{what}"]
                lines = (pretty(f"{s.op.replace('Linear ', '')} · {split.shape[1]} heads x {split.shape[-1]}"),)
            elif what == "context":
                title = "@ value, merge heads"
                lines = (f"probabilities @ value · {dims.num_heads} heads × {dims.v_head_dim} → {dims.v_channels}",)
            elif what == "output":
                if "query_residual" in by_name:
                    title = "output.dense, + query residual"
                    lines = (f"Linear {dims.v_channels} → {dims.output_channels}, + the layer input",)
                else:
                    lines = (f"Linear {dims.v_channels} → {dims.output_channels} · no query residual",)
            elif what == "mlp_dense1":
                title, module = "mlp", s.module.rsplit(".", 1)[0]
                lines = (f"{dims.q_dim} → {dims.mlp_hidden} → {dims.q_dim} · {self.cfg.hidden_act}"
                         f" · widening × {dims.widening_factor}",)
                self.add(s, Node(f"{scope}/mlp", "operation", title, lines, cluster, module=module), column)
                continue
            self.add(s, Node(self.node_id(s.id), "operation", title, lines, cluster, mask=mask, module=module),
                     column)
        for s in steps:
            if s.mask is None or self.masks:
                self.edges_into(s, rename)
        qkv = tuple(self.drawn_as[by_name[w].id] for w in ("query", "key", "value"))
        self.g.rows.append(qkv)
        if "layernorm2" in by_name:
            self.g.rows.append((self.drawn_as[by_name["layernorm1"].id], self.drawn_as[by_name["layernorm2"].id]))

    def dims(self, s: Step):
        if s.scope == "cross":
            return self.cfg.cross_attention
        if s.scope == "decoder":
            return decoder_attention_dims(self.cfg)
        return self.cfg.self_attention

    def layer_cluster_id(self, s: Step) -> str:
        return "cluster_decoder_attention" if s.scope == "decoder" else self.cluster_id(self.layer_scope(s))

    def layer_box(self, steps: list[Step], column: int) -> None:
        """One box for the whole PerceiverLayer; the masks enter the box."""
        first = steps[0]
        scope = self.layer_scope(first)
        kind = {"cross": "cross", "decoder": "decoder"}.get(first.scope, "self")
        d = self.dims(first)
        if kind == "self" and self.compact:  # what every layer does is said once, on the block
            marks = (["+ attention_mask"] if self.has_latent_mask() else []) + [f"× head_mask[{first.layer}]"]
            lines = (" · ".join(marks),) if self.masks else ()
        else:
            lines = self.layer_lines(d, kind, layer=first.layer)
        module = first.module.split(".attention")[0]
        title = {"cross": "cross-attention", "decoder": "decoding cross-attention"}.get(
            kind, f"encoder.self_attends.{first.layer}")
        node = Node(f"{scope}/layer", "operation", title, lines, self.layer_cluster_id(first), module=module)
        for s in steps:
            self.add(s, node, column)
        for s in steps:  # a layer's residuals add its own input back: inside the box, not drawn
            self.edges_into(s, residuals=False)

    def loop_edge(self) -> None:
        """Rolled with num_blocks > 1: the block's output goes back into its first layer, num_blocks - 1 times."""
        NB = self.cfg.num_blocks
        if self.unroll or NB == 1:
            return
        block = [s for s in self.steps if s.block == 0]
        start = f"{self.node_id(block[0].scope)}/input"  # op detail: the first layer's input node
        first = start if start in self.g.nodes else self.drawn_as[block[0].id]
        last = self.drawn_as[block[-1].id]
        self.g.add_edge(Edge(last, first, "loop", format_shape(block[-1].shape)))

    def layout(self) -> list[list[list[str]]]:
        """The pieces of the picture: sources and masks on top, the layers below, then what comes out.

        Op detail: a column per layer. Layer detail: the layers stacked in one column, or, beyond
        :data:`LAYERS_PER_COLUMN`, the cross-attention in a column of its own and the self-attention
        layers in as few columns as that allows, split between blocks where it can.
        """
        g = self.g
        present = lambda ids: [[i] for i in ids if i in g.clusters or i in g.nodes]  # noqa: E731
        sources = present(["cluster_text", "cluster_inputs", "cluster_masks"])
        layers = [c.id for c in g.clusters.values() if c.role in ("cross", "self")]
        if self.detail == "op":
            encoder = [[c] for c in layers]
        elif len(layers) - 1 <= LAYERS_PER_COLUMN:
            encoder = [layers]
        else:
            selfs = layers[1:]
            S = self.cfg.num_self_attends_per_block
            unit = S if self.unroll and S <= LAYERS_PER_COLUMN else 1  # whole blocks in a column, if they fit
            units = [selfs[k:k + unit] for k in range(0, len(selfs), unit)]
            count = -(-len(selfs) // LAYERS_PER_COLUMN)
            sizes = [len(units) // count + (k >= count - len(units) % count) for k in range(count)]  # longest last
            encoder, start = [[layers[0]]], 0
            for size in sizes:
                encoder.append([layer for u in units[start:start + size] for layer in u])
                start += size
        encoder[-1] = encoder[-1] + ["last_hidden_state"]
        if self.model == "mlm":  # the decoder beside the encoder, reading its output; the logits below
            decoder = [n.id for n in g.nodes_in("cluster_decoder")] + ["cluster_decoder_attention"]
            return [sources, encoder + [decoder], [["cluster_embedding_decoder", "logits"]]]
        return [sources, encoder]

    # ------------------------------------------------------------------ outputs and the MLM's decoder
    def output(self, s: Step) -> None:
        node_id = s.id.split("/", 1)[1]
        lines = {"output/last_hidden_state": ("the encoded latents",),
                 "output/logits": ("a score per token at each of the P positions",)}[s.id]
        cluster = "cluster_encoder" if s.id == "output/last_hidden_state" else None  # PerceiverEncoder returns it
        self.add(s, Node(node_id, "tensor", node_id, lines, cluster, module=s.module))
        self.edges_into(s)

    def decoder_query(self, steps: list[Step]) -> None:
        self.g.add_cluster(Cluster("cluster_decoder", "perceiver.decoder", self.top, role="decoder_module",
                                   lines=("PerceiverBasicDecoder",)))
        P, C = self.cfg.max_position_embeddings, self.cfg.d_model
        text = {
            "decoder_query/output_position_encodings": ("output_position_encodings",
                                                        (f"learned output queries: {P} × {C}",)),
            "decoder_query/queries": ("decoder_query: expand to batch", ("the same queries whatever the input",)),
        }
        self.described_steps(steps, "cluster_decoder", text)

    def embedding_decoder(self, steps: list[Step]) -> None:
        self.g.add_cluster(Cluster("cluster_embedding_decoder", "embedding_decoder", None, role="embedding_decoder",
                                   lines=("PerceiverEmbeddingDecoder",)))
        V = self.cfg.vocab_size
        text = {
            "embedding_decoder/bias": ("bias", (f"one per token: {V}",)),
            "embedding_decoder/logits": ("@ Eᵀ + bias", ("E: the preprocessor's token embedding (tied)",)),
        }
        self.described_steps(steps, "cluster_embedding_decoder", text)


#: In op detail, steps drawn in the box of an earlier step: the split into heads goes with its projection,
#: the merge of the heads with the product by the values, the query residual with the output projection,
#: and the MLP's Linears and activation make one box.
_GROUPS = {"split_query": "query", "split_key": "key", "split_value": "value", "merge_heads": "context",
           "query_residual": "output", "mlp_act": "mlp", "mlp_dense2": "mlp"}

#: In the layer-detail drawing, how many self-attention layers stack in one column before the next column.
LAYERS_PER_COLUMN = 13
