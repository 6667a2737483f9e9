"""Render a :class:`~viz.graph.Graph` as Graphviz DOT, and DOT as SVG, PNG or PDF.

The ``graphviz`` Python package is imported here only, and only when a function needs it; turning DOT into
a picture needs Graphviz's ``dot`` program as well (:func:`dot_available`).

Every colour, shape and font lives in :data:`STYLE`, and the legend is drawn from it, so the legend cannot
disagree with the drawing.

Layout: the flow runs top to bottom. A layer cluster is a column; an edge marked ``wrap`` in the graph
(from one layer to the next) does not push its head further down, so the next layer starts a new column
to the right, at the top -- a wide screen holds the whole encoder, read like columns of a newspaper.
"""

from __future__ import annotations

import html
import shutil
from typing import Optional

from .graph import Graph, Node

FONT = "Helvetica,Arial,sans-serif"

#: The one table of styles: nodes by kind, edges by kind, masks by family, clusters by role.
STYLE: dict[str, dict] = {
    "graph": dict(rankdir="TB", newrank="true", remincross="false", nodesep="0.15", ranksep="0.22", fontname=FONT, fontsize="12",
                  labelloc="t", labeljust="l", pad="0.3", bgcolor="white", outputorder="edgesfirst"),
    "node": {
        "tensor": dict(shape="box", style="rounded,filled,bold", fillcolor="#DCEBFA", color="#2F6DB0"),
        "parameter": dict(shape="cylinder", style="filled", fillcolor="#FFF1C7", color="#B8860B"),
        "operation": dict(shape="box", style="rounded,filled", fillcolor="#FFFFFF", color="#7A7A7A"),
        "mask": dict(shape="box", style="filled,dashed,bold", fillcolor="#FFFFFF"),
        "note": dict(shape="note", style="filled", fillcolor="#FFFBE6", color="#C9B458", fontcolor="#5A4A00"),
    },
    "node_defaults": dict(fontname=FONT, fontsize="11", margin="0.08,0.03", height="0.3", penwidth="1.2"),
    "edge": {
        "data": dict(color="#3C3C3C", fontcolor="#3C3C3C", penwidth="1.2", arrowsize="0.7"),
        "residual": dict(color="#2F6DB0", style="solid", penwidth="1.4", arrowhead="onormal", arrowsize="0.8"),
        "mask": dict(style="dashed", penwidth="1.8", arrowsize="0.8"),
        "dropped": dict(style="dotted", penwidth="1.6", arrowhead="tee", arrowsize="0.9"),
        "note": dict(style="dotted", color="#C9B458", arrowhead="none", constraint="false"),
    },
    "edge_defaults": dict(fontname=FONT, fontsize="9"),
    #: One colour per mask, used by its sources, its edges and the operation that applies it
    #: (Okabe-Ito colours: distinguishable with colour-blindness and in grey).
    "mask": {
        "inputs_mask": dict(color="#D55E00", fill="#FCE6D8"),
        "attention_mask": dict(color="#009E73", fill="#D9F2EA"),
        "head_mask": dict(color="#CC79A7", fill="#F7E3EF"),
    },
    "cluster": {
        "inputs": dict(style="rounded,filled", fillcolor="#F4F8FC", color="#9DB7D5"),
        "masks": dict(style="rounded,filled", fillcolor="#FBFBFB", color="#BBBBBB"),
        "model": dict(style="rounded", color="#DDDDDD", penwidth="1.0"),
        "encoder": dict(style="rounded", color="#999999", penwidth="1.0"),
        "cross": dict(style="rounded,filled", fillcolor="#FFF6EF", color="#D55E00", penwidth="1.6"),
        "block": dict(style="rounded,dashed", color="#009E73", penwidth="1.6"),
        "self": dict(style="rounded,filled", fillcolor="#F1FAF6", color="#6FBFA3"),
        "legend": dict(style="rounded", color="#BBBBBB"),
    },
    "cluster_defaults": dict(fontname=FONT, fontsize="12", labeljust="l", margin="10"),
}

#: What the legend says about each style.
LEGEND_NODES = (
    ("tensor", "tensor", "data in or out"),
    ("parameter", "parameter", "learned weights"),
    ("operation", "operation", "one step of the forward pass"),
    ("mask", "mask", "a mask as given or prepared"),
    ("note", "note", "where HF drops a mask"),
)
LEGEND_EDGES = (
    ("data", None, "data, labelled with its shape"),
    ("residual", None, "residual: added back further on"),
    ("mask", "inputs_mask", "inputs_mask (attention_mask over the inputs)"),
    ("mask", "attention_mask", "attention_mask (latent mask)"),
    ("mask", "head_mask", "head_mask (one row per layer)"),
    ("dropped", "attention_mask", "a mask HF drops here"),
)


