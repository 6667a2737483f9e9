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
  back further on), and ``note`` (ties a remark to what it is about).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

NODE_KINDS = ("tensor", "parameter", "operation", "mask", "note")
EDGE_KINDS = ("data", "mask", "residual", "note")


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
    steps: tuple[str, ...] = ()  # ids of the npperceiver.shapes steps it shows (empty for notes)


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
    # Layout hints, which a renderer may follow: the nodes heading each column of the flow, left to right,
    # and groups of nodes to draw side by side in the given order.
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[str, ...]] = field(default_factory=list)

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

    # ------------------------------------------------------------------ checking
    def validate(self) -> None:
        """Raise ``ValueError`` unless the graph is well-formed.

        Kinds are known; every edge joins existing nodes; cluster ids start with ``cluster_``, parents exist
        and nest without loops; every node's cluster exists; no cluster is empty; the graph is acyclic.
        """
        for n in self.nodes.values():
            if n.kind not in NODE_KINDS:
                raise ValueError(f"node {n.id!r} has unknown kind {n.kind!r}")
            if n.cluster is not None and n.cluster not in self.clusters:
                raise ValueError(f"node {n.id!r} is in unknown cluster {n.cluster!r}")
        for e in self.edges:
            if e.kind not in EDGE_KINDS:
                raise ValueError(f"edge {e.tail!r} -> {e.head!r} has unknown kind {e.kind!r}")
            for end in (e.tail, e.head):
                if end not in self.nodes:
                    raise ValueError(f"edge {e.tail!r} -> {e.head!r} names unknown node {end!r}")
            if e.dropped and e.kind != "mask":
                raise ValueError(f"edge {e.tail!r} -> {e.head!r}: only mask edges can be dropped")
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
        for hint in (self.columns, *self.rows):
            for node_id in hint:
                if node_id not in self.nodes:
                    raise ValueError(f"layout hint names unknown node {node_id!r}")
        self.topological_order()  # raises on a cycle

    def topological_order(self) -> list[str]:
        """Node ids so that every edge points forward; ``ValueError`` if the graph has a cycle.

        Ties keep insertion order, so the result is deterministic.
        """
        indegree = {n: 0 for n in self.nodes}
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for e in self.edges:
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
