"""Diagrams of the Perceiver encoder's layers and mask dataflow: the forward trace as a plain graph model
(:mod:`~npperceiver.viz.encoder_graph`, :mod:`~npperceiver.viz.graph`), written as Graphviz DOT and laid
out by Graphviz's ``dot`` (:mod:`~npperceiver.viz.render`).

In a notebook, :func:`encoder_diagram` is all you need; the ``npperceiver draw-encoder`` command writes the
same pictures to files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from npperceiver.config import PerceiverConfig
from npperceiver.presets import load_preset
from npperceiver.seq2seq import Seq2SeqConfig
from npperceiver.trace import Dim

from .encoder_graph import build_encoder_graph, build_mlm_graph, build_seq2seq_graph
from .render import to_dot

if TYPE_CHECKING:  # pragma: no cover
    import graphviz

MODELS = ("encoder", "mlm", "seq2seq")


def encoder_diagram(config: Union[PerceiverConfig, Seq2SeqConfig, str], *, model: str = "encoder",
                    detail: Optional[str] = None, unroll: bool = False, batch: Dim = "B", seq_len: Dim = "M",
                    masks: bool = True, legend: bool = True) -> "graphviz.Source":
    """The diagram of a config's encoder (or masked language model, or translation model), as a
    ``graphviz.Source``.

    In Jupyter the returned object shows itself inline (it renders with Graphviz's ``dot``); ``.source`` is
    the DOT text, the same as ``npperceiver draw-encoder --format dot`` writes; ``.pipe(format="svg")``
    gives the picture's bytes and ``.render("name", format="png")`` writes a file.

    Parameters
    ----------
    config : a :class:`~npperceiver.config.PerceiverConfig`, or the name of a bundled preset ("small",
        "language-perceiver"); for ``model="seq2seq"``, a :class:`~npperceiver.seq2seq.Seq2SeqConfig`.
    model : "encoder" (HF ``PerceiverModel``), "mlm" (``PerceiverForMaskedLM``: the text preprocessor,
        the encoder, the decoder and the logits) or "seq2seq" (the translation model,
        ``npperceiver.seq2seq.PerceiverSeq2Seq``: the encoder, either decoder and the loss).
    detail : "op" (a box per operation) or "layer" (each layer's steps between its masks); None: "op" up to
        8 drawn layers, "layer" beyond, and always "layer" for the MLM and the translation model.
    unroll : draw every application of the self-attention block, not the block once.
    batch, seq_len : numbers for B and M in the shapes, or letters to keep them symbolic.
    masks : draw the three masks and where each acts.
    legend : draw the legend beside the title.

    Raises ``ValueError`` for an unknown model, preset or detail, or a config the MLM cannot run.

    Example
    -------
    >>> import npperceiver as npp
    >>> from npperceiver.viz import encoder_diagram
    >>> diagram = encoder_diagram(npp.load_preset("small"), detail="layer")
    >>> diagram.source.startswith("digraph encoder")
    True
    """
    import graphviz  # lazily, like every use of Graphviz in npperceiver

    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    name = f"{config}.json" if isinstance(config, str) else ""
    config = load_preset(config) if isinstance(config, str) else config
    options = dict(unroll=unroll, batch=batch, seq_len=seq_len, masks=masks, name=name)
    if (model == "seq2seq") != isinstance(config, Seq2SeqConfig):
        raise ValueError(f"model 'seq2seq' draws a Seq2SeqConfig, and only it; got model {model!r} and a "
                         f"{type(config).__name__}")
    if model == "seq2seq":
        graph = build_seq2seq_graph(config, detail=detail or "layer", **options)
    elif model == "mlm":
        graph = build_mlm_graph(config, detail=detail or "layer", **options)
    else:
        graph = build_encoder_graph(config, detail=detail, **options)
    return graphviz.Source(to_dot(graph, legend=legend))
