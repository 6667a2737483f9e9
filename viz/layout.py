"""Where everything goes in the picture: a layout composed from pieces that ``dot`` lays out one at a time.

Graphviz's ``dot`` draws a single column of operations beautifully, but it orders clusters that stand side
by side by heuristics that change between versions -- 2.43, which most Linux distributions ship, mirrors
them, columns and all, and ignores the invisible edges meant to hold them in order. So the picture is
composed in three steps:

1. **Pieces.** The graph names its *pieces* (``Graph.layout``): a cluster with everything inside it, or a
   single node. ``dot`` lays out each piece on its own, where its order holds (checked against the
   graph's ``rows``; a mirrored piece is laid out again, declared backwards).
2. **Composition.** The pieces are placed on a grid of bands (top to bottom) and columns (left to right),
   in the order the graph gives; a column stacks its pieces. The clusters holding several pieces (the
   encoder, the self-attention block) become boxes around whole columns, with room for their labels.
3. **Routes.** Edges between pieces run in the channels between bands and columns, each in a lane of its
   own (edges from one node, of one kind, share one: a bus), with rounded corners:

   * ``down`` -- to a later band: down into the channel under the tail's band, along it, down to the head;
     past whole bands, along the left margin;
   * ``across`` -- to a later column of the band (the flow continuing at the top of the next column):
     out of the tail's side into the gap between the columns, up or down it, into the head's side;
   * ``loop`` -- back to an earlier column, or up the same one (a rolled block applied again);
   * ``stack`` -- to the next piece down the same column.

   A route reaches a node inside a piece of several from the side, if nothing of the piece stands beside
   it there (checked on the piece laid out first); straight from above, if the node heads its piece and
   no label is in the way; else through a *port*: a point on the piece's top edge that ``dot`` joins to the
   node by a lane of its own, right of the labels over the piece (a second layout of that piece). Leaving
   a piece of several from a node that is not its last, a route takes a port on the bottom edge. A compact
   edge (``Edge.into``) ends on the top border of its cluster; its words stand beside it, in a strip of
   the channel kept for them.

The result is DOT with every position fixed, which Graphviz's no-op layout (``neato -n2``) only draws:
the same picture on any Graphviz version. :func:`npperceiver.viz.render.layout_dot` drives this; it needs ``dot``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

from .graph import Edge, Graph

Point = tuple[float, float]

#: Distances in points (1/72 inch; 1.33 px at Graphviz's 96 dpi).
BAND_GAP = 8.0  # between bands, before any lanes
COLUMN_GAP = 14.0  # between columns, before any lanes
STACK_GAP = 16.0  # between pieces stacked in a column
LANE = 5.0  # between neighbouring lanes of a channel
LABEL_LANE = 13.0  # room for the words of a compact edge
MARGIN = 6.0  # inside a composed cluster's border
LABEL_PAD = 2.0  # above and below a composed cluster's label
RADIUS = 6.0  # of a rounded corner
ARROW_LENGTH = 10.0  # Graphviz's arrow length for arrowsize 1

TITLE = "@title"  # the piece holding the title and legend


# ============================================================================ geometry
@dataclass
class Box:
    x0: float
    y0: float  # top (y grows downwards while composing)
    x1: float
    y1: float

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    def moved(self, dx: float, dy: float) -> "Box":
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def union(self, other: "Box") -> "Box":
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def grown(self, left: float, top: float, right: float, bottom: float) -> "Box":
        return Box(self.x0 - left, self.y0 - top, self.x1 + right, self.y1 + bottom)


@dataclass
class Spline:
    """A Graphviz edge path: cubic Bezier points (3n + 1) and the tip of the arrowhead, if any."""

    points: list[Point]
    end: Optional[Point] = None

    def moved(self, dx: float, dy: float) -> "Spline":
        return Spline([(x + dx, y + dy) for x, y in self.points],
                      None if self.end is None else (self.end[0] + dx, self.end[1] + dy))


@dataclass
class NodeBox:
    x: float  # centre
    y: float
    w: float
    h: float

    def moved(self, dx: float, dy: float) -> "NodeBox":
        return NodeBox(self.x + dx, self.y + dy, self.w, self.h)

    @property
    def top(self) -> float:
        return self.y - self.h / 2

    @property
    def bottom(self) -> float:
        return self.y + self.h / 2


@dataclass
class PieceLayout:
    """One piece as ``dot`` laid it out, in its own coordinates (origin top left, y downwards)."""

    id: str
    w: float
    h: float
    nodes: dict[str, NodeBox]
    clusters: dict[str, tuple[Box, Optional[Point]]]  # cluster id -> (box, label centre)
    edges: dict[int, tuple[Spline, Optional[Point]]]  # graph edge index -> (path, label centre)
    lanes_in: dict[str, Spline] = field(default_factory=dict)  # port key -> path from the top edge to the node
    lanes_out: dict[str, Spline] = field(default_factory=dict)  # port key -> path from the node to the bottom edge
    labels: dict[str, Box] = field(default_factory=dict)  # cluster id -> where its label is

    def moved(self, dx: float, dy: float) -> "PieceLayout":
        return PieceLayout(
            self.id, self.w, self.h, {k: v.moved(dx, dy) for k, v in self.nodes.items()},
            {k: (b.moved(dx, dy), None if lp is None else (lp[0] + dx, lp[1] + dy)) for k, (b, lp) in self.clusters.items()},
            {k: (s.moved(dx, dy), None if lp is None else (lp[0] + dx, lp[1] + dy)) for k, (s, lp) in self.edges.items()},
            {k: s.moved(dx, dy) for k, s in self.lanes_in.items()},
            {k: s.moved(dx, dy) for k, s in self.lanes_out.items()},
            {k: b.moved(dx, dy) for k, b in self.labels.items()},
        )


def _parse_pos(pos: str, height: float) -> Spline:
    """A Graphviz ``pos`` of an edge (y upwards) -> a Spline (y downwards)."""
    end, points = None, []
    for part in pos.split():
        if part.startswith("e,"):
            x, y = part[2:].split(",")
            end = (float(x), height - float(y))
        elif part.startswith("s,"):
            continue
        else:
            x, y = part.split(",")
            points.append((float(x), height - float(y)))
    return Spline(points, end)


def _point(text: str, height: float) -> Point:
    x, y = text.split(",")[:2]
    return float(x), height - float(y)


# ============================================================================ 1. pieces
@dataclass
class Ports:
    """What one piece needs besides its own nodes and edges: lanes in from the top, out to the bottom."""

    ins: dict[str, str] = field(default_factory=dict)  # port key -> node reached
    outs: dict[str, str] = field(default_factory=dict)  # port key -> node left
    clear: float = 0.0  # how far from the piece's left edge the labels above its top reach


def layout_piece(graph: Graph, piece: str, members: set[str], ports: Ports, dot_piece) -> PieceLayout:
    """Lay out one piece with ``dot``. ``dot_piece(digraph, add_ports)`` adds the piece's clusters, nodes and
    rows, and calls ``add_ports(subgraph)`` in the piece's outermost cluster (or on the graph)."""
    import graphviz

    from .render import STYLE, _edge_attrs

    attrs = {k: v for k, v in STYLE["graph"].items() if k not in ("labelloc", "labeljust", "newrank", "compound")}
    d = graphviz.Digraph("piece", graph_attr={**attrs, "pad": "0"}, node_attr=dict(STYLE["node_defaults"]),
                         edge_attr=dict(STYLE["edge_defaults"]))
    point = dict(shape="point", width="0.01", height="0.01", style="invis", label="")

    def add_ports(container) -> None:
        """Ports go inside the piece's cluster, so their lanes stay inside its box; the ports in lie right of
        the labels above them (an invisible spacer holds the labels' width), so no route crosses a label."""
        for rank, keys in (("source", ports.ins), ("sink", ports.outs)):
            if keys:
                with container.subgraph() as row:
                    row.attr(rank=rank)
                    if rank == "source" and ports.clear > 0:
                        row.node("port~spacer", shape="box", style="invis", label="", height="0.01",
                                 width=f"{ports.clear / 72:.3f}", fixedsize="true")
                    for key in keys:
                        row.node(f"port~{key}", **point)
                        if rank == "source" and ports.clear > 0:
                            row.edge("port~spacer", f"port~{key}", style="invis")
        for key, head in ports.ins.items():
            container.edge(f"port~{key}", head, id=f"in:{key}", style="invis", arrowsize="0.8")
        for key, tail in ports.outs.items():
            container.edge(tail, f"port~{key}", id=f"out:{key}", style="invis", arrowhead="none")

    dot_piece(d, add_ports)
    for i, e in enumerate(graph.edges):
        if e.tail in members and e.head in members:
            a = _edge_attrs(e, graph)
            a.pop("lhead", None)
            d.edge(e.tail, e.head, id=f"e{i}", **a)
    data = json.loads(graphviz.pipe("dot", "json0", d.source.encode("utf-8")))
    x0, y0, x1, y1 = (float(v) for v in data["bb"].split(","))
    height = y1
    nodes, clusters, edges, lanes_in, lanes_out, labels = {}, {}, {}, {}, {}, {}
    for obj in data.get("objects", []):
        name = obj.get("name", "")
        if "pos" in obj:
            x, y = _point(obj["pos"], height)
            nodes[name] = NodeBox(x, y, float(obj["width"]) * 72, float(obj["height"]) * 72)
        elif name.startswith("cluster_") and "bb" in obj:
            bx0, by0, bx1, by1 = (float(v) for v in obj["bb"].split(","))
            lp = _point(obj["lp"], height) if "lp" in obj else None
            clusters[name] = (Box(bx0, height - by1, bx1, height - by0), lp)
            if lp is not None and "lwidth" in obj:
                lw, lh = float(obj["lwidth"]) * 72, float(obj["lheight"]) * 72
                labels[name] = Box(lp[0] - lw / 2, lp[1] - lh / 2, lp[0] + lw / 2, lp[1] + lh / 2)
    for e in data.get("edges", []):
        ident, pos = e.get("id", ""), e.get("pos")
        if not pos:
            continue
        spline = _parse_pos(pos, height)
        if ident.startswith("e"):
            edges[int(ident[1:])] = (spline, _point(e["lp"], height) if "lp" in e else None)
        elif ident.startswith("in:"):
            lanes_in[ident[3:]] = spline
        elif ident.startswith("out:"):
            lanes_out[ident[4:]] = spline
    # Ports are invisible points; the piece is the box of what is drawn.
    drawn = [b for n, b in nodes.items() if not n.startswith("port~")]
    box = None
    for b in drawn:
        nb = Box(b.x - b.w / 2, b.top, b.x + b.w / 2, b.bottom)
        box = nb if box is None else box.union(nb)
    for b, _ in clusters.values():
        box = b if box is None else box.union(b)
    dx, dy = -box.x0, -box.y0
    piece_layout = PieceLayout(piece, box.w, box.h, {k: v for k, v in nodes.items() if not k.startswith("port~")},
                               clusters, edges, lanes_in, lanes_out, labels).moved(dx, dy)
    return piece_layout


