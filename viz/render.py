"""Graph model -> Graphviz DOT -> SVG, PNG or PDF, laid out by Graphviz's own ``dot``.

This module owns every style and the markup of every label; the words come from the graph, and so from
the trace. :func:`to_dot` writes plain DOT text (no Graphviz program needed): what ``--format dot`` writes,
what the golden files hold, and exactly what :func:`render` hands to ``dot -T<format>``, so every format
shows the same picture.

``dot`` is reliable at ranks: it puts the layers one under the other in the order they run. What it may
get wrong, on some versions, is the left-to-right order of separate things side by side (Graphviz 2.42
and 2.43 mirror side-by-side groups). So whatever stands side by side is one node: each table of the
model (a layer, its three projections, the masks) is one HTML-like label whose parts are ports, and the
tables that read nothing (the inputs, the masks, ...) are sections of one node on top, :data:`BAND`.
"""

from __future__ import annotations

import html
import shutil
import signal
import subprocess
import textwrap
import xml.etree.ElementTree as ET
from typing import Optional

from .graph import Cluster, Edge, Graph, Node

FONT = "Helvetica,Arial,sans-serif"
#: Point sizes: at 96 dpi a point is 1.33 px, so the smallest text (9 pt) is 12 px tall.
TITLE_SIZE, SUBTITLE_SIZE, TEXT_SIZE, SMALL_SIZE = 17, 10, 10, 9
GREY, SHAPE_COLOR, NOTE_COLOR = "#555555", "#2F6DB0", "#7A5C00"

#: The one table of styles: the graph, boxes by kind, edges by kind, masks by family, the block's frame.
STYLE: dict = {
    "graph": dict(rankdir="TB", newrank="true", compound="true", nodesep="0.25", ranksep="0.12",
                  fontname=FONT, fontsize=str(TEXT_SIZE), labelloc="t", labeljust="l", pad="0.15", bgcolor="white"),
    "node_defaults": dict(fontname=FONT, fontsize=str(TEXT_SIZE), margin="0.05,0.02", height="0.2", width="0.3",
                          penwidth="1.2"),
    "edge_defaults": dict(fontname=FONT, fontsize=str(SMALL_SIZE), arrowsize="0.7", labeldistance="2.5",
                          labelangle="-25"),
    "node": {
        "tensor": dict(shape="box", style="rounded,filled,bold", fillcolor="#DCEBFA", color="#2F6DB0"),
        "parameter": dict(shape="cylinder", style="filled", fillcolor="#FFF1C7", color="#B8860B"),
        "operation": dict(shape="box", style="rounded,filled", fillcolor="#FFFFFF", color="#7A7A7A"),
        "mask": dict(shape="box", style="rounded,filled,dashed", fillcolor="#FFFFFF", color="#7A7A7A"),
        "table": dict(shape="plain", style="rounded", fillcolor="#F4F4F4", color="#9A9A9A"),
    },
    "edge": {
        "data": dict(color="#3C3C3C", penwidth="1.2"),
        "marked": dict(color="#3C3C3C", fontcolor="#3C3C3C", penwidth="2.6"),  # a data edge with words on it
        "loop": dict(color="#2F6DB0", fontcolor="#2F6DB0", penwidth="2.2", constraint="false"),
        "mask": dict(style="dashed", penwidth="1.6", weight="0"),
        "dropped": dict(style="dotted", penwidth="1.6", arrowhead="tee", weight="0"),
        "compact": dict(style="dashed", penwidth="2.6", weight="0"),
    },
    #: One colour per mask family, for its sources, its edges and the steps applying it (Okabe-Ito colours,
    #: told apart with colour-blindness and in grey).
    "mask": {"inputs_mask": dict(color="#D55E00", fill="#FCE6D8"),
             "attention_mask": dict(color="#009E73", fill="#D9F2EA"),
             "head_mask": dict(color="#CC79A7", fill="#F7E3EF"),
             # the translation model's: the decoder's causal mask, the target's padding (into the loss)
             "causal_mask": dict(color="#0072B2", fill="#DCEBF7"),
             "target_padding": dict(color="#E69F00", fill="#FCEFD2")},
    "cluster": {"block": dict(fontname=FONT, fontsize=str(TEXT_SIZE), labeljust="l", margin="8", style="rounded",
                              color="#2F6DB0", penwidth="2.2"),
                # the translation model's encoder and decoder
                "part": dict(fontname=FONT, fontsize=str(TITLE_SIZE - 4), labeljust="l", margin="10",
                             style="rounded,dashed", color="#7A7A7A", penwidth="1.6")},
}

