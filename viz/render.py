"""Graph model -> Graphviz DOT -> SVG/PNG/PDF.

:func:`to_dot` needs the ``graphviz`` Python package (imported lazily, so building and testing graph
models needs nothing): plain DOT, which any Graphviz lays out by itself (``--format dot``, the golden
files). :func:`layout_dot` needs Graphviz's ``dot`` program as well: it places every node, box and edge
itself (:mod:`npperceiver.viz.layout`), so the picture is the same on every Graphviz version, and :func:`render` draws
it.

Every colour, shape and font lives in :data:`STYLE`, and the legend is drawn from it, so the legend cannot
disagree with the drawing. The title and a three-row legend head the picture; each box shows its name and
the shape it outputs; edges carry no shape labels (their tooltip has it), only words where they say
something a box cannot, such as "added in each of the 26 layers" on a mask drawn once into a block.
"""

from __future__ import annotations

import html
import shutil
from typing import Optional

from .graph import Graph, Node

FONT = "Helvetica,Arial,sans-serif"

#: Point sizes: at Graphviz's 96 dpi a point is 1.33 pixels, so the smallest text (9 pt) is 12 px tall.
TITLE_SIZE, SUBTITLE_SIZE, NODE_SIZE, LINE_SIZE = 17, 10, 10, 9

#: The one table of styles: nodes by kind, edges by kind, masks by family, clusters by role.
STYLE: dict[str, dict] = {
    "graph": dict(rankdir="TB", newrank="true", compound="true", nodesep="0.12", ranksep="0.1", fontname=FONT,
                  fontsize="12", labelloc="t", labeljust="l", pad="0.12", bgcolor="white",
                  outputorder="edgesfirst"),
    "node": {
        "tensor": dict(shape="box", style="rounded,filled,bold", fillcolor="#DCEBFA", color="#2F6DB0"),
        "parameter": dict(shape="cylinder", style="filled", fillcolor="#FFF1C7", color="#B8860B"),
        "operation": dict(shape="box", style="rounded,filled", fillcolor="#FFFFFF", color="#7A7A7A"),
        "mask": dict(shape="box", style="filled,dashed,bold", fillcolor="#FFFFFF"),
        "note": dict(shape="note", style="filled", fillcolor="#FFFBE6", color="#C9B458", fontcolor="#5A4A00"),
    },
    "node_defaults": dict(fontname=FONT, fontsize=str(NODE_SIZE), margin="0.06,0.025", height="0.2", width="0.3",
                          penwidth="1.2"),
    "edge": {
        "data": dict(color="#3C3C3C", fontcolor="#3C3C3C", penwidth="1.2", arrowsize="0.7"),
        "residual": dict(color="#2F6DB0", style="solid", penwidth="1.4", arrowhead="onormal", arrowsize="0.8"),
        "loop": dict(color="#2F6DB0", fontcolor="#2F6DB0", style="bold", penwidth="1.8", arrowsize="0.8",
                     constraint="false"),
        "mask": dict(style="dashed", penwidth="1.8", arrowsize="0.8"),
        "dropped": dict(style="dotted", penwidth="1.8", arrowhead="tee", arrowsize="0.9"),
        "note": dict(style="dotted", color="#C9B458", arrowhead="none", constraint="false"),
    },
    "edge_defaults": dict(fontname=FONT, fontsize=str(LINE_SIZE)),
    #: One colour per mask, used by its sources, its edges and the operation that applies it
    #: (Okabe-Ito colours: distinguishable with colour-blindness and in grey).
    "mask": {
        "inputs_mask": dict(color="#D55E00", fill="#FCE6D8"),
        "attention_mask": dict(color="#009E73", fill="#D9F2EA"),
        "head_mask": dict(color="#CC79A7", fill="#F7E3EF"),
    },
    "shape_color": "#2F6DB0",  # the output shape in each box
    "cluster": {
        "inputs": dict(style="rounded,filled", fillcolor="#F4F8FC", color="#9DB7D5"),
        "masks": dict(style="rounded,filled", fillcolor="#FBFBFB", color="#BBBBBB"),
        "model": dict(style="rounded", color="#CCCCCC", penwidth="1.0"),
        "encoder": dict(style="rounded", color="#999999", penwidth="1.0"),
        "cross": dict(style="rounded,filled", fillcolor="#FFF6EF", color="#D55E00", penwidth="1.6"),
        "blocks": dict(style="rounded", color="#009E73", penwidth="1.0"),
        "block": dict(style="rounded,dashed", color="#009E73", penwidth="1.6"),
        "self": dict(style="rounded,filled", fillcolor="#F1FAF6", color="#6FBFA3"),
        "decoder_module": dict(style="rounded", color="#999999", penwidth="1.0"),
        "decoder": dict(style="rounded,filled", fillcolor="#F3F0FA", color="#7B68B5", penwidth="1.6"),
        "embedding_decoder": dict(style="rounded,filled", fillcolor="#F4F8FC", color="#9DB7D5"),
    },
    "cluster_defaults": dict(fontname=FONT, fontsize=str(NODE_SIZE), labeljust="l", margin="6"),
}