def measure(labels: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Width and height, in points, of HTML-like labels, as Graphviz sizes them."""
    import graphviz

    from .render import FONT

    if not labels:
        return {}
    d = graphviz.Digraph("measure", node_attr=dict(shape="plaintext", margin="0", width="0", height="0",
                                                   fontname=FONT, fontsize="10"))
    names = {}
    for i, (key, label) in enumerate(labels.items()):
        names[f"m{i}"] = key
        d.node(f"m{i}", label=label)
    data = json.loads(graphviz.pipe("dot", "json0", d.source.encode("utf-8")))
    out = {}
    for obj in data.get("objects", []):
        if obj.get("name") in names:
            out[names[obj["name"]]] = (float(obj["width"]) * 72, float(obj["height"]) * 72)
    return out


# ============================================================================ 2 and 3. composition and routes
@dataclass
class Route:
    """An edge between pieces: how it leaves its tail, how it reaches its head, the lanes it runs in."""

    index: int  # in graph.edges
    edge: Edge
    kind: str  # "down", "across", "loop" or "stack" (see the module docstring)
    exit: str  # "port" (a lane to the piece's bottom), "bottom" (the node's bottom), "left"/"right" (its side)
    entry: str  # "port", "top", "left"/"right" (the node's side), "box" (a cluster's top border); "auto" until
    # decide_entries has looked at the piece
    out_key: str = ""
    in_key: str = ""
    h_lanes: list = field(default_factory=list)  # [(channel, lane index)]
    v_lane: Optional[tuple] = None  # ((band, gap), lane index)
    outer: bool = False  # runs down the left margin, past whole bands


class Composer:
    """Places the pieces of ``graph.layout`` and routes the edges between them."""

    def __init__(self, graph: Graph, title_label: str, cluster_label, remark_label):
        from .render import flattened

        self.g = graph
        self.flattened = flattened
        self.bands: list[list[list[str]]] = [[[TITLE]]] + [list(map(list, band)) for band in graph.layout]
        self.members: dict[str, set[str]] = {}
        for band in self.bands:
            for column in band:
                for piece in column:
                    self.members[piece] = self._members(piece)
        self.piece_of = {n: p for p, ms in self.members.items() for n in ms}
        self.where = {p: (b, c, i) for b, band in enumerate(self.bands) for c, col in enumerate(band)
                      for i, p in enumerate(col)}
        self.title_label = title_label
        self.cluster_label = cluster_label
        self.remark_label = remark_label

    # ------------------------------------------------------------------ structure
    def _members(self, piece: str) -> set[str]:
        if piece == TITLE:
            return set()
        if piece in self.g.nodes:
            return {piece}
        return {n for n in self.g.nodes if self.g.within(n, piece)}

    def single(self, piece: str) -> Optional[str]:
        """The node of a one-node piece (a node, or a cluster drawn as its one box), else None."""
        ms = self.members[piece]
        return next(iter(ms)) if len(ms) == 1 else None

    def composed_ancestors(self, piece: str) -> list[str]:
        """Clusters around ``piece`` that hold other pieces too, outermost first (they become drawn boxes)."""
        if piece == TITLE:
            return []
        start = self.g.nodes[piece].cluster if piece in self.g.nodes else self.g.clusters[piece].parent
        chain = [c for c in self.g.ancestors(start) if not self.flattened(self.g, c)]
        return list(reversed(chain))

    # ------------------------------------------------------------------ 1. plan the routes
    def plan(self) -> None:
        g = self.g
        self.routes: list[Route] = []
        ins: dict[str, dict[str, str]] = {}
        outs: dict[str, dict[str, str]] = {}
        for i, e in enumerate(g.edges):
            pt, ph = self.piece_of[e.tail], self.piece_of[e.head]
            if pt == ph:
                continue
            (bt, ct, it), (bh, ch, ih) = self.where[pt], self.where[ph]
            if bh > bt:
                kind = "down"
            elif bh == bt and ct == ch:
                kind = "stack" if ih == it + 1 else "loop"
            elif bh == bt:
                kind = "across" if ch > ct else "loop"
            else:
                kind = "loop"  # an edge back up to an earlier band: around the side
            tail_single, head_single = self.single(pt), self.single(ph)
            # how it leaves
            if kind == "loop" and ch == ct:
                exit_mode = "left"
            elif kind == "across" and ch == ct + 1 and self.is_last(pt, e.tail):
                exit_mode = "right"  # straight into the gap before the next column
            elif kind == "loop" and ch == ct - 1 and self.is_last(pt, e.tail):
                exit_mode = "left"  # straight into the gap after the previous column
            elif tail_single:
                exit_mode = "bottom"
            else:
                exit_mode = "port"
            # how it arrives
            if e.into is not None:
                entry = "box"
            elif kind == "stack":
                entry = "top" if head_single else "auto"
            elif kind in ("across", "loop") and head_single:
                entry = "left" if (kind == "across" or ch == ct) else "right"
            elif head_single:
                entry = "top" if ih == 0 else "right" if e.kind == "mask" else "left"
            else:
                entry = "auto"  # decided by where the head lies in its piece: see decide_entries
            r = Route(i, e, kind, exit_mode, entry)
            if exit_mode == "port":
                r.out_key = f"{e.tail}|{e.kind}|{e.mask}"
                outs.setdefault(pt, {})[r.out_key] = e.tail
            self.routes.append(r)
        self.ports = {p: Ports({}, outs.get(p, {})) for p in self.members}

    def decide_entries(self) -> set[str]:
        """How each route reaches a node inside a piece of several, from the piece laid out without ports:
        from the side the route comes round to (wrap: left, loop: right) if nothing stands beside the
        node there; straight down onto it if it heads its piece and no label is in the way; from the left or
        right if free; else through a port. Returns the pieces that need ports (to lay out again)."""
        again = set()
        for r in self.routes:
            if r.entry != "auto":
                continue
            e = r.edge
            ph = self.piece_of[e.head]
            lay = self.layouts[ph]
            sides = ["left", "right"]
            if r.kind == "loop" or self.where[self.piece_of[e.tail]][1] > self.where[ph][1]:
                sides = ["right", "left"]  # the side facing where the route comes from
            if r.kind in ("across", "loop"):
                free = [side for side in sides[:1] if _side_free(lay, e.head, side)]
            else:
                free = [side for side in sides if _side_free(lay, e.head, side)]
            if r.kind in ("down", "stack") and self.is_top(ph, e.head) and self._top_clear(ph, e.head):
                r.entry = "top"
            elif free and r.kind != "stack":  # the next piece down is entered from above: through a port
                r.entry = free[0]
            else:
                r.entry = "port"
                r.in_key = f"{e.head}|{e.kind}|{e.mask}|{'dropped' if e.dropped else ''}"
                self.ports[ph].ins[r.in_key] = e.head
                again.add(ph)
        return again

    def _top_clear(self, piece: str, node: str) -> bool:
        """Whether a line straight down onto ``node`` misses the labels over its piece."""
        lay = self.layouts[piece]
        n = lay.nodes[node]
        if any(m.bottom <= n.top and abs(m.x - n.x) < (m.w + n.w) / 2 for k, m in lay.nodes.items() if k != node):
            return False
        reach = max([b.x1 for b in lay.labels.values()] +
                    [self.sizes[c][0] + 2 * MARGIN for c in self.labels_above(piece) if c not in lay.labels],
                    default=0.0)
        return n.x - 4 > reach

    def is_last(self, piece: str, node: str) -> bool:
        """Whether nothing in the piece comes after ``node`` (its sides are free)."""
        ms = self.members[piece]
        return not any(e.tail == node and e.head in ms and e.kind in ("data", "residual") for e in self.g.edges)

    def is_top(self, piece: str, node: str) -> bool:
        """Whether ``node`` is the piece's first: nothing in the piece leads to it (its side is free)."""
        ms = self.members[piece]
        return not any(e.head == node and e.tail in ms and e.kind in ("data", "residual") for e in self.g.edges)

    # ------------------------------------------------------------------ 2. lay out and place the pieces
    def layout_pieces(self, dot_piece) -> None:
        labels = {TITLE: self.title_label}
        self.composed = sorted({c for p in self.members for c in self.composed_ancestors(p)},
                               key=list(self.g.clusters).index)
        for c in self.composed:
            labels[c] = self.cluster_label(self.g.clusters[c], True)
        for c in self.members:
            if c in self.g.clusters and not self.flattened(self.g, c):
                labels[c] = self.cluster_label(self.g.clusters[c], False)
        for r in self.routes:
            if r.edge.remark:
                labels[f"remark:{r.index}"] = self.remark_label(r.edge.remark)
        self.sizes = measure(labels)
        self.layouts: dict[str, PieceLayout] = {}

        def lay_out(piece: str) -> None:
            ports = self.ports[piece]
            if ports.ins:
                ports.clear = max([self.sizes[c][0] + 12 for c in self.labels_above(piece)], default=0.0)
            rows = [row for row in self.g.rows if all(n in self.members[piece] for n in row)]
            for reverse in (False, True):  # Graphviz may still mirror a nested cluster: then declare it backwards
                lay = layout_piece(self.g, piece, self.members[piece], ports,
                                   lambda d, add_ports: dot_piece(d, piece, add_ports, reverse))
                if all(lay.nodes[a].x < lay.nodes[b].x for row in rows for a, b in zip(row, row[1:])):
                    break
            self.layouts[piece] = lay

        for piece in self.members:
            if piece != TITLE:
                lay_out(piece)
        for piece in self.decide_entries():  # a second layout, with lanes to the nodes reached from outside
            lay_out(piece)
        w, h = self.sizes[TITLE]
        self.layouts[TITLE] = PieceLayout(TITLE, w, h, {}, {}, {})

    def _foot(self, cluster: str) -> float:
        """Room under the last pieces of a composed box: its margin, and a strip for the loops along it."""
        return MARGIN + (2 * LANE * len(self.loop_strips[cluster]) if cluster in self.loop_strips else 0.0)

    def columns_of(self, cluster: str) -> set:
        """The (band, column) cells holding pieces inside ``cluster``."""
        return {self.where[p][:2] for p in self.where if p != TITLE and cluster in self.composed_ancestors(p)}

    def labels_above(self, piece: str) -> list[str]:
        """The clusters whose labels sit over the top left of ``piece``: its own, and those of the composed
        clusters it opens (it is their first piece, at their top left)."""
        out = [piece] if piece in self.g.clusters and not self.flattened(self.g, piece) else []
        for a in self.composed_ancestors(piece):
            first = min((p for p in self.where if a in self.composed_ancestors(p)), key=lambda p: self.where[p])
            if first == piece:
                out.append(a)
        return out

    def assign_lanes(self) -> None:
        """Give every route its lanes: in the channel under a band, and in a gap beside a column."""
        self.h_count: dict[int, float] = {}  # channel under band b -> room needed
        self.v_count: dict[tuple, list] = {}  # (band, gap) -> [(route, side)]
        self.outer_count = 0
        self.loop_columns: set = set()  # (band, column) with a loop back up inside it
        self.loop_strips: dict[str, list] = {}  # composed cluster -> loops running along its foot
        h_members: dict[int, list] = {}
        for r in self.routes:
            pt, ph = self.piece_of[r.edge.tail], self.piece_of[r.edge.head]
            (bt, ct, _), (bh, ch, _) = self.where[pt], self.where[ph]
            if r.kind == "down":
                h_members.setdefault(bt, []).append(r)
                if bh > bt + 1:
                    r.outer = True
                    self.outer_count += 1
                    h_members.setdefault(bh - 1, []).append(r)
                if r.entry in ("left", "right"):
                    gap = ch if r.entry == "left" else ch + 1
                    self.v_count.setdefault((bh, gap), []).append((r, r.entry))
            elif r.kind == "across":
                if r.exit not in ("left", "right"):
                    h_members.setdefault(bt, []).append(r)
                gap = ch if r.entry in ("left", "port") else ch + 1
                self.v_count.setdefault((bh, gap), []).append((r, "left" if gap == ch else "right"))
            elif r.kind == "stack" and r.entry in ("left", "right"):
                gap = ch if r.entry == "left" else ch + 1
                self.v_count.setdefault((bh, gap), []).append((r, r.entry))
            elif r.kind == "loop":
                if ct == ch:  # out of the tail's side, up close beside the column, into the head's side
                    self.loop_columns.add((bh, ch))
                else:
                    if r.exit not in ("left", "right"):  # along a strip kept at the foot of the loop's box
                        common = [c for c in self.composed_ancestors(pt) if c in self.composed_ancestors(ph)]
                        if common:
                            self.loop_strips.setdefault(common[-1], []).append(r)
                        else:
                            h_members.setdefault(bt, []).append(r)
                    gap = ch + 1 if r.entry == "right" else ch
                    self.v_count.setdefault((bh, gap), []).append((r, r.entry if r.entry != "port" else "left"))
        self.h_members = h_members
        for b, rs in h_members.items():
            self.h_count[b] = LANE * len({self.lane_key(r) for r in rs})
            self.h_count[b] += LABEL_LANE * sum(1 for r in rs if r.entry == "box" and r.edge.remark)

    @staticmethod
    def lane_key(r: Route) -> tuple:
        """Routes from one node, of one kind, share their lane: a bus that branches off to each head."""
        return (r.edge.tail, r.edge.kind, r.edge.dropped, r.edge.mask)

    def place(self) -> None:
        """Positions of every piece and composed box (y downwards, from the top left)."""
        g = self.g
        first_band, last_band = {}, {}
        for p, (b, _, _) in self.where.items():
            for c in self.composed_ancestors(p):
                first_band[c] = min(first_band.get(c, b), b)
                last_band[c] = max(last_band.get(c, b), b)
        label_h = {c: self.sizes[c][1] + 2 * LABEL_PAD for c in self.composed}
        self.offsets: dict[str, tuple[float, float]] = {}
        self.band_boxes: list[Box] = []
        self.column_boxes: dict[tuple[int, int], Box] = {}
        self.gaps: dict[tuple[int, int], tuple[float, float]] = {}  # (band, gap) -> free x interval for lanes
        y = 0.0
        outer = (MARGIN + self.outer_count * LANE) if self.outer_count else 0.0
        for b, band in enumerate(self.bands):
            x = 0.0 if b == 0 else outer  # the title starts at the left edge
            band_bottom = y
            prev_anc: set = set()
            for c, column in enumerate(band):
                anc_sets = [self.composed_ancestors(p) for p in column]
                col_anc = {a for s in anc_sets for a in s}
                following = band[c + 1] if c + 1 < len(band) else []
                next_anc = {a for p in following for a in self.composed_ancestors(p)}
                x += COLUMN_GAP if c > 0 else 0.0
                lanes = len(self.v_count.get((b, c), []))
                self.gaps[(b, c)] = (x, x + (lanes + 1) * LANE)
                x += (lanes + 1) * LANE if lanes else 0.0
                x += len(col_anc - prev_anc) * MARGIN
                confined = [a for a in col_anc if self.columns_of(a) == {(b, c)}]
                width = max([self.layouts[p].w for p in column] + [self.sizes[a][0] for a in confined])
                if (b, c) in self.loop_columns:  # room for the loop inside the column's boxes
                    width += 4 * LANE
                yy, open_stack = y, []
                for k, p in enumerate(column):
                    anc = anc_sets[k]
                    if k > 0:
                        closed = [a for a in open_stack if a not in anc]
                        yy += STACK_GAP + sum(self._foot(a) for a in closed)
                        open_stack = [a for a in open_stack if a in anc]
                    for a in anc:
                        if a not in open_stack:
                            if first_band[a] == b:
                                yy += label_h[a] + MARGIN
                            open_stack.append(a)
                    lay = self.layouts[p]
                    self.offsets[p] = (x + (width - lay.w) / 2, yy)
                    yy += lay.h
                yy += sum(self._foot(a) for a in open_stack if last_band[a] == b)
                band_bottom = max(band_bottom, yy)
                self.column_boxes[(b, c)] = Box(x, y, x + width, yy)
                x += width + len(col_anc - next_anc) * MARGIN
                prev_anc = col_anc
            lanes = len(self.v_count.get((b, len(band)), []))
            self.gaps[(b, len(band))] = (x, x + (lanes + 1) * LANE)
            x += (lanes + 1) * LANE if lanes else 0.0
            self.band_boxes.append(Box(outer, y, x, band_bottom))
            y = band_bottom + BAND_GAP + self.h_count.get(b, 0.0)
        # composed boxes, innermost first: as wide as the columns they hold, as tall as their pieces
        self.boxes: dict[str, Box] = {}
        for c in sorted(self.composed, key=lambda c: -len(list(g.ancestors(c)))):
            box = None
            for p, (px, py) in self.offsets.items():
                if p != TITLE and c in self.composed_ancestors(p):
                    lay = self.layouts[p]
                    col = self.column_boxes[self.where[p][:2]]
                    pb = Box(col.x0, py, col.x1, py + lay.h)
                    box = pb if box is None else box.union(pb)
            for inner, ib in self.boxes.items():
                if g.clusters[inner].parent == c:
                    box = box.union(ib)
            self.boxes[c] = box.grown(MARGIN, MARGIN + label_h[c], MARGIN, self._foot(c))
        self.placed = {p: self.layouts[p].moved(*self.offsets[p]) for p in self.offsets}

    # ------------------------------------------------------------------ 3. routes
    def route_all(self) -> dict[int, tuple[Spline, Optional[Point]]]:
        """The path and label position of every route, by the index of its edge in ``graph.edges``."""
        out = {}
        lane_y: dict[int, float] = {}
        for b, rs in self.h_members.items():
            keys = sorted({self.lane_key(r) for r in rs}, key=lambda k: self._lane_order(k, rs))
            for n, key in enumerate(keys):
                for r in rs:
                    if self.lane_key(r) == key:
                        lane_y[(r.index, b)] = self.band_boxes[b].y1 + BAND_GAP / 2 + LANE * (n + 1)
        self.lane_y = lane_y
        self.v_x: dict[int, float] = {}
        for (b, gap), items in self.v_count.items():
            left, right = self.gaps[(b, gap)]
            lefts = [r for r, side in items if side == "right"]  # enter the column on the gap's left
            rights = [r for r, side in items if side == "left"]  # enter the column on the gap's right
            for k, r in enumerate(lefts):
                self.v_x[r.index] = left + LANE * (k + 1)
            for k, r in enumerate(rights):
                self.v_x[r.index] = right - LANE * (k + 1)
        outer_lane = 0
        for r in self.routes:
            if r.outer:
                outer_lane += 1
                self.v_x[("outer", r.index)] = MARGIN + LANE * (outer_lane - 1)
        self.spread_entries()
        for r in self.routes:
            out[r.index] = self.route(r)
        self.place_compact_remarks(out)
        return out

    def spread_entries(self) -> None:
        """Arrows reaching one side of one box arrive at different heights: the one from the nearest lane
        highest when they come down (lower when they come up), so that none crosses another."""
        self.entry_dy: dict[int, float] = {}
        groups: dict[tuple, list] = {}
        for r in self.routes:
            if r.entry in ("left", "right"):
                groups.setdefault((r.edge.head, r.entry), []).append(r)
        for (head, side), rs in groups.items():
            if len(rs) < 2:
                continue
            node = self.placed[self.piece_of[head]].nodes[head]

            def key(r: Route) -> tuple:
                tail = self.placed[self.piece_of[r.edge.tail]].nodes[r.edge.tail]
                down = tail.y < node.y
                distance = abs(self.v_x.get(r.index, node.x) - node.x)
                return (not down, distance if down else -distance)

            rs.sort(key=key)
            step = min(8.0, (node.h - 6) / (len(rs) - 1))
            for k, r in enumerate(rs):
                self.entry_dy[r.index] = (k - (len(rs) - 1) / 2) * step

    def place_compact_remarks(self, out: dict) -> None:
        """The words of the compact edges into one cluster: stacked, left of the leftmost of their lines."""
        groups: dict[str, list] = {}
        for r in self.routes:
            if r.entry == "box" and r.edge.remark:
                groups.setdefault(r.edge.into, []).append(r)
        for into, rs in groups.items():
            xs = [x for r in rs for x, _ in out[r.index][0].points[-4:]]
            right = min(xs) - 6
            band = self.where[self.piece_of[rs[0].edge.tail]][0]
            bottom = self.band_boxes[band + 1].y0 - 2  # the strip reserved at the foot of the channel
            for k, r in enumerate(reversed(rs)):
                w, h = self.sizes[f"remark:{r.index}"]
                out[r.index] = (out[r.index][0], (right - w / 2, bottom - LABEL_LANE * (k + 0.5)))

    def _lane_order(self, key: tuple, routes: list) -> tuple:
        """Lanes from tails further right lie higher: the buses drop side by side and cross less."""
        tail = key[0]
        lay = self.placed[self.piece_of[tail]]
        return (-lay.nodes[tail].x, key[1], key[2])

    def route(self, r: Route) -> tuple[Spline, Optional[Point]]:
        e = r.edge
        pt, ph = self.piece_of[e.tail], self.piece_of[e.head]
        lt, lh = self.placed[pt], self.placed[ph]
        tail, head = lt.nodes[e.tail], lh.nodes[e.head]
        (bt, _, _), (bh, _, _) = self.where[pt], self.where[ph]
        # the start: a lane out of the piece, or the node itself
        lead: list[Point] = []
        if r.exit == "port":
            lane = lt.lanes_out[r.out_key]
            lead = lane.points
            start = lead[-1]
        elif r.exit == "bottom":
            start = (tail.x, tail.bottom)
        else:  # a side
            start = (tail.x - tail.w / 2, tail.y) if r.exit == "left" else (tail.x + tail.w / 2, tail.y)
            if r.kind == "loop" and self.where[pt][1] == self.where[ph][1]:  # round the column, close by
                self.v_x[r.index] = min(tail.x - tail.w / 2, head.x - head.w / 2) - 2 * LANE
        # the end: a lane into the piece, a side or the top of the node, or a cluster's border
        trail: Optional[Spline] = None
        if r.entry == "port":
            trail = lh.lanes_in[r.in_key]
            end = trail.points[0]
        elif r.entry == "top":
            end = (self._clear_of_labels(head, start[1]), head.top)
        elif r.entry == "left":
            end = (head.x - head.w / 2, head.y + self.entry_dy.get(r.index, 0.0))
        elif r.entry == "right":
            end = (head.x + head.w / 2, head.y + self.entry_dy.get(r.index, 0.0))
        else:  # "box": the top border of the cluster that the compact edge stands for
            box = self.boxes[e.into] if e.into in self.boxes else lh.clusters[e.into][0]
            k = sum(1 for q in self.routes if q.entry == "box" and q.edge.into == e.into and q.index < r.index)
            first = box.x0 + self.sizes.get(e.into, (0.0, 0.0))[0] + 2 * MARGIN + 10  # right of the box's label
            x = max(first + 14 * k, min(start[0] + 14 * k, box.x1 - 20 - 14 * k))  # near the mask, if it can
            end = (min(x, box.x1 - 20 - 14 * k), box.y0)
        path = [start]
        if r.kind == "down":
            y1 = self.lane_y[(r.index, bt)]
            path += [(start[0], y1)]
            if r.outer:
                xo = self.v_x[("outer", r.index)]
                y2 = self.lane_y[(r.index, bh - 1)]
                path += [(xo, y1), (xo, y2)]
                y1 = y2
            if r.entry in ("left", "right"):
                xv = self.v_x[r.index]
                path += [(xv, y1), (xv, end[1]), end]
            else:
                path += [(end[0], y1), end]
        elif r.kind == "stack" and r.entry in ("left", "right"):
            xv = self.v_x[r.index]
            mid = start[1] + STACK_GAP / 2
            path += [(start[0], mid), (xv, mid), (xv, end[1]), end]
        elif r.kind == "stack":  # the jog right under the tail, above the labels of the boxes below
            mid = start[1] + min(6.0, (end[1] - start[1]) / 2)
            path += [(start[0], mid), (end[0], mid), end]
        elif r.exit in ("left", "right"):  # across or round, from the side of the tail
            xv = self.v_x[r.index]
            path += [(xv, start[1]), (xv, end[1]), end]
        else:  # across, or a loop back to an earlier column, under the band or along the foot of its box
            strip = next((c for c, rs in self.loop_strips.items() if r in rs), None)
            if strip is not None:
                k = self.loop_strips[strip].index(r)
                y1 = self.boxes[strip].y1 - MARGIN - LANE * (2 * k + 1)
            else:
                y1 = self.lane_y[(r.index, bt)]
            xv = self.v_x[r.index]
            path += [(start[0], y1), (xv, y1)]
            if r.entry == "port":
                top = self.band_boxes[bh].y0 - LANE
                path += [(xv, top), (end[0], top), end]
            else:
                path += [(xv, end[1]), end]
        path = self._around_labels(_clean(path))
        spline = _rounded(lead, _clean(path), trail, arrow=r.entry != "port" and e.kind not in ("note",),
                          arrowsize=_arrowsize(e))
        label = None
        if e.remark and r.entry != "box":
            label = self._label_point(r, path)
        return spline, label

    def _clear_of_labels(self, head: NodeBox, above: float) -> float:
        """Where to come down onto ``head``: its middle, or right of the labels over it if they are in the way."""
        hits = [L for L in self.label_boxes() if L.x0 - 3 <= head.x <= L.x1 + 3 and above < L.y1 <= head.top + 1]
        if not hits:
            return head.x
        x = max(L.x1 for L in hits) + 8
        return x if x < head.x + head.w / 2 - 8 else head.x

    def label_boxes(self) -> list[Box]:
        """Where every cluster label is: no route may run through the words."""
        if not hasattr(self, "_labels"):
            self._labels = [b for lay in self.placed.values() for b in lay.labels.values()]
            for c, box in self.boxes.items():
                w, h = self.sizes[c]
                self._labels.append(Box(box.x0 + MARGIN, box.y0 + LABEL_PAD, box.x0 + MARGIN + w, box.y0 + LABEL_PAD + h))
        return self._labels

    def _around_labels(self, path: list[Point]) -> list[Point]:
        """A downward run through a cluster's label steps right, past the words, and back below them."""
        out = [path[0]]
        for a, b in zip(path, path[1:]):
            if abs(a[0] - b[0]) < 0.5 and b[1] > a[1]:
                hits = [L for L in self.label_boxes() if L.x0 - 3 <= a[0] <= L.x1 + 3 and L.y1 > a[1] and L.y0 < b[1]]
                below = max((L.y1 for L in hits), default=None)
                if hits and below + 2 * RADIUS < b[1]:
                    x_free = max(L.x1 for L in hits) + 8
                    out += [(x_free, a[1]), (x_free, below + 3), (a[0], below + 3)]
            out.append(b)
        return out

    def _label_point(self, r: Route, path: list[Point]) -> Point:
        """Words on a route go by its last turn, where the reader's eye arrives: beside the last vertical run
        (on the side away from where it came from), or above the last horizontal one."""
        w, h = self.sizes[f"remark:{r.index}"]
        a, b = path[-2], path[-1]
        if abs(a[0] - b[0]) < 0.5:  # vertical
            before = path[-3] if len(path) >= 3 else (a[0] - 1, a[1])
            side = 1 if before[0] <= a[0] else -1
            y = b[1] - min(abs(b[1] - a[1]) / 2, 24)
            return a[0] + side * (w / 2 + 4), y
        x = b[0] - (w / 2 + 6) if b[0] > a[0] else b[0] + w / 2 + 6
        return x, a[1] - h / 2 - 2


def _side_free(lay: PieceLayout, node: str, side: str) -> bool:
    """Whether nothing of the piece (no other node, no edge) lies beside ``node`` on that side."""
    n = lay.nodes[node]
    y0, y1 = n.top - 3, n.bottom + 3
    left, right = n.x - n.w / 2, n.x + n.w / 2
    for k, m in lay.nodes.items():
        if k != node and m.bottom > y0 and m.top < y1 and ((m.x < n.x) if side == "left" else (m.x > n.x)):
            return False
    for spline, _ in lay.edges.values():
        for x, y in spline.points:
            if y0 <= y <= y1 and (x < left - 1 if side == "left" else x > right + 1):
                return False
    return True


def _arrowsize(e: Edge) -> float:
    from .render import STYLE

    kind = "dropped" if e.dropped else e.kind
    return float(STYLE["edge"][kind].get("arrowsize", "1"))


def _clean(path: list[Point]) -> list[Point]:
    """Drop repeated points and points in the middle of a straight run."""
    out: list[Point] = []
    for p in path:
        if out and abs(out[-1][0] - p[0]) < 0.01 and abs(out[-1][1] - p[1]) < 0.01:
            continue
        out.append(p)
    k = 1
    while k < len(out) - 1:
        (ax, ay), (bx, by), (cx, cy) = out[k - 1], out[k], out[k + 1]
        if abs((bx - ax) * (cy - by) - (by - ay) * (cx - bx)) < 0.01:
            del out[k]
        else:
            k += 1
    return out


def _line(a: Point, b: Point) -> list[Point]:
    return [(a[0] + (b[0] - a[0]) / 3, a[1] + (b[1] - a[1]) / 3), (a[0] + 2 * (b[0] - a[0]) / 3,
                                                                    a[1] + 2 * (b[1] - a[1]) / 3), b]


def _rounded(lead: list[Point], path: list[Point], trail: Optional[Spline], arrow: bool, arrowsize: float) -> Spline:
    """Bezier points along ``lead`` (a dot lane), the orthogonal ``path`` with rounded corners, ``trail``.

    With ``arrow`` (and no trail) the path ends at the arrow's base, and the arrow's tip is the path's end.
    """
    end = None
    if trail is not None:
        end = trail.end
    elif arrow and len(path) >= 2:
        (ax, ay), (bx, by) = path[-2], path[-1]
        length = math.hypot(bx - ax, by - ay)
        cut = min(ARROW_LENGTH * arrowsize, length * 0.8)
        end = (bx, by)
        path = path[:-1] + [(bx - (bx - ax) / length * cut, by - (by - ay) / length * cut)]
    points: list[Point] = list(lead) if lead else [path[0]]
    current = points[-1]
    for k in range(1, len(path)):
        target = path[k]
        if k < len(path) - 1:  # a corner at `target`: stop short, curve round
            nxt = path[k + 1]
            r_in = min(RADIUS, math.dist(current, target) / 2)
            r_out = min(RADIUS, math.dist(target, nxt) / 2)
            a = _towards(target, current, r_in)
            b = _towards(target, nxt, r_out)
            points += _line(current, a)
            points += [(a[0] + 2 / 3 * (target[0] - a[0]), a[1] + 2 / 3 * (target[1] - a[1])),
                       (b[0] + 2 / 3 * (target[0] - b[0]), b[1] + 2 / 3 * (target[1] - b[1])), b]
            current = b
        else:
            points += _line(current, target)
            current = target
    if trail is not None:
        points += trail.points[1:]
    return Spline(points, end)


def _towards(a: Point, b: Point, distance: float) -> Point:
    length = math.dist(a, b)
    if length == 0:
        return a
    return a[0] + (b[0] - a[0]) / length * distance, a[1] + (b[1] - a[1]) / length * distance