#: What the legend says about each style, in order: (what, style key, mask family or None, text).
LEGEND = (
    ("node", "tensor", None, "tensor"), ("node", "parameter", None, "learned weights"),
    ("node", "operation", None, "operation"), ("node", "mask", None, "mask"),
    ("node", "operation", "inputs_mask", "a mask acts here"),
    ("node", "table", None, "a module: its steps"),
    ("cluster", "block", None, "self-attention block: same weights each time"),
    ("cluster", "part", None, "the encoder, the decoder"),
    ("edge", "data", None, "data"),
    ("edge", "marked", None, "data, where the text says"),
    ("edge", "loop", None, "block applied again"), ("edge", "dropped", None, "HF drops the mask here"),
    ("edge", "compact", None, "into a block: its every layer"),
    ("edge", "mask", "inputs_mask", "attention_mask → inputs_mask"),
    ("edge", "mask", "attention_mask", "latent_mask → the encoder's attention_mask"),
    ("edge", "mask", "head_mask", "head_mask, row i → layer i"),
    ("edge", "mask", "causal_mask", "causal mask → each decoder self-attention"),
    ("edge", "mask", "target_padding", "target padding → the loss (label -100)"),
)
_GLYPHS = {"data": "──▶", "marked": "━━▶", "loop": "━━▶", "mask": "╌╌▶", "dropped": "┈┈┤",
           "compact": "╍╍▶"}


# ---------------------------------------------------------------------------- DOT
def to_dot(graph: Graph, legend: bool = True) -> str:
    """The DOT text of ``graph``, deterministic: what ``dot`` lays out and draws, and what ``--format dot``
    writes."""
    import graphviz  # lazily: building and testing graph models needs no Graphviz

    dot = graphviz.Digraph("encoder", graph_attr=STYLE["graph"], node_attr=STYLE["node_defaults"],
                           edge_attr=STYLE["edge_defaults"])
    dot.attr(label=_title(graph, legend))
    band = _band(graph)
    if band:  # the tables reading nothing: sections of one node, side by side, on top
        sections = "\n".join(f'<TD VALIGN="TOP">{_table_label(graph, graph.nodes[t])[1:-1]}</TD>' for t in band)
        dot.node(BAND, f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>{sections}</TR></TABLE>>',
                 shape="plain")

    def fill(parent, cluster_id) -> None:
        for c in graph.child_clusters(cluster_id):
            with parent.subgraph(name=c.id) as sub:
                sub.attr(label=_cluster_label(c), **STYLE["cluster"][c.role])
                fill(sub, c.id)
        for n in graph.nodes_in(cluster_id):
            if n.id not in band:
                parent.node(n.id, _table_label(graph, n) if n.kind == "table" else _box_label(n), **_node_attrs(n))

    fill(dot, None)
    tables = _tables(graph)
    first = next((n.id for n in graph.nodes_in(None) if n.kind == "table" and n.id not in band), None)
    if band and first:  # the layers under the middle of the band, not under one end of it
        dot.edge(BAND, first, style="invis", weight="3")
    for n in graph.nodes_in(None):  # op detail: a result stands beside the layer that makes it, saving a rank
        made_by = {tables.get(e.tail, e.tail) for e in graph.edges_into(n.id)}
        if graph.detail == "op" and n.kind != "table" and len(made_by) == 1 and graph.nodes[min(made_by)].label:
            dot.body.append(f'\t{{rank=same; "{min(made_by)}" "{n.id}"}}\n')
    for e in (e for e in graph.edges if drawn(graph, e)):
        bend = e.kind == "data" and tables.get(e.tail) in band and graph.detail != "op"  # room to come down
        dot.edge(*_ends(graph, e, tables, band), **_edge_attrs(e), **({"minlen": "2"} if bend else {}))
    return dot.source


#: The DOT node holding every table that reads nothing (the inputs, the masks, ...), side by side.
BAND = "@sources"


def _band(graph: Graph) -> list[str]:
    """The top-level tables that read nothing, drawn side by side in one node (:data:`BAND`), in order; the
    masks on the side where they enter the steps applying them (:func:`_mask_side`)."""
    band = [n for n in graph.nodes_in(None) if n.kind == "table" and not _fed(graph, n)]
    masks = [n.id for n in band if all(graph.nodes[p].kind == "mask" for row in n.parts for p in row)]
    target = [n.id for n in band if n.id == "target/group"]  # the translation model's target: by the decoder
    others = [n.id for n in band if n.id not in masks + target]
    return (masks + others if _mask_side(graph) == "w" else others + masks) + target