#: What the legend says about each style: (node kind, mask family or None, text).
LEGEND_NODES = (
    ("tensor", None, "tensor"),
    ("parameter", None, "learned weights"),
    ("operation", None, "operation"),
    ("mask", None, "mask"),
    ("operation", "inputs_mask", "a mask acts here"),
    ("note", None, "HF drops a mask"),
)
#: (edge style, mask family or None, text); "compact" is a mask edge into a cluster (``Edge.into``).
LEGEND_EDGES = (
    ("data", None, "data"),
    ("residual", None, "residual: added back"),
    ("loop", None, "block applied again"),
    ("dropped", None, "a mask HF drops"),
    ("compact", None, "into a block: every layer in it"),
    ("mask", "inputs_mask", "attention_mask → inputs_mask"),
    ("mask", "attention_mask", "latent_mask → the encoder's attention_mask"),
    ("mask", "head_mask", "head_mask"),
)
_GLYPHS = {"data": "───▶", "residual": "───▷", "loop": "━━━▶", "mask": "╌╌╌▶", "dropped": "┈┈┈┤",
           "compact": "╌╌╌▶▢"}


# ---------------------------------------------------------------------------- DOT
def to_dot(graph: Graph, legend: bool = True) -> str:
    """The DOT source of ``graph``, deterministic, for any Graphviz to lay out by itself.

    This is what ``--format dot`` writes and what the golden files hold: clusters, nodes, edges (compact
    ones with ``lhead``), the title and legend. Graphviz's own layout of it may order side-by-side
    clusters differently from version to version; the pictures come from :func:`layout_dot`, which places
    everything itself.
    """
    import graphviz  # lazily: building graphs and testing them needs no Graphviz

    dot = graphviz.Digraph("encoder", graph_attr=dict(STYLE["graph"]), node_attr=dict(STYLE["node_defaults"]),
                           edge_attr=dict(STYLE["edge_defaults"]))
    dot.attr(label=_title(graph, legend))
    rows = _rows_by_cluster(graph)
    _add_clusters(dot, graph, None, False, rows)
    for node in graph.nodes_in(None):
        _add_node(dot, node)
    _add_rows(dot, rows.get(None, []))
    for edge in graph.edges:
        dot.edge(edge.tail, edge.head, **_edge_attrs(edge, graph))
    return dot.source


def _rows_by_cluster(graph: Graph) -> dict:
    """Each row hint, filed under the innermost drawn cluster holding all its nodes (None: top level)."""
    out: dict = {}
    for row in graph.rows:
        chains = [[c for c in graph.ancestors(graph.nodes[n].cluster) if not flattened(graph, c)] for n in row]
        common = [c for c in chains[0] if all(c in chain for chain in chains[1:])]
        out.setdefault(common[0] if common else None, []).append(row)
    return out