# ---------------------------------------------------------------------------- DOT
def to_dot(graph: Graph, legend: bool = True, *, reverse: int = 0, anchors: bool = False,
           remincross: bool = False) -> str:
    """The DOT source of ``graph``, deterministic for a given graph and options.

    The options only change the declaration order and layout hints, never what is drawn; they exist so
    that :func:`layout_dot` can find the ones with which the installed ``dot`` keeps the columns in order:
    ``reverse`` declares the contents of every cluster (1) or of everything (2) in reverse order;
    ``anchors`` adds invisible rows of points that hold the columns in order; ``remincross`` lets Graphviz
    reorder everything once more at the end.
    """
    import graphviz  # lazily: building graphs and testing them needs no Graphviz

    dot = graphviz.Digraph("encoder", graph_attr=dict(STYLE["graph"]), node_attr=dict(STYLE["node_defaults"]),
                           edge_attr=dict(STYLE["edge_defaults"]))
    dot.attr(label=_title(graph))
    if remincross:
        dot.attr(remincross="true")
    anchor_rows = _column_anchors(graph) if anchors else {}
    _add_clusters(dot, graph, None, anchor_rows, reverse)
    for node in graph.nodes_in(None):
        _add_node(dot, node)
    _add_anchors(dot, anchor_rows.get(None, []))
    for edge in graph.edges:
        dot.edge(edge.tail, edge.head, **_edge_attrs(edge, graph))
    for row in graph.rows:  # side by side, left to right, on one rank
        with dot.subgraph() as same:
            same.attr(rank="same")
            for a, b in zip(row, row[1:]):
                if graph.nodes[a].cluster == graph.nodes[b].cluster:
                    same.edge(a, b, style="invis")
                else:  # Graphviz does not keep flat edges between clusters in order: the anchors do
                    same.node(a)
                    same.node(b)
    if legend:
        _add_legend(dot, graph)
    return dot.source


def _add_clusters(parent, graph: Graph, parent_id: Optional[str], anchors: dict, reverse: bool) -> None:
    order = reversed if (reverse and parent_id is not None) or reverse == 2 else list
    for cluster in order(graph.child_clusters(parent_id)):
        with parent.subgraph(name=cluster.id) as sub:
            attrs = {**STYLE["cluster_defaults"], **STYLE["cluster"].get(cluster.role, {})}
            sub.attr(label=_html(cluster.label, cluster.lines, bold=True, size=10), **attrs)
            _add_anchors(sub, anchors.get(cluster.id, []))
            _add_clusters(sub, graph, cluster.id, anchors, reverse)
            for node in (reversed if reverse else list)(graph.nodes_in(cluster.id)):
                _add_node(sub, node)


def _column_anchors(graph: Graph) -> dict:
    """Keep the columns in order, left to right, whatever Graphviz's cluster ordering does.

    For each cluster (or the top level) holding two or more columns in different child clusters, an
    invisible row of points, one per child, each pointing at the first column head inside it: any other
    order of the children would cross those invisible edges, which the layout avoids.
    """
    found: dict = {}
    for head in graph.columns:
        chain = [None, *reversed(list(graph.ancestors(graph.nodes[head].cluster)))]
        for container, child in zip(chain, chain[1:]):
            children = found.setdefault(container, {})
            children.setdefault(child, head)
    return {c: list(children.values()) for c, children in found.items() if len(children) > 1}


def _add_anchors(dot, heads: list) -> None:
    if not heads:
        return
    names = [f"order/{h}" for h in heads]
    with dot.subgraph() as row:
        row.attr(rank="same")
        for name in names:
            row.node(name, label="", shape="point", style="invis", width="0", height="0")
        for a, b in zip(names, names[1:]):
            row.edge(a, b, style="invis")
    for name, head in zip(names, heads):
        dot.edge(name, head, style="invis")


def _add_node(dot, node: Node) -> None:
    attrs = dict(STYLE["node"][node.kind])
    if node.mask is not None:
        colors = STYLE["mask"][node.mask]
        attrs.update(color=colors["color"])
        if node.kind == "mask":
            attrs.update(fillcolor=colors["fill"])
        else:  # the operation that applies a mask: framed in that mask's colour
            attrs.update(penwidth="2.2", fillcolor=colors["fill"])
    size = 9 if node.kind == "note" else 10
    attrs["label"] = _html(node.label, node.lines, bold=node.kind != "note", size=size)
    if node.module:
        attrs["tooltip"] = node.module
    dot.node(node.id, **attrs)


def _edge_attrs(edge, graph: Graph) -> dict:
    kind = "dropped" if edge.dropped else edge.kind
    attrs = dict(STYLE["edge"][kind])
    if edge.mask is not None:
        attrs.update(color=STYLE["mask"][edge.mask]["color"], fontcolor=STYLE["mask"][edge.mask]["color"])
    if edge.label:
        attrs["label"] = " " + edge.label
    if edge.wrap:  # the flow continues at the top of the next column
        attrs.update(constraint="false")
    return attrs