def _mask_side(graph: Graph) -> str:
    """Where a mask enters the step applying it: from the left in op detail (a layer's second column
    stands at the right of its steps), from the right in layer detail."""
    return "w" if graph.detail == "op" else "e"


def _tables(graph: Graph) -> dict[str, str]:
    """Part id -> the id of the table holding it."""
    return {p: t.id for t in graph.nodes.values() for row in t.parts for p in row}


def drawn(graph: Graph, e: Edge) -> bool:
    """Whether the edge is drawn: not inside one table (its rows and arrows say it), and not a residual (it
    adds a layer's own input back, and the box adding it says so)."""
    tables = _tables(graph)
    return tables.get(e.tail, e.tail) != tables.get(e.head, e.head) and e.kind != "residual"


def _fed(graph: Graph, n: Node) -> bool:
    """Whether anything flows into the node (a table: into any of its parts) from outside it."""
    ids = {p for row in n.parts for p in row} or {n.id}
    return any(e.head in ids and e.tail not in ids for e in graph.edges)


def _ends(graph: Graph, e: Edge, tables: dict, band: list) -> tuple[str, str]:
    """Where an edge starts and ends. A layer's output leaves from its foot; its inputs enter its first row
    from above; a mask enters the step applying it from one side; a part of the band (:data:`BAND`) leaves
    from the band's foot, or from its left or right side, when it touches it; the loop goes round on the
    right."""
    tail, head = tables.get(e.tail), tables.get(e.head)
    if e.kind == "loop":
        return f"{tail}:e", f"{head}:e"
    if tail is None:
        start = e.tail
    elif tail not in band:  # out of a layer: its foot
        start = tail
    else:  # out of the band: from its foot, or its left or right side, whichever the part touches
        rows = graph.nodes[tail].parts
        row = next(r for r in rows if e.tail in r)
        side = (":s" if row is rows[-1] else ":w" if tail == band[0] and e.tail == row[0] else
                ":e" if tail == band[-1] and e.tail == row[-1] else "")
        start = f"{BAND}:{_port(e.tail)}{side}"
    if head is None:
        return start, e.head
    first = graph.nodes[head].parts[0]
    return start, f"{head}:{_port(e.head)}:{'n' if e.head in first and not e.into else _mask_side(graph)}"


def _port(part_id: str) -> str:
    """The port of a part: its id with dots for slashes (a layer's parts, or every source's in one node)."""
    return part_id.replace("/", ".")


def _node_attrs(n: Node) -> dict:
    attrs = {"shape": "plain"} if n.kind == "table" else dict(STYLE["node"][n.kind])
    if n.mask is not None and n.kind != "table":
        attrs.update(color=STYLE["mask"][n.mask]["color"], fillcolor=STYLE["mask"][n.mask]["fill"])
        if n.kind == "operation":  # the step applying a mask: framed in that mask's colour
            attrs.update(penwidth="2.4")
    tooltip = " · ".join(x for x in (n.module, n.shape) if x)
    return {**attrs, **({"tooltip": tooltip} if tooltip else {})}


def _edge_style(e: Edge) -> str:
    """The key of an edge's style in ``STYLE["edge"]``: a dropped or compact mask edge, a data edge with words
    on it (the latents entering the translation decoder), else its kind."""
    return ("dropped" if e.dropped else "compact" if e.into else "marked" if e.kind == "data" and e.remark
            else e.kind)


def _edge_attrs(e: Edge) -> dict:
    """An edge's style; its words by its head (an edge label would double every rank's height). Mask edges
    weigh nothing: the layers stand under the inputs they read, not pulled towards the masks."""
    attrs = dict(STYLE["edge"][_edge_style(e)])
    if e.mask is not None:
        attrs.update(color=STYLE["mask"][e.mask]["color"], fontcolor=STYLE["mask"][e.mask]["color"])
    if e.remark and e.kind == "data":  # the one data edge with words: a label of its own, in bold, given room
        attrs["label"] = f"<<B>{_esc(e.remark)}</B>>"
    elif e.remark:  # by the arrow's end; a compact edge's end is inside the block, so by its middle
        attrs["xlabel" if e.into else "headlabel"] = f"<{_esc(e.remark)}>"
    if e.into is not None:
        attrs["lhead"] = e.into
    if e.label:
        attrs["tooltip"] = e.label
    return attrs