def _add_rows(dot, rows: list) -> None:
    """Side by side, left to right, on one rank: invisible flat edges in a rank=same subgraph."""
    for row in rows:
        with dot.subgraph() as same:
            same.attr(rank="same")
            for a, b in zip(row, row[1:]):
                same.edge(a, b, style="invis")


def flattened(graph: Graph, cluster_id: str) -> bool:
    """A self-attention layer drawn as one box is drawn without its cluster: the box names the module."""
    c = graph.clusters[cluster_id]
    return c.role == "self" and len(graph.nodes_in(cluster_id)) == 1 and not graph.child_clusters(cluster_id)


def _add_clusters(parent, graph: Graph, parent_id: Optional[str], reverse: bool, rows: dict) -> None:
    """The clusters inside ``parent_id``, with everything they hold (``reverse``: declared backwards)."""
    order = reversed if reverse else list
    for cluster in order(graph.child_clusters(parent_id)):
        if flattened(graph, cluster.id):
            _add_node(parent, graph.nodes_in(cluster.id)[0])
            continue
        with parent.subgraph(name=cluster.id) as sub:
            attrs = {**STYLE["cluster_defaults"], **STYLE["cluster"].get(cluster.role, {})}
            sub.attr(label=_cluster_label(cluster.label, cluster.lines), **attrs)
            _add_clusters(sub, graph, cluster.id, reverse, rows)
            for node in order(graph.nodes_in(cluster.id)):
                _add_node(sub, node)
            _add_rows(sub, rows.get(cluster.id, []))


def _add_node(dot, node: Node) -> None:
    dot.node(node.id, **_node_attrs(node))


def _node_attrs(node: Node) -> dict:
    attrs = dict(STYLE["node"][node.kind])
    if node.mask is not None:
        colors = STYLE["mask"][node.mask]
        attrs.update(color=colors["color"])
        if node.kind == "mask":
            attrs.update(fillcolor=colors["fill"])
        else:  # the operation that applies a mask: framed in that mask's colour
            attrs.update(penwidth="2.4", fillcolor=colors["fill"])
    attrs["label"] = _node_label(node.label, node.shape, node.lines, bold=node.kind != "note")
    tooltip = " · ".join(x for x in (node.module, node.shape) if x)
    if tooltip:
        attrs["tooltip"] = tooltip
    return attrs


def _edge_attrs(edge, graph: Graph) -> dict:
    kind = "dropped" if edge.dropped else edge.kind
    attrs = dict(STYLE["edge"][kind])
    if edge.mask is not None:
        attrs.update(color=STYLE["mask"][edge.mask]["color"], fontcolor=STYLE["mask"][edge.mask]["color"])
    if edge.remark:
        attrs["label"] = f"<{_esc(edge.remark)}>"
    if edge.label:
        attrs["tooltip"] = edge.label
    if edge.into is not None:  # drawn once, into the cluster of all the nodes it reaches
        attrs.update(lhead=edge.into, penwidth="2.4")
    if edge.wrap:  # the flow continues at the top of the next column
        attrs.update(constraint="false")
    return attrs


# ---------------------------------------------------------------------------- labels
def _node_label(title: str, shape: str, lines, bold: bool = True) -> str:
    """A box's label: the title (and the shape it outputs, right-aligned), then smaller grey lines."""
    head = f"<B>{_esc(title)}</B>" if bold else _esc(title)
    if not shape and not lines:
        return f"<{head}>"
    rows = [f'<TD ALIGN="LEFT">{head}</TD>']
    if shape:
        rows[0] += f'<TD ALIGN="RIGHT">  <FONT COLOR="{STYLE["shape_color"]}">{_esc(shape)}</FONT></TD>'
    span = ' COLSPAN="2"' if shape else ""
    for line in lines:
        rows.append(f'<TD ALIGN="LEFT"{span}><FONT POINT-SIZE="{LINE_SIZE}" COLOR="#555555">{_esc(line)}</FONT></TD>')
    body = "".join(f"<TR>{r}</TR>" for r in rows)
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0">{body}</TABLE>>'


