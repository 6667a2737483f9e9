"""A plain graph model for diagrams: boxes, tables of boxes, arrows and frames, with no drawing library.

``viz/encoder_graph.py`` builds one from the forward trace; ``viz/render.py`` writes it as Graphviz DOT,
and Graphviz's ``dot`` places everything. Tests read the model directly. It is deterministic: nodes, edges
and clusters keep the order they were added in, and ids are path-like (``cross/softmax``,
``self0/head_mask``, ``cross/layer``; clusters ``cluster_block``, ``cluster_block1``).

Kinds of node: ``tensor`` (data the model takes or returns), ``parameter`` (learned weights), ``operation``,
``mask`` (a mask, as given or as the model prepares it), and ``table``: one box made of other boxes, its
*parts*, in rows -- a layer (where its inputs enter, its projections side by side, its steps), the masks,
the inputs. An edge always names the box it starts or ends on (a part, never the table), so the model says
exactly where each mask acts, however the boxes are packed.

Kinds of edge: ``data``; ``residual`` (a tensor added back further on); ``mask`` (a mask reaching the step
that applies it, or, ``dropped``, the step where HF throws it away); ``loop`` (a rolled block's output fed
back into its first layer: the one edge that points backwards). A *compact* edge (``into`` set) is drawn
once, into a cluster, and stands for one edge to each box listed in ``each``, with its own label: a
26-layer encoder gets the latent mask once instead of 26 times, and the graph still lists every layer it
reaches (:meth:`Graph.expanded_edges`). Clusters frame the self-attention blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Optional

NODE_KINDS = ("tensor", "parameter", "operation", "mask", "table")
EDGE_KINDS = ("data", "residual", "mask", "loop")


@dataclass(frozen=True)
class Node:
    """A box: the steps of the forward trace it shows, their name, what they compute and the output shape."""

    id: str
    kind: str  # one of NODE_KINDS
    label: str  # the title of the box
    lines: tuple[str, ...] = ()  # what it computes, one line each
    shape: str = ""  # the shape it outputs, "(B, N, D)"
    cluster: Optional[str] = None  # the innermost cluster holding it (None: top level)
    mask: Optional[str] = None  # the mask family it is or applies: "inputs_mask", "attention_mask", "head_mask"
    notes: tuple[str, ...] = ()  # what a learner should know here (HF quirks), from the trace
    module: str = ""  # the HF module it mirrors
    steps: tuple[str, ...] = ()  # ids of the trace steps it shows
    parts: tuple[tuple[str, ...], ...] = ()  # a table: the ids of its parts, row by row


@dataclass(frozen=True)
class Edge:
    """An arrow from box ``tail`` to box ``head``."""

    tail: str
    head: str
    kind: str  # one of EDGE_KINDS
    label: str = ""  # what it carries: a shape, or a mask's name and shape
    mask: Optional[str] = None  # mask edges: the family
    dropped: bool = False  # a mask edge ending where HF throws the mask away
    into: Optional[str] = None  # compact edge: drawn into this cluster ...
    each: tuple[tuple[str, str], ...] = ()  # ... standing for an edge to each (box, label)
    remark: str = ""  # words drawn on a compact edge: which boxes of the cluster it reaches


@dataclass(frozen=True)
class Cluster:
    """A titled frame around boxes and other clusters: a self-attention block, or every block."""

    id: str  # starts with "cluster_" (Graphviz frames only such subgraphs)
    label: str
    lines: tuple[str, ...] = ()  # smaller lines under the label
    parent: Optional[str] = None
    role: str = "block"  # what it frames (a style of the renderer's)
    block: Optional[int] = None  # a block: which application (None when rolled: it stands for every one)


@dataclass
class Graph:
    """Nodes, edges and clusters in insertion order, and a title."""

    title: str = ""
    subtitle: tuple[str, ...] = ()
    detail: str = "layer"  # a layer's parts: "op", a box per operation; "layer", the runs between masks
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    clusters: dict[str, Cluster] = field(default_factory=dict)

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
    def table_of(self, node_id: str) -> Optional[str]:
        """The table holding the box as a part, or None."""
        return next((t.id for t in self.nodes.values() if any(node_id in row for row in t.parts)), None)

    def boxes(self) -> list[Node]:
        """The nodes that show steps: every node but the tables (their parts show them)."""
        return [n for n in self.nodes.values() if n.kind != "table"]

    def child_clusters(self, parent: Optional[str]) -> list[Cluster]:
        return [c for c in self.clusters.values() if c.parent == parent]

    def nodes_in(self, cluster: Optional[str]) -> list[Node]:
        """The nodes drawn directly in ``cluster`` (None: top level), tables and free boxes, each where its
        first box came: a table stands in the place of its first part."""
        table = {p: n.id for n in self.nodes.values() for row in n.parts for p in row}
        drawn = dict.fromkeys(table.get(n.id, n.id) for n in self.nodes.values() if n.cluster == cluster)
        return [self.nodes[n] for n in drawn]

    def ancestors(self, cluster: Optional[str]) -> Iterator[str]:
        """``cluster`` and every cluster around it, innermost first."""
        while cluster is not None:
            yield cluster
            cluster = self.clusters[cluster].parent

    def within(self, node_id: str, cluster: str) -> bool:
        return cluster in self.ancestors(self.nodes[node_id].cluster)

    def edges_into(self, node_id: str, kind: Optional[str] = None) -> list[Edge]:
        return [e for e in self.edges if e.head == node_id and kind in (None, e.kind)]

    def edges_from(self, node_id: str, kind: Optional[str] = None) -> list[Edge]:
        return [e for e in self.edges if e.tail == node_id and kind in (None, e.kind)]

    def expanded_edges(self) -> list[Edge]:
        """The edges with each compact edge replaced by the edges it stands for."""
        return [x for e in self.edges
                for x in ([e] if e.into is None else [replace(e, head=h, label=lab, into=None, each=(), remark="")
                                                      for h, lab in e.each])]

    # ------------------------------------------------------------------ checking
    def validate(self) -> None:
        """Raise ``ValueError`` unless the graph is well-formed: known kinds; edges join boxes (never tables);
        a table's parts are boxes of its cluster, in one table only; clusters start with ``cluster_``, nest
        without loops and are not empty; a compact edge stands for edges into its cluster, its head among
        them; a loop edge stays in one block; without its loop edges the graph is acyclic."""
        for n in self.nodes.values():
            if n.kind not in NODE_KINDS:
                raise ValueError(f"node {n.id!r} has unknown kind {n.kind!r}")
            if n.cluster is not None and n.cluster not in self.clusters:
                raise ValueError(f"node {n.id!r} is in unknown cluster {n.cluster!r}")
            if (n.kind == "table") != bool(n.parts):
                raise ValueError(f"node {n.id!r}: a table, and only a table, has parts")
            for p in (p for row in n.parts for p in row):
                if p not in self.nodes or self.nodes[p].kind == "table" or self.nodes[p].cluster != n.cluster:
                    raise ValueError(f"table {n.id!r}: part {p!r} must be a box in the table's cluster")
                if self.table_of(p) != n.id:
                    raise ValueError(f"part {p!r} is in two tables")
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
            where = f"edge {e.tail!r} -> {e.head!r}"
            if e.kind not in EDGE_KINDS:
                raise ValueError(f"{where} has unknown kind {e.kind!r}")
            for end in (e.tail, e.head):
                if end not in self.nodes:
                    raise ValueError(f"{where} names unknown node {end!r}")
                if self.nodes[end].kind == "table":
                    raise ValueError(f"{where} must end on a part of table {end!r}, not on the table")
            if e.dropped and e.kind != "mask":
                raise ValueError(f"{where}: only mask edges can be dropped")
            if (e.into is None) != (not e.each):
                raise ValueError(f"{where}: a compact edge needs both into and each")
            if e.into is not None:
                heads = [h for h, _ in e.each]
                if e.into not in self.clusters:
                    raise ValueError(f"{where} goes into unknown cluster {e.into!r}")
                if not all(h in self.nodes and self.within(h, e.into) for h in heads):
                    raise ValueError(f"{where}: a compact edge stands for edges to boxes inside {e.into!r} only")
                if e.head not in heads or len(set(heads)) != len(heads):
                    raise ValueError(f"{where}: the head of a compact edge must be one of its targets, each once")
            if e.kind == "loop":
                common = set(self.ancestors(self.nodes[e.tail].cluster))
                common &= set(self.ancestors(self.nodes[e.head].cluster))
                if not any(self.clusters[c].role == "block" for c in common):
                    raise ValueError(f"loop {where} must stay inside one block")
        self.topological_order()

    def topological_order(self) -> list[str]:
        """Node ids with every edge but the loops pointing forward (ties in insertion order); ``ValueError``
        on a cycle."""
        indegree = {n: 0 for n in self.nodes}
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for e in self.edges:
            if e.kind != "loop":
                indegree[e.head] += 1
                out[e.tail].append(e.head)
        ready, order = [n for n, d in indegree.items() if d == 0], []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for m in out[n]:
                indegree[m] -= 1
                if indegree[m] == 0:
                    ready.append(m)
        if len(order) != len(self.nodes):
            raise ValueError(f"the graph has a cycle through {sorted(n for n, d in indegree.items() if d)[:5]}")
        return order