# ---------------------------------------------------------------------------- labels
def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _pack(items, width: int) -> list[str]:
    """Items joined by " · " into lines of at most ``width`` characters; a longer item is wrapped."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 3 + len(item) <= width:
            lines[-1] += " · " + item
        else:
            lines += textwrap.wrap(item, width) or [""]
    return lines


def _small(lines, color: str = GREY, italic: bool = False) -> str:
    body = "".join(f'{_esc(line)}&#160;<BR ALIGN="LEFT"/>' for line in lines)  # a space: Graphviz's widths are short
    if not body:
        return ""
    return f'<FONT POINT-SIZE="{SMALL_SIZE}" COLOR="{color}">{f"<I>{body}</I>" if italic else body}</FONT>'


def _rows(n: Node, width: int) -> str:
    """A box's label rows: its name and, right-aligned, its output shape; what it computes in small grey
    (after the name when that fits on one line); HF's quirks in italics."""
    lines = _pack(n.lines, width)
    head = '<BR ALIGN="LEFT"/>'.join(f"<B>{_esc(t)}</B>" for t in _pack(n.label.split(" · "), width + 16))
    if len(lines) == 1 and len(n.label) + len(lines[0]) <= width:  # one line: name, then what it computes
        head += f' <FONT POINT-SIZE="{SMALL_SIZE}" COLOR="{GREY}">{_esc(lines.pop())}</FONT>'
    shape = (f'<TD ALIGN="RIGHT" VALIGN="TOP"><FONT COLOR="{SHAPE_COLOR}">&#160;&#160;{_esc(n.shape)}&#160;</FONT></TD>'
             if n.shape else "")
    rows = [f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{head}</TD>{shape}</TR>']
    span = ' COLSPAN="2"' if shape else ""
    for text, color, italic in ((lines, GREY, False), (_pack(n.notes, width + 8), NOTE_COLOR, True)):
        if text:
            rows.append(f'<TR><TD ALIGN="LEFT" BALIGN="LEFT"{span}>{_small(text, color, italic)}</TD></TR>')
    return "".join(rows)


def _box_label(n: Node) -> str:
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{_rows(n, 56)}</TABLE>>'


def _part(n: Node, width: int) -> str:
    """A part of a table: a box of its own, styled by its kind (and mask), its port named after it."""
    style = {**STYLE["node"][n.kind], **({} if n.mask is None else {"color": STYLE["mask"][n.mask]["color"],
                                                                     "fillcolor": STYLE["mask"][n.mask]["fill"]})}
    border = "2" if n.mask and n.kind == "operation" else "1"
    dashed = ",dashed" if "dashed" in style["style"] else ""
    return (f'<TABLE PORT="{_port(n.id)}" STYLE="rounded{dashed}" BORDER="{border}" CELLBORDER="0" CELLSPACING="0" '
            f'CELLPADDING="1" COLOR="{style["color"]}" BGCOLOR="{style["fillcolor"]}">{_rows(n, width)}</TABLE>')


def _table_label(graph: Graph, t: Node) -> str:
    """A table: its title, then its parts row by row, side by side, an arrow between neighbours when one
    feeds the other. When its first row takes inputs from outside (a layer), the title stands at the left
    of that row, so the inputs can enter from above; a tall table (a layer in op detail) shows the rest
    of its rows in two columns, read down the left one, then the right one."""
    first_fed = any(e.head in t.parts[0] and drawn(graph, e) for e in graph.edges)

    def feeds(a, b) -> Optional[Edge]:
        return next((e for e in graph.edges if (e.tail, e.head) == (a, b)), None)

    def arrow(e: Edge, glyph: str) -> str:
        return f'<TD><FONT COLOR="{STYLE["mask"][e.mask]["color"] if e.mask else GREY}">{glyph}</FONT></TD>'

    def cells(row) -> str:
        out = ""
        for a, b in zip((None, *row), row):
            if feeds(a, b):
                out += arrow(feeds(a, b), "▶")
            width = 70 if first_fed and len(row) == 1 else 40 if first_fed else 46 if graph.detail == "op" else 30
            out += f"<TD>{_part(graph.nodes[b], width)}</TD>"
        return out

    def stack(rows, head: str = "") -> str:
        """Rows one under the other: a grid when all are alike (but in a layer), else each row a table of its
        own; outside a layer, an arrow down between two rows when each box feeds the one under it."""
        grid = len({len(r) for r in rows}) == 1 and not head and not first_fed
        body = ""
        for above, row in zip((None, *rows), rows):
            down = [feeds(a, b) for a, b in zip(above or (), row)]
            if above and all(down) and not first_fed:
                arrows = "".join(arrow(e, "▼") for e in down)
                body += f"<TR>{arrows}</TR>" if grid else (f'<TR><TD ALIGN="LEFT"><TABLE BORDER="0" CELLSPACING="0" '
                                                           f'CELLPADDING="0"><TR>{arrows}</TR></TABLE></TD></TR>')
            body += (f"<TR>{cells(row)}</TR>\n" if grid else  # a line per row: readable DOT, and diffs
                     f'<TR><TD ALIGN="LEFT"><TABLE BORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>'
                     f'{head if above is None else ""}{cells(row)}</TR></TABLE></TD></TR>\n')
        return f'<TABLE BORDER="0" CELLSPACING="3" CELLPADDING="0">{body}</TABLE>'

    style = STYLE["node"]["table"]
    heading = '<BR ALIGN="LEFT"/>'.join(_esc(line) for line in textwrap.wrap(t.label, 48))
    title = f'<B>{heading}</B><BR ALIGN="LEFT"/>{_small(_pack(t.lines, 160 if graph.detail == "op" else 52))}'
    if first_fed:  # the title beside the first row
        rest = t.parts[1:]
        half = (len(rest) + 1) // 2 if len(rest) > 6 else len(rest)
        columns = "".join(f'<TD VALIGN="TOP">{stack(c)}</TD>' for c in (rest[:half], rest[half:]) if c)
        head = f'<TD ALIGN="LEFT" BALIGN="LEFT" VALIGN="TOP">{title}</TD>'
        body = f'<TR><TD ALIGN="LEFT">{stack(t.parts[:1], head)}</TD></TR>'
        if rest:
            body += f'<TR><TD><TABLE BORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>{columns}</TR></TABLE></TD></TR>'
    else:  # the title on top
        body = f'<TR><TD ALIGN="LEFT" BALIGN="LEFT">{title}</TD></TR><TR><TD>{stack(t.parts)}</TD></TR>'
    return (f'<<TABLE STYLE="rounded" BORDER="1" COLOR="{style["color"]}" BGCOLOR="{style["fillcolor"]}" '
            f'CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">{body}</TABLE>>')


def _cluster_label(c: Cluster) -> str:
    """A block's frame: its title and, beside it, what it is."""
    return f'<<B>{_esc(c.label)}</B> {_small(_pack(c.lines, 100))}>'


def _title(graph: Graph, legend: bool) -> str:
    """The title and subtitle lines, and the legend: beside them in op detail, under them in layer detail."""
    lines = "".join(f'<FONT POINT-SIZE="{SUBTITLE_SIZE}" COLOR="#444444">{_esc(s)}</FONT><BR ALIGN="LEFT"/>'
                    for s in graph.subtitle)
    title = (f'<TD ALIGN="LEFT" VALIGN="TOP" BALIGN="LEFT"><FONT POINT-SIZE="{TITLE_SIZE}"><B>{_esc(graph.title)}'
             f'</B></FONT><BR ALIGN="LEFT"/>{lines}</TD>')
    if not legend:
        return f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="2"><TR>{title}</TR></TABLE>>'
    key = f'<TD ALIGN="LEFT" VALIGN="TOP">{legend_table(graph)}</TD>'
    if graph.detail == "op":  # beside the title: the drawing is wide and must stay short
        return f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="2"><TR>{title}<TD WIDTH="20"></TD>{key}</TR></TABLE>>'
    return f'<<TABLE BORDER="0" CELLSPACING="0" CELLPADDING="2"><TR>{title}</TR><TR>{key}</TR></TABLE>>'


def legend_rows(graph: Graph) -> list[tuple]:
    """The legend's entries for the styles ``graph`` draws, and only those; the padding mask named as the
    model names it (the translation model's ``source_mask``)."""
    used = {("node", n.kind, None) for n in graph.nodes.values()}
    used |= {("node", "operation", "inputs_mask") for n in graph.boxes() if n.kind == "operation" and n.mask}
    for e in (e for e in graph.edges if drawn(graph, e)):
        style = _edge_style(e)
        used |= {("edge", style, e.mask if style == "mask" else None), ("edge", "mask", e.mask)}
    used |= {("cluster", c.role, None) for c in graph.clusters.values()}
    given = graph.nodes["masks/attention_mask"].label if "masks/attention_mask" in graph.nodes else "attention_mask"
    rename = ("attention_mask → inputs_mask", f"{given} → inputs_mask")  # the padding mask, as the model names it
    return [(*row[:3], row[3].replace(*rename)) for row in LEGEND if row[:3] in used]


def legend_table(graph: Graph) -> str:
    """The legend, seven to a row (layer detail: three): a small box for each box style and the block's
    frame, a glyph for each edge style, then what a box shows."""
    cells = []
    for what, key, family, text in legend_rows(graph):
        label = f'<FONT POINT-SIZE="{SMALL_SIZE}">{_esc(text)}</FONT>'
        if what == "edge":
            color = STYLE["mask"][family]["color"] if family else STYLE["edge"][key].get("color", GREY)
            glyph = f'<FONT POINT-SIZE="{SMALL_SIZE}" COLOR="{color}">{_GLYPHS[key]}</FONT>'
            cells.append(f'<TD ALIGN="LEFT">{glyph} {label}</TD>')
            continue
        style = STYLE["node"][key] if what == "node" else STYLE["cluster"][key]
        color, fill = style.get("color", GREY), style.get("fillcolor", "#FFFFFF")
        if family is not None:
            color, fill = STYLE["mask"][family]["color"], STYLE["mask"][family]["fill"]
        dashed = ' STYLE="dashed"' if "dashed" in style.get("style", "") else ""
        cells.append(f'<TD BORDER="{2 if what == "cluster" or family else 1}" COLOR="{color}" BGCOLOR="{fill}"'
                     f'{dashed}>{label}</TD>')
    per_row = 7 if graph.detail == "op" else 3  # op detail: wide and short; layer detail: narrow
    rows = "".join(f"<TR>{''.join(cells[i:i + per_row])}</TR>" for i in range(0, len(cells), per_row))
    key = (f'<TR><TD ALIGN="LEFT" COLSPAN="{per_row}"><FONT POINT-SIZE="{SMALL_SIZE}">in a box: <B>name</B> what it '
           f'computes <FONT COLOR="{SHAPE_COLOR}">(its output shape)</FONT>, <FONT COLOR="{NOTE_COLOR}"><I>HF\'s '
           f'quirks</I></FONT></FONT></TD></TR>')
    return f'<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="1">{rows}{key}</TABLE>'


# ---------------------------------------------------------------------------- pictures
FORMATS = ("svg", "png", "pdf", "dot")
_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


class RenderError(RuntimeError):
    """Graphviz's ``dot`` is missing, failed, or wrote something that is not a picture (one-line message)."""


def dot_available() -> bool:
    """Whether Graphviz's ``dot`` program is on the PATH (needed for svg, png and pdf)."""
    return shutil.which("dot") is not None


def render(dot_source: str, fmt: str) -> bytes:
    """DOT text -> the bytes of an ``fmt`` file, laid out and drawn by ``dot -T<fmt>``; "dot" returns the
    text itself. :class:`RenderError` when ``dot`` is missing, fails, is killed, or writes no picture."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "dot":
        return dot_source.encode("utf-8")
    program = shutil.which("dot")
    if program is None:
        raise RenderError("Graphviz's `dot` program is not on PATH")
    try:
        done = subprocess.run([program, f"-T{fmt}"], input=dot_source.encode("utf-8"), capture_output=True)
    except OSError as e:
        raise RenderError(f"cannot run {program}: {e.strerror or e}") from None
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if done.returncode < 0:
        number = -done.returncode
        name = signal.Signals(number).name if number in signal.valid_signals() else "unknown"
        raise RenderError(f"`dot` was killed by signal {number} ({name})")
    if done.returncode:
        raise RenderError(f"`dot` failed (exit code {done.returncode})" + (f": {said[0]}" if said else ""))
    if not _is_picture(done.stdout, fmt):
        raise RenderError(f"`dot` wrote no {fmt} picture" + (f": {said[0]}" if said else ""))
    return done.stdout


def _is_picture(data: bytes, fmt: str) -> bool:
    if fmt != "svg":
        return data.startswith(_MAGIC[fmt])
    try:
        return ET.fromstring(data).tag.endswith("svg")
    except ET.ParseError:
        return False
