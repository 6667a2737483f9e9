"""The Perceiver encoder of one config as a graph: its layers and how data and each mask flow through them.

:func:`build_encoder_graph` reads nothing but the config and npperceiver's step-by-step shape inference
(:func:`npperceiver.shapes.encoder_steps`), the same trace ``npperceiver explain`` prints and the tests
execute against the model -- so every shape on an edge is the shape of a real array of the forward pass.

What it draws (HF transformers 4.57.6, ``modeling_perceiver.py``):

* the sources: ``inputs`` (B, M, C) and the latent array (N, D), broadcast to (B, N, D);
* ``encoder.cross_attention``: one cluster, latents attending to the inputs, with ``+ inputs_mask``;
* the self-attention block: one cluster per ``encoder.self_attends[i]``, each with ``+ attention_mask``
  (the latent mask) and ``x head_mask[i]`` after the softmax. Rolled (the default) the block is drawn once
  and labelled as applied ``num_blocks`` times with shared weights; unrolled, every application is drawn,
  and layer i of every block reads row i of ``head_mask``, as HF does;
* the three masks as sources of their own, with notes where HF drops one.

``detail="op"`` draws every operation; ``detail="layer"`` draws each ``PerceiverLayer`` as one box, masks
still entering it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Optional

from npperceiver.shapes import Dim, Step, encoder_steps, format_shape

from .graph import Cluster, Edge, Graph, Node

if TYPE_CHECKING:  # pragma: no cover
    from npperceiver.config import PerceiverConfig

DETAILS = ("layer", "op")

#: Which family each mask belongs to, by the name it has where it acts; the renderer colours by family.
#: "inputs_mask": HF's attention_mask over the inputs; "attention_mask": the latent mask; "head_mask".
MASK_FAMILY = {
    "masks/attention_mask": "inputs_mask",
    "masks/inputs_mask": "inputs_mask",
    "masks/latent_mask": "attention_mask",
    "masks/attention_bias": "attention_mask",
    "masks/head_mask": "head_mask",
    "masks/head_mask_5d": "head_mask",
}

_PRETTY = (("->", "→"), ("key^T", "keyᵀ"), (" x ", " × "), ("x head_mask", "× head_mask"), ("sqrt(", "√("))


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


def build_encoder_graph(
    config: "PerceiverConfig",
    *,
    detail: Optional[str] = None,
    unroll: bool = False,
    batch: Dim = "B",
    seq_len: Dim = "M",
    masks: bool = True,
    name: str = "",
) -> Graph:
    """The encoder of ``config`` as a :class:`~viz.graph.Graph`.

    Parameters
    ----------
    detail : "op" (every operation) or "layer" (one box per PerceiverLayer); None picks
        :func:`default_detail`.
    unroll : draw every one of the ``num_blocks`` applications of the self-attention block.
    batch, seq_len : sizes for B and M, or letters to keep them symbolic.
    masks : draw the three masks (and the notes about them).
    name : what the title calls the config (a file name or preset name).
    """
    detail = default_detail(config, unroll) if detail is None else detail
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    return _Builder(config, detail, unroll, batch, seq_len, masks, name).build()


class _Builder:
    def __init__(self, config, detail, unroll, batch, seq_len, masks, name):
        self.cfg, self.detail, self.unroll, self.masks, self.name = config, detail, unroll, masks, name
        self.steps = encoder_steps(config, batch=batch, seq_len=seq_len)
        if not unroll:  # the block is drawn once: keep its first application, whose output is the result
            kept = [s for s in self.steps if s.block in (None, 0)]
            block_output = [s for s in kept if s.kind == "op"][-1].id
            self.steps = [replace(s, inputs=(block_output,)) if s.kind == "output" else s for s in kept]
        self.by_id = {s.id: s for s in self.steps}
        self.g = Graph()

    # ------------------------------------------------------------------ ids
    def node_id(self, step_id: str) -> str:
        """Rolled drawings call block 0's layers ``self0``, ``self1``; unrolled ones keep ``block1/self0``."""
        if not self.unroll and step_id.startswith("block0/"):
            return step_id[len("block0/"):]
        return step_id

    def layer_scope(self, s: Step) -> str:
        """``cross``, ``self0`` (rolled) or ``block1/self0`` (unrolled)."""
        return self.node_id(s.scope)

    @staticmethod
    def cluster_id(scope: str) -> str:
        return "cluster_" + scope.replace("/", "_")

    # ------------------------------------------------------------------ the whole graph
    def build(self) -> Graph:
        g = self.g
        g.title, g.subtitle = self.title()
        self.drawn_as: dict[str, str] = {}  # step id -> id of the node that shows it
        self.column: dict[str, int] = {}  # node id -> layout column of its layer (layers only)
        self.sources()
        if self.masks:
            self.mask_sources()
        scopes = list(dict.fromkeys(s.scope for s in self.steps if s.scope == "cross" or s.layer is not None))
        for index, scope in enumerate(scopes):
            layer_steps = [s for s in self.steps if s.scope == scope]
            self.layer_cluster(layer_steps[0])
            column = index if self.detail == "op" else index // LAYERS_PER_COLUMN
            if self.detail == "op":
                self.layer_ops(layer_steps, column)
            else:
                self.layer_box(layer_steps, column)
        if len(g.columns) > 1:
            g.rows.insert(0, tuple(g.columns))  # every column starts on the same rank
        last = self.by_id["output/last_hidden_state"]
        g.add_node(Node("last_hidden_state", "tensor", "last_hidden_state", (format_shape(last.shape),),
                        "cluster_model", module="last_hidden_state"))
        self.drawn_as[last.id] = "last_hidden_state"
        self.edges_into(last)
        if self.masks:
            self.mask_notes()
        shown: dict[str, list[str]] = {}
        for step_id, node_id in self.drawn_as.items():
            shown.setdefault(node_id, []).append(step_id)
        for node_id, node in list(g.nodes.items()):  # record which steps each node shows
            g.nodes[node_id] = replace(node, steps=tuple(shown.get(node_id, node.steps)))
        g.validate()
        return g

    def title(self) -> tuple[str, tuple[str, ...]]:
        cfg = self.cfg
        c, s = cfg.cross_attention, cfg.self_attention
        S, NB = cfg.num_self_attends_per_block, cfg.num_blocks
        name = f": {self.name}" if self.name else ""
        lines = (
            f"N = {cfg.num_latents} latents of D = {cfg.d_latents} channels · inputs of C = {cfg.d_model} channels"
            f" · B batch, M inputs",
            f"cross-attention: {c.num_heads} heads, query/key {c.qk_channels} ({c.qk_head_dim} per head), "
            f"value {c.v_channels} ({c.v_head_dim} per head)",
            f"self-attention: {S} layer{'s' * (S != 1)} × {NB} block{'s' * (NB != 1)} = {S * NB} applied, "
            f"{s.num_heads} heads, query/key {s.qk_channels} ({s.qk_head_dim} per head), "
            f"value {s.v_channels} ({s.v_head_dim} per head)",
            f"MLP widening × {c.widening_factor} (cross), × {s.widening_factor} (self) · {cfg.hidden_act}"
            f" · {self.detail} detail, {'unrolled' if self.unroll else 'rolled'}",
        )
        return f"Perceiver encoder{name}", lines

    # ------------------------------------------------------------------ sources
    def sources(self) -> None:
        g = self.g
        g.add_cluster(Cluster("cluster_model", "PerceiverModel", role="model",
                              lines=("transformers 4.57.6 · modeling_perceiver.py",)))
        g.add_cluster(Cluster("cluster_inputs", "inputs and latents", "cluster_model", role="inputs"))
        for sid in ("inputs/inputs", "inputs/latents", "inputs/embeddings"):
            s = self.by_id[sid]
            kind = {"input": "tensor", "parameter": "parameter", "op": "operation"}[s.kind]
            label = {"inputs/inputs": "inputs", "inputs/latents": "embeddings.latents",
                     "inputs/embeddings": "expand to batch"}[sid]
            lines = (format_shape(s.shape),) if s.kind != "op" else ("same latents for every row",)
            self.add(s, Node(self.node_id(sid), kind, label, lines, "cluster_inputs", module=s.module))
        self.edges_into(self.by_id["inputs/embeddings"])

    def mask_sources(self) -> None:
        g = self.g
        g.add_cluster(Cluster("cluster_masks", "the three masks", "cluster_model", role="masks",
                              lines=("as PerceiverModel.forward prepares them",)))
        titles = {
            "masks/attention_mask": ("attention_mask", "over the inputs · 1 keeps, 0 drops"),
            "masks/inputs_mask": ("invert_attention_mask → inputs_mask", "0 keeps, float32 min drops"),
            "masks/latent_mask": ("latent_mask", "over the latents · 1 keeps, 0 drops"),
            "masks/attention_bias": ("invert_attention_mask → attention_mask", "0 keeps, float32 min drops"),
            "masks/head_mask": ("head_mask", "per layer and head · multiplies"),
            "masks/head_mask_5d": ("get_head_mask", "one row per layer"),
        }
        for sid, (label, remark) in titles.items():
            s = self.by_id[sid]
            self.add(s, Node(self.node_id(sid), "mask", label, (format_shape(s.shape), remark), "cluster_masks",
                             mask=MASK_FAMILY[sid], module=s.module))
            self.edges_into(s)

    def mask_notes(self) -> None:
        """Notes where HF drops a mask, tied to the place it is dropped."""
        g, cfg = self.g, self.cfg
        S, L = cfg.num_self_attends_per_block, cfg.num_self_attention_layers
        g.add_node(Node("masks/latent_mask_note", "note", "HF: no latent mask from PerceiverModel",
                        ("PerceiverModel calls its encoder with attention_mask=None;",
                         "in HF this mask exists only when you call",
                         "PerceiverEncoder(…, attention_mask=…) yourself"), "cluster_masks"))
        g.add_edge(Edge("masks/latent_mask", "masks/latent_mask_note", "note"))
        if L > S:
            unread = f"rows {S}…{L - 1}" if L - S > 1 else f"row {S}"
            g.add_node(Node("masks/head_mask_note", "note", f"HF: {unread} never read",
                            (f"layer i of every block reads row i (i < {S})",), "cluster_masks"))
            g.add_edge(Edge("masks/head_mask_5d", "masks/head_mask_note", "note"))
        g.add_node(Node("cross/dropped_masks", "note", "HF drops two masks here",
                        ("attention_mask (latents): replaced by inputs_mask",
                         "head_mask: the encoder passes head_mask=None"), "cluster_cross"))
        g.add_edge(Edge("masks/attention_bias", "cross/dropped_masks", "mask", "ignored", mask="attention_mask",
                        dropped=True))
        g.add_edge(Edge("masks/head_mask_5d", "cross/dropped_masks", "mask", "not passed", mask="head_mask",
                        dropped=True))

    # ------------------------------------------------------------------ layers
    def layer_cluster(self, first: Step) -> None:
        cfg, g = self.cfg, self.g
        if first.scope == "cross":
            d = cfg.cross_attention
            g.add_cluster(Cluster("cluster_encoder", "encoder", "cluster_model", role="encoder",
                                  lines=("PerceiverEncoder",)))
            g.add_cluster(Cluster("cluster_cross", "encoder.cross_attention", "cluster_encoder", role="cross", lines=(
                f"PerceiverLayer · latents attend to the inputs · {d.num_heads} heads",)))
            return
        b, i, NB = first.block, first.layer, cfg.num_blocks
        d = cfg.self_attention
        if self.unroll:
            block_id = f"cluster_block{b}"
            if block_id not in g.clusters:
                g.add_cluster(Cluster(block_id, f"self-attention block, application {b + 1} of {NB}", "cluster_encoder",
                                      role="block",
                                      block=b, lines=("encoder.self_attends · the same weights in every block",)))
        else:
            block_id = "cluster_block"
            if block_id not in g.clusters:
                times = f"applied {NB} times" if NB > 1 else "applied once"
                g.add_cluster(Cluster(block_id, f"self-attention block · {times} (num_blocks = {NB})",
                                      "cluster_encoder", role="block",
                                      lines=(("the same weights every time; its output feeds the next application"
                                              if NB > 1 else "encoder.self_attends"),)))
        g.add_cluster(Cluster(self.cluster_id(self.layer_scope(first)), f"encoder.self_attends.{i}", parent=block_id,
                              role="self", block=b if self.unroll else None, layer=i,
                              lines=(f"PerceiverLayer · latents attend to latents · {d.num_heads} heads",)))

    def add(self, s: Step, node: Node, column: Optional[int] = None) -> None:
        """Add ``node`` if new, and record that it shows step ``s``."""
        if node.id not in self.g.nodes:
            self.g.add_node(node)
        self.drawn_as[s.id] = node.id
        if column is not None:
            self.column[node.id] = column

    def edges_into(self, s: Step, rename: Optional[dict] = None, residuals: bool = True) -> None:
        """Edges into the node showing step ``s``: its data, its residual and (when drawn) its mask.

        ``rename`` maps step ids to nodes that stand for them here (a layer's input node). Edges inside
        one node (a layer box, an MLP box) are not drawn; an edge from one layout column to the next is
        marked ``wrap``.
        """
        g, head = self.g, self.drawn_as[s.id]
        rename = rename or {}
        existing = {(e.tail, e.head, e.kind) for e in g.edges_into(head)}

        def edge(src: str, kind: str, label: str = "", mask: Optional[str] = None) -> None:
            tail = rename.get(src, self.drawn_as[src])
            if tail == head or (tail, head, kind) in existing:
                return
            existing.add((tail, head, kind))
            wrap = tail in self.column and head in self.column and self.column[tail] != self.column[head]
            g.add_edge(Edge(tail, head, kind, label, mask=mask, wrap=wrap))

        for src in s.inputs:
            edge(src, "mask" if src in MASK_FAMILY else "data", format_shape(self.by_id[src].shape),
                 MASK_FAMILY.get(src))
        if s.residual is not None and residuals:
            edge(s.residual, "residual")
        if s.mask_source is not None and self.masks:
            edge(s.mask_source, "mask", self.mask_label(s), MASK_FAMILY[s.mask_source])

    def mask_label(self, s: Step) -> str:
        src = self.by_id[s.mask_source]
        if s.mask.startswith("head_mask"):
            return f"{s.mask} {format_shape(src.shape[1:])}"
        return f"{s.mask} {format_shape(src.shape)}"

    def layer_ops(self, steps: list[Step], column: int) -> None:
        """The operations of one layer. A projection and its split into heads share a box, as do the MLP's
        two Linears and activation; a self-attention layer starts from a node for its input."""
        g = self.g
        scope = self.layer_scope(steps[0])
        cluster = self.cluster_id(scope)
        by_name = {s.id.rsplit("/", 1)[1]: s for s in steps}
        rename = {}
        if steps[0].scope != "cross":  # the layer's input: the previous layer's output
            hidden = by_name["layernorm1"].inputs[0]
            node_id = f"{scope}/input"
            again = self.cfg.num_blocks > 1 and not self.unroll and steps[0].layer == 0
            lines = ("and, in the next application, the block's output",) if again else ()
            g.add_node(Node(node_id, "tensor", "hidden_states", lines, cluster, module="hidden_states",
                            steps=(hidden,)))
            self.column[node_id] = column
            g.add_edge(Edge(self.drawn_as[hidden], node_id, "data", format_shape(self.by_id[hidden].shape),
                            wrap=self.column.get(self.drawn_as[hidden], column) != column))
            rename[hidden] = node_id
        for s in steps:
            what = s.id.rsplit("/", 1)[1]
            if s.mask is not None and not self.masks:  # without masks, a mask step is its input
                self.drawn_as[s.id] = self.drawn_as[s.inputs[0]]
                continue
            group = _GROUPS.get(what)
            if group is not None and f"{scope}/{group}" in g.nodes:  # the second step of a box
                self.drawn_as[s.id] = f"{scope}/{group}"
                continue
            mask = MASK_FAMILY[s.mask_source] if s.mask is not None else None
            title, lines, module = pretty(s.name), (pretty(s.op),), s.module
            if what in ("query", "key", "value"):
                split = by_name[f"split_{what}"]
                lines = (pretty(f"{s.op.replace('Linear ', '')} · {split.shape[1]} heads x {split.shape[-1]}"),)
            elif what == "mlp_dense1":
                d = self.cfg.cross_attention if s.scope == "cross" else self.cfg.self_attention
                title, module = "mlp", s.module.rsplit(".", 1)[0]
                lines = (f"{d.q_dim} → {d.mlp_hidden} → {d.q_dim} · {self.cfg.hidden_act} · widening × {d.widening_factor}",)
                node_id = f"{scope}/mlp"
                self.add(s, Node(node_id, "operation", title, lines, cluster, module=module), column)
                continue
            self.add(s, Node(self.node_id(s.id), "operation", title, lines, cluster, mask=mask, module=module),
                     column)
        for s in steps:
            if s.mask is None or self.masks:
                self.edges_into(s, rename)
        self.g.columns.append(self.drawn_as[by_name["layernorm1"].id])
        qkv = tuple(self.drawn_as[by_name[w].id] for w in ("query", "key", "value"))
        self.g.rows.append(qkv)
        if "layernorm2" in by_name:
            self.g.rows.append((self.drawn_as[by_name["layernorm1"].id], self.drawn_as[by_name["layernorm2"].id]))

    def layer_box(self, steps: list[Step], column: int) -> None:
        """One box for the whole PerceiverLayer; the masks enter the box."""
        cfg = self.cfg
        first = steps[0]
        scope = self.layer_scope(first)
        cross = first.scope == "cross"
        d = cfg.cross_attention if cross else cfg.self_attention
        kv = "inputs" if cross else "latents"
        added = [s.mask for s in steps if s.mask in ("inputs_mask", "attention_mask")] if self.masks else []
        scaled = f"q·kᵀ/√{d.qk_head_dim}" + "".join(f" + {m}" for m in added)
        head = [s.mask for s in steps if s.mask and s.mask.startswith("head_mask")] if self.masks else []
        probs = f"softmax({scaled})" + "".join(f" × {m}" for m in head)
        residual = "+ query residual" if d.use_query_residual else "no query residual"
        lines = (
            f"q: {d.q_dim} → {d.qk_channels} · k, v from the {kv}: {d.kv_dim} → {d.qk_channels}, {d.v_channels}",
            f"{d.num_heads} heads: {probs} @ v",
            f"output {d.v_channels} → {d.output_channels} · {residual}",
            f"LayerNorm · MLP {d.q_dim} → {d.mlp_hidden} → {d.q_dim} ({cfg.hidden_act}) · + residual",
        )
        title = "cross-attention" if cross else f"self-attention, layer {first.layer}"
        node = Node(f"{scope}/layer", "operation", title, lines, self.cluster_id(scope),
                    module="encoder.cross_attention" if cross else f"encoder.self_attends.{first.layer}")
        for s in steps:
            self.add(s, node, column)
        for s in steps:  # a layer's residuals add its own input back: inside the box, not drawn
            self.edges_into(s, residuals=False)
        if not any(self.column.get(n) == column for n in self.g.columns):
            self.g.columns.append(node.id)


#: In op detail, steps drawn in the box of an earlier step: the split into heads goes with its projection,
#: and the MLP's two Linears and activation make one box.
_GROUPS = {"split_query": "query", "split_key": "key", "split_value": "value",
           "mlp_act": "mlp", "mlp_dense2": "mlp"}

#: In the layer-detail drawing, how many layers stack in one column before the flow wraps to the next.
LAYERS_PER_COLUMN = 100