def _cluster_label(title: str, lines, beside: bool = True) -> str:
    """A cluster's label: the title, its first line beside it (or under it), further lines under it, all
    left-aligned. The boxes composed around whole columns put every line under the title: a narrow label
    leaves room for the routes coming down into the box."""
    head = f"<B>{_esc(title)}</B>"
    if lines and beside:
        head += f' <FONT POINT-SIZE="{LINE_SIZE}" COLOR="#555555">· {_esc(lines[0])}</FONT>'
        lines = lines[1:]
    if not lines:
        return f"<{head}>"
    rows = [head] + [f'<FONT POINT-SIZE="{LINE_SIZE}" COLOR="#555555">{_esc(line)}</FONT>' for line in lines]
    body = "".join(f'<TR><TD ALIGN="LEFT">{r}</TD></TR>' for r in rows)
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0">{body}</TABLE>>'


def _title(graph: Graph, legend: bool = True) -> str:
    """The title, its subtitle lines, and beside them a legend of the styles the drawing uses."""
    lines = "".join(f'<BR ALIGN="LEFT"/><FONT POINT-SIZE="{SUBTITLE_SIZE}" COLOR="#444444">{_esc(line)}</FONT>'
                    for line in graph.subtitle)
    title = (f'<TD ALIGN="LEFT" VALIGN="TOP"><FONT POINT-SIZE="{TITLE_SIZE}"><B>{_esc(graph.title)}</B></FONT>'
             f'{lines}<BR ALIGN="LEFT"/></TD>')
    key = f'<TD ALIGN="LEFT" VALIGN="TOP">{legend_table(graph)}</TD>' if legend else ""
    return f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="2"><TR>{title}<TD WIDTH="24"></TD>{key}</TR></TABLE>>'


def legend_rows(graph: Graph) -> tuple[list, list]:
    """The legend's node and edge entries for the styles ``graph`` uses, and only those."""
    used_nodes = {(n.kind, n.mask is not None and n.kind == "operation") for n in graph.nodes.values()}
    nodes = [row for row in LEGEND_NODES if (row[0], row[1] is not None) in used_nodes]
    used_edges = set()
    for e in graph.edges:
        if e.dropped:
            used_edges.add(("dropped", None))
        elif e.into is not None:
            used_edges.update({("compact", None), ("mask", e.mask)})
        elif e.kind in ("mask",):
            used_edges.add(("mask", e.mask))
        elif e.kind in ("data", "residual", "loop"):
            used_edges.add((e.kind, None))
    edges = [row for row in LEGEND_EDGES if (row[0], row[1]) in used_edges]
    return nodes, edges