def _add_legend(dot, graph: Graph) -> None:
    """A legend of the node and edge styles that the drawing uses, and only those."""
    node_kinds = {n.kind for n in graph.nodes.values()}
    edge_kinds = {("dropped" if e.dropped else e.kind, e.mask if not e.dropped else None) for e in graph.edges}
    nodes = [row for row in LEGEND_NODES if row[0] in node_kinds]
    edges = [row for row in LEGEND_EDGES if (row[0], row[1] if row[0] == "mask" else None) in edge_kinds]
    with dot.subgraph(name="cluster_legend") as leg:
        leg.attr(label=_html("legend", (), bold=True, size=10), **{**STYLE["cluster_defaults"],
                                                                    **STYLE["cluster"]["legend"]})
        previous = None
        for kind, _, text in nodes:
            nid = f"legend/{kind}"
            leg.node(nid, **{**STYLE["node"][kind], "label": _html(kind, (text,), bold=True, size=9)})
            if previous:
                leg.edge(previous, nid, style="invis")
            previous = nid
        for i, (kind, mask, text) in enumerate(edges):
            a, b = f"legend/edge{i}a", f"legend/edge{i}b"
            attrs = dict(STYLE["edge"][kind])
            if mask is not None:
                attrs.update(color=STYLE["mask"][mask]["color"], fontcolor=STYLE["mask"][mask]["color"])
            attrs.pop("constraint", None)
            with leg.subgraph() as row:
                row.attr(rank="same")
                row.node(a, label="", shape="point", width="0.05", color="#FFFFFF")
                row.node(b, label=_html(text, (), bold=False, size=9), shape="plaintext")
            leg.edge(a, b, **attrs, minlen="2")
            leg.edge(previous, a, style="invis")
            previous = a


def _title(graph: Graph) -> str:
    lines = "".join(f'<font point-size="11" color="#444444">{_esc(line)}</font><br align="left"/>'
                    for line in graph.subtitle)
    return f'<<font point-size="18"><b>{_esc(graph.title)}</b></font><br align="left"/>{lines} >'


def _html(title: str, lines, bold: bool = True, size: int = 10) -> str:
    head = f"<b>{_esc(title)}</b>" if bold else _esc(title)
    rest = "".join(f'<br/><font point-size="{size}" color="#555555">{_esc(line)}</font>' for line in lines)
    return f"<{head}{rest}>"


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


# ---------------------------------------------------------------------------- layout check
#: Declaration orders and hints tried by :func:`layout_dot`, most often right first.
LAYOUT_VARIANTS = (
    dict(reverse=0), dict(reverse=1), dict(reverse=2),
    dict(reverse=0, anchors=True), dict(reverse=1, anchors=True),
    dict(reverse=0, remincross=True), dict(reverse=1, remincross=True),
)


def layout_dot(graph: Graph, legend: bool = True) -> str:
    """DOT source that the installed ``dot`` lays out with the columns (and each layer's query, key and
    value) left to right, in order.

    Graphviz orders clusters side by side by heuristics that differ between versions (2.43, which most
    Linux distributions ship, tends to mirror a cluster's contents). So this asks ``dot`` where it puts
    the nodes (``-Tplain``) for each of :data:`LAYOUT_VARIANTS` and keeps the first that is in order, or
    else the one with the fewest nodes out of order. Without ``dot`` it returns :func:`to_dot` unchanged.
    """
    first = to_dot(graph, legend)
    if not dot_available() or (len(graph.columns) < 2 and not graph.rows):
        return first
    best, best_score = first, None
    for options in LAYOUT_VARIANTS:
        candidate = first if options == LAYOUT_VARIANTS[0] else to_dot(graph, legend, **options)
        score = _disorder(graph, _plain_positions(candidate))
        if best_score is None or score < best_score:
            best, best_score = candidate, score
        if score == 0:
            break
    return best


def _plain_positions(dot_source: str) -> dict[str, float]:
    """Node id -> x coordinate, from ``dot -Tplain``."""
    import graphviz

    text = graphviz.Source(dot_source).pipe(format="plain").decode("utf-8")
    xs = {}
    for line in text.splitlines():
        if line.startswith("node "):
            fields = _split_plain(line)
            xs[fields[1]] = float(fields[2])
    return xs


def _split_plain(line: str) -> list[str]:
    """Split a ``-Tplain`` line; quoted ids may hold spaces."""
    out, field, quoted = [], "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == " " and not quoted:
            out.append(field)
            field = ""
        else:
            field += ch
    out.append(field)
    return out


def _disorder(graph: Graph, xs: dict[str, float]) -> int:
    """How many neighbouring pairs of the columns and rows stand the wrong way round (0: all in order)."""
    bad = 0
    for seq in (graph.columns, *graph.rows):
        positions = [xs.get(n, float("nan")) for n in seq]
        bad += sum(not a < b for a, b in zip(positions, positions[1:]))
    return bad


# ---------------------------------------------------------------------------- pictures
FORMATS = ("svg", "png", "pdf", "dot")


def dot_available() -> bool:
    """Whether Graphviz's ``dot`` program is on the PATH (needed for svg, png and pdf)."""
    return shutil.which("dot") is not None


def render(dot_source: str, fmt: str) -> bytes:
    """DOT source -> the bytes of an ``fmt`` file ("svg", "png", "pdf"; "dot" returns the source itself).

    Raises ``graphviz.ExecutableNotFound`` without the ``dot`` program.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "dot":
        return dot_source.encode("utf-8")
    import graphviz

    return graphviz.Source(dot_source).pipe(format=fmt)
