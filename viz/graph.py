"""A plain graph model for diagrams: nodes, edges and nested clusters, with no drawing library in sight.

``viz/encoder_graph.py`` builds one of these from a config; ``viz/render.py`` turns it into Graphviz DOT.
Tests read it directly. Everything is deterministic: nodes, edges and clusters keep the order in which
they were added, and ids are path-like strings chosen by the builder (``cross/softmax``, ``self0/head_mask``;
clusters ``cluster_cross``, ``cluster_self0``).

Kinds:

* nodes -- ``tensor`` (data the encoder takes or returns), ``parameter`` (learned weights), ``operation``,
  ``mask`` (a mask, as given or as the model turns it into what the layers add or multiply), and ``note``
  (a remark for the reader, such as where HF drops a mask);
* edges -- ``data``, ``mask`` (a mask reaching the operation that applies it), ``residual`` (a tensor added
  back further on), ``note`` (ties a remark to what it is about), and ``loop`` (a rolled block's output fed
  back into its next application: the one kind of edge that may point backwards).

A *compact* edge (``into`` set) is drawn once, into a cluster, and stands for one edge to each node listed
in ``each`` (every one of them inside that cluster), with its own label: the diagram of a 26-layer encoder
draws the latent mask once into the block instead of 26 times, and the graph still says exactly which
operation of which layer it reaches. :meth:`Graph.expanded_edges` spells compact edges out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Optional

NODE_KINDS = ("tensor", "parameter", "operation", "mask", "note")
EDGE_KINDS = ("data", "mask", "residual", "note", "loop")


@dataclass(frozen=True)
class Node:
    """A box in the diagram."""

    id: str  # unique, path-like
    kind: str  # one of NODE_KINDS
    label: str  # the title of the box
    lines: tuple[str, ...] = ()  # smaller lines under the title
    cluster: Optional[str] = None  # id of the innermost cluster holding it, None at top level
    mask: Optional[str] = None  # the mask it is or applies: "inputs_mask", "attention_mask", "head_mask"
    module: str = ""  # the HF module it mirrors (a tooltip)
    steps: tuple[str, ...] = ()  # ids of the npperceiver.trace steps it shows (empty for notes)
    shape: str = ""  # the shape of what it outputs, "(B, N, D)", shown in the box (empty for notes)


@dataclass(frozen=True)
class Edge:
    """An arrow from ``tail`` to ``head``."""

    tail: str
    head: str
    kind: str  # one of EDGE_KINDS
    label: str = ""  # the shape on a data edge; mask name and shape on a mask edge
    mask: Optional[str] = None  # for mask edges: which mask ("inputs_mask", "attention_mask", "head_mask")
    dropped: bool = False  # a mask edge ending where HF throws that mask away
    wrap: bool = False  # layout hint: the flow continues in a new column here
    remark: str = ""  # words drawn along the edge ("ignored", "added in each of the 26 layers"); label is data
    into: Optional[str] = None  # compact edge: drawn into this cluster, standing for one edge to each of `each`
    each: tuple[tuple[str, str], ...] = ()  # compact edge: (node id, label) of every edge it stands for


@dataclass(frozen=True)
class Cluster:
    """A labelled box around nodes and other clusters (an HF module, a block, the inputs)."""

    id: str  # starts with "cluster_" (Graphviz draws only such subgraphs as boxes)
    label: str
    parent: Optional[str] = None  # id of the enclosing cluster, None at top level
    role: str = ""  # what it groups: "inputs", "masks", "cross", "block", "self", "attention", "mlp"
    lines: tuple[str, ...] = ()  # smaller lines under the label
    block: Optional[int] = None  # for role "self" / "block": the block index (None when rolled)
    layer: Optional[int] = None  # for role "self": the layer's index within the block


@dataclass
class Graph:
    """Nodes, edges and clusters, in insertion order, plus a title."""

    title: str = ""
    subtitle: tuple[str, ...] = ()
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    # Layout hints, which a renderer may follow: groups of nodes to draw side by side in the given order,
    # and the *pieces* of the picture (a cluster with all it holds, or a top-level node), in bands from top
    # to bottom, each band a list of columns from left to right, each column a list of pieces, top to bottom.
    rows: list[tuple[str, ...]] = field(default_factory=list)
    bottoms: list[str] = field(default_factory=list)  # nodes drawn at the bottom of their piece
    layout: list[list[list[str]]] = field(default_factory=list)

    # ------------------------------------------------------------------ building
    def add_node(self, node: Node) -> Node:
        if node.id in self.nodes:
            raise ValueError(f"duplicate node id {node.id!r}")
        self.nodes[node.id] = node
        return node

    def add_edge(self, edge: Edge) -> Edge:
        self.edges.append(edge)
        return edge

    def add_cluster(self, cluster: Cluster) -> Cluster:
        if cluster.id in self.clusters:
            raise ValueError(f"duplicate cluster id {cluster.id!r}")
        self.clusters[cluster.id] = cluster
        return cluster

    # ------------------------------------------------------------------ reading
    def child_clusters(self, parent: Optional[str]) -> list[Cluster]:
        """Clusters directly inside ``parent`` (None: at top level), in order."""
        return [c for c in self.clusters.values() if c.parent == parent]

    def nodes_in(self, cluster: Optional[str]) -> list[Node]:
        """Nodes directly inside ``cluster`` (None: at top level), in order."""
        return [n for n in self.nodes.values() if n.cluster == cluster]

    def ancestors(self, cluster: Optional[str]) -> Iterator[str]:
        """``cluster`` and every cluster around it, innermost first."""
        while cluster is not None:
            yield cluster
            cluster = self.clusters[cluster].parent

    def within(self, node_id: str, cluster: str) -> bool:
        """Whether the node lies inside ``cluster``, at any depth."""
        return cluster in self.ancestors(self.nodes[node_id].cluster)

    def edges_into(self, node_id: str, kind: Optional[str] = None) -> list[Edge]:
        return [e for e in self.edges if e.head == node_id and (kind is None or e.kind == kind)]

    def edges_from(self, node_id: str, kind: Optional[str] = None) -> list[Edge]:
        return [e for e in self.edges if e.tail == node_id and (kind is None or e.kind == kind)]

    def expanded_edges(self) -> list[Edge]:
        """The edges with every compact edge replaced by the edges it stands for, one per node of ``each``."""
        out: list[Edge] = []
        for e in self.edges:
            if e.into is None:
                out.append(e)
            else:
                out += [replace(e, head=head, label=label, into=None, each=()) for head, label in e.each]
        return out

    # ------------------------------------------------------------------ checking
    def validate(self) -> None:
        """Raise ``ValueError`` unless the graph is well-formed.

        Kinds are known; every edge joins existing nodes; a compact edge stands for edges to nodes inside its
        cluster; cluster ids start with ``cluster_``, parents exist and nest without loops; every node's
        cluster exists; no cluster is empty; the graph without its loop edges is acyclic; a loop edge stays
        inside one block.
        """
        for n in self.nodes.values():
            if n.kind not in NODE_KINDS:
                raise ValueError(f"node {n.id!r} has unknown kind {n.kind!r}")
            if n.cluster is not None and n.cluster not in self.clusters:
                raise ValueError(f"node {n.id!r} is in unknown cluster {n.cluster!r}")
        for c in self.clusters.values():
            if not c.id.startswith("cluster_"):
                raise ValueError(f"cluster id {c.id!r} must start with 'cluster_'")
            seen, parent = {c.id}, c.parent
            while parent is not None:
                if parent not in self.clusters:
                    raise ValueError(f"cluster {c.id!r} has unknown parent {parent!r}")
                if parent in seen:
                    raise ValueError(f"cluster {c.id!r} is nested in itself")
                seen.add(parent)
                parent = self.clusters[parent].parent
            if not self.nodes_in(c.id) and not self.child_clusters(c.id):
                raise ValueError(f"cluster {c.id!r} is empty")
        for e in self.edges:
            if e.kind not in EDGE_KINDS:
                raise ValueError(f"edge {e.tail!r} -> {e.head!r} has unknown kind {e.kind!r}")
            for end in (e.tail, e.head):
                if end not in self.nodes:
                    raise ValueError(f"edge {e.tail!r} -> {e.head!r} names unknown node {end!r}")
            if e.dropped and e.kind != "mask":
                raise ValueError(f"edge {e.tail!r} -> {e.head!r}: only mask edges can be dropped")
            if (e.into is None) != (not e.each):
                raise ValueError(f"edge {e.tail!r} -> {e.head!r}: a compact edge needs both into and each")
            if e.into is not None:
                if e.into not in self.clusters:
                    raise ValueError(f"edge {e.tail!r} -> {e.head!r} goes into unknown cluster {e.into!r}")
                heads = [head for head, _ in e.each]
                for head in heads:
                    if head not in self.nodes or not self.within(head, e.into):
                        raise ValueError(f"compact edge {e.tail!r} -> {e.into!r} stands for an edge to {head!r}, "
                                         f"which is not a node inside {e.into!r}")
                if e.head not in heads or len(set(heads)) != len(heads):
                    raise ValueError(f"compact edge {e.tail!r} -> {e.into!r}: its head {e.head!r} must be one of "
                                     f"its targets, each listed once")
            if e.kind == "loop":
                common = set(self.ancestors(self.nodes[e.tail].cluster)) & set(self.ancestors(self.nodes[e.head].cluster))
                if not any(self.clusters[c].role == "block" for c in common):
                    raise ValueError(f"loop edge {e.tail!r} -> {e.head!r} must stay inside one block")
        for hint in (*self.rows, self.bottoms):
            for node_id in hint:
                if node_id not in self.nodes:
                    raise ValueError(f"layout hint names unknown node {node_id!r}")
        if self.layout:
            self._validate_layout()
        self.topological_order()  # raises on a cycle

    def pieces(self) -> list[str]:
        """The pieces named by ``layout``, in reading order."""
        return [piece for band in self.layout for column in band for piece in column]

    def piece_nodes(self, piece: str) -> set[str]:
        """The nodes a piece holds: the node itself, or every node inside the cluster."""
        if piece in self.nodes:
            return {piece}
        return {n for n in self.nodes if self.within(n, piece)}

    def _validate_layout(self) -> None:
        seen: dict[str, str] = {}
        for piece in self.pieces():
            if piece not in self.nodes and piece not in self.clusters:
                raise ValueError(f"layout names unknown piece {piece!r}")
            for n in self.piece_nodes(piece):
                if n in seen:
                    raise ValueError(f"node {n!r} is in two layout pieces, {seen[n]!r} and {piece!r}")
                seen[n] = piece
        missing = sorted(set(self.nodes) - set(seen))
        if missing:
            raise ValueError(f"layout leaves out nodes {missing[:5]}")

    def topological_order(self) -> list[str]:
        """Node ids so that every edge but the loop edges points forward; ``ValueError`` if the graph has a
        cycle.

        Ties keep insertion order, so the result is deterministic.
        """
        indegree = {n: 0 for n in self.nodes}
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for e in self.edges:
            if e.kind == "loop":
                continue
            indegree[e.head] += 1
            out[e.tail].append(e.head)
        ready = [n for n in self.nodes if indegree[n] == 0]
        order: list[str] = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for m in out[n]:
                indegree[m] -= 1
                if indegree[m] == 0:
                    ready.append(m)
        if len(order) != len(self.nodes):
            stuck = sorted(n for n, d in indegree.items() if d > 0)
            raise ValueError(f"the graph has a cycle through {stuck[:5]}")
        return order