def legend_table(graph: Graph) -> str:
    """Two rows: a small box of each node style, then a glyph of each edge style, each with its meaning."""
    nodes, edges = legend_rows(graph)
    size = f'POINT-SIZE="{LINE_SIZE}"'
    node_cells = []
    for kind, mask, text in nodes:
        style = STYLE["node"][kind]
        color, fill = style.get("color", "#000000"), style.get("fillcolor", "#FFFFFF")
        if mask is not None:
            color, fill = STYLE["mask"][mask]["color"], STYLE["mask"][mask]["fill"]
        dashed = ' STYLE="dashed"' if "dashed" in style.get("style", "") else ""
        if kind == "mask":
            color, fill = "#555555", "#F4F4F4"
        node_cells.append(f'<TD BORDER="1" COLOR="{color}" BGCOLOR="{fill}"{dashed} CELLPADDING="2">'
                          f'<FONT {size}>{_esc(text)}</FONT></TD>')
    node_cells.append(f'<TD ALIGN="LEFT"><FONT {size}>  in a box: <B>name</B> '
                      f'<FONT COLOR="{STYLE["shape_color"]}">(its output shape)</FONT></FONT></TD>')
    edge_items, mask_items = [], []
    for kind, mask, text in edges:
        style = STYLE["edge"].get(kind, STYLE["edge"]["mask"])
        color = STYLE["mask"][mask]["color"] if mask else style.get("color", "#555555")
        if kind == "compact":
            color = "#555555"
        (mask_items if mask else edge_items).append(
            f'<FONT COLOR="{color}">{_GLYPHS[kind]}</FONT> {_esc(text)}')
    row = '<TABLE BORDER="0" CELLSPACING="3" CELLPADDING="1"><TR>{}</TR></TABLE>'
    rows = [row.format("".join(node_cells))]
    rows += [f'<FONT {size}>' + ("&nbsp;" * 5).join(items) + "</FONT>" for items in (edge_items, mask_items) if items]
    body = "".join(f'<TR><TD ALIGN="LEFT" CELLPADDING="{0 if k == 0 else 2}">{r}</TD></TR>' for k, r in enumerate(rows))
    return f'<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="0">{body}</TABLE>'


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


# ---------------------------------------------------------------------------- the composed layout
def layout_dot(graph: Graph, legend: bool = True) -> str:
    """DOT source with every node, cluster and edge placed (see :mod:`npperceiver.viz.layout`), for Graphviz to draw
    as it is: the pieces in the order ``graph.layout`` gives, the same on every Graphviz version.

    Needs ``dot``; without it, returns :func:`to_dot` (which any Graphviz lays out by itself).
    """
    if not dot_available():
        return to_dot(graph, legend)
    from .layout import Composer

    comp = Composer(graph, _title(graph, legend), lambda c, composed: _cluster_label(c.label, c.lines, not composed),
                    lambda text: f"<{_esc(text)}>")
    comp.plan()
    comp.layout_pieces(lambda d, piece, add_ports, reverse: _dot_piece(d, graph, piece, add_ports, reverse))
    comp.assign_lanes()
    comp.place()
    routes = comp.route_all()
    return _positioned(graph, comp, routes, legend)


def _dot_piece(dot, graph: Graph, piece: str, add_ports, reverse: bool = False) -> None:
    """One piece for ``dot`` to lay out alone: a node, or a cluster with all it holds (``reverse``: its
    clusters and nodes declared in reverse order, which mirrors what Graphviz would otherwise mirror)."""
    if piece in graph.nodes or flattened(graph, piece):
        _add_node(dot, graph.nodes[piece] if piece in graph.nodes else graph.nodes_in(piece)[0])
        add_ports(dot)
        return
    rows = _rows_by_cluster(graph)
    cluster = graph.clusters[piece]
    with dot.subgraph(name=cluster.id) as sub:
        sub.attr(label=_cluster_label(cluster.label, cluster.lines),
                 **{**STYLE["cluster_defaults"], **STYLE["cluster"].get(cluster.role, {})})
        _add_clusters(sub, graph, cluster.id, reverse, rows)
        for node in (reversed if reverse else list)(graph.nodes_in(cluster.id)):
            _add_node(sub, node)
        _add_rows(sub, rows.get(cluster.id, []))
        bottoms = [n for n in graph.bottoms if graph.within(n, piece)]
        if bottoms:
            with sub.subgraph() as low:
                low.attr(rank="sink")
                for n in bottoms:
                    low.node(n)
        add_ports(sub)


def _positioned(graph: Graph, comp, routes: dict, legend: bool) -> str:
    """The DOT text of the composed layout: positions in points, y upwards, as Graphviz wants them."""
    import graphviz

    from .layout import MARGIN, TITLE, LABEL_PAD

    boxes: dict = {}  # cluster id -> (box, label centre)
    nodes: dict = {}
    edges: dict = {}
    for piece, lay in comp.placed.items():
        boxes.update(lay.clusters)
        nodes.update(lay.nodes)
        edges.update(lay.edges)
    for c, box in comp.boxes.items():
        w, h = comp.sizes[c]
        boxes[c] = (box, (box.x0 + MARGIN + w / 2, box.y0 + LABEL_PAD + h / 2))
    edges.update(routes)
    pad = 6.0
    right = max([b.x1 for b, _ in boxes.values()] + [n.x + n.w / 2 for n in nodes.values()] +
                [comp.placed[TITLE].w])
    bottom = max([b.y1 for b, _ in boxes.values()] + [n.bottom for n in nodes.values()])
    for spline, _ in edges.values():
        right = max([right] + [x for x, _ in spline.points])
        bottom = max([bottom] + [y for _, y in spline.points])
    W, H = right + pad, bottom + pad
    X = lambda x: f"{x + pad:.2f}"  # noqa: E731
    Y = lambda y: f"{H - y:.2f}"  # noqa: E731

    def pos(point) -> str:
        return f"{X(point[0])},{Y(point[1])}"

    attrs = {k: v for k, v in STYLE["graph"].items() if k not in ("newrank", "compound", "labelloc", "labeljust")}
    dot = graphviz.Digraph("encoder", graph_attr={**attrs, "bb": f"0,0,{W + pad:.2f},{H:.2f}", "splines": "true"},
                           node_attr=dict(STYLE["node_defaults"]), edge_attr=dict(STYLE["edge_defaults"]))
    tw, th = comp.sizes[TITLE]
    dot.node(TITLE, label=_title(graph, legend), shape="plaintext", margin="0",
             pos=pos((tw / 2, th / 2)), width=f"{tw / 72:.3f}", height=f"{th / 72:.3f}")

    def add(parent, parent_id) -> None:
        for cluster in graph.child_clusters(parent_id):
            if flattened(graph, cluster.id):
                place(parent, graph.nodes_in(cluster.id)[0])
                continue
            box, lp = boxes[cluster.id]
            with parent.subgraph(name=cluster.id) as sub:
                sub.attr(label=_cluster_label(cluster.label, cluster.lines, cluster.id not in comp.boxes),
                         bb=f"{X(box.x0)},{Y(box.y1)},{X(box.x1)},{Y(box.y0)}",
                         **{**STYLE["cluster_defaults"], **STYLE["cluster"].get(cluster.role, {})})
                if lp is not None:
                    sub.attr(lp=pos(lp))
                add(sub, cluster.id)
                for node in graph.nodes_in(cluster.id):
                    place(sub, node)

    def place(parent, node) -> None:
        n = nodes[node.id]
        attrs = _node_attrs(node)
        parent.node(node.id, pos=pos((n.x, n.y)), width=f"{n.w / 72:.4f}", height=f"{n.h / 72:.4f}", **attrs)

    add(dot, None)
    for node in graph.nodes_in(None):
        place(dot, node)
    for i, edge in enumerate(graph.edges):
        spline, lp = edges[i]
        a = _edge_attrs(edge, graph)
        for key in ("lhead", "constraint"):
            a.pop(key, None)
        text = " ".join(pos(p) for p in spline.points)
        if spline.end is not None:
            text = f"e,{pos(spline.end)} {text}"
        elif a.get("arrowhead") != "none":
            a["arrowhead"] = "none"
        a["pos"] = text
        if lp is not None and "label" in a:
            a["lp"] = pos(lp)
        dot.edge(edge.tail, edge.head, id=f"edge{i}", **a)
    return dot.source


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

    if '"@title"' in dot_source and " pos=" in dot_source:  # placed by layout_dot: draw it as it is
        return graphviz.pipe("neato", fmt, dot_source.encode("utf-8"), neato_no_op=2)
    return graphviz.Source(dot_source).pipe(format=fmt)
