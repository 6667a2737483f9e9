"""Attention heatmaps: what the masks do to the numbers of a real forward pass.

The diagrams (``encoder_graph.py``) show *where* each mask enters; this module shows *what it does*. It
reads the attention probabilities a model returns with ``output_attentions=True`` -- HF's
``attentions`` / ``cross_attentions``, reproduced by npperceiver -- and builds a plain figure model,
:class:`AttentionMap`: one :class:`Panel` per head, queries down and keys across, with

* the key columns an additive mask removed (``attention_mask`` in the cross-attention, ``latent_mask`` in
  the self-attention layers), marked as masked, not merely low;
* the factor ``head_mask`` multiplied into each head (self-attention only; HF QUIRK: layer ``i`` of every
  block reads row ``i``);
* the rows whose every key is masked, where HF's softmax is uniform over all keys, padding included;
* notes for the masks that were passed but do not act in this layer, and why (HF drops them).

Tests inspect the figure model without drawing. :func:`attention_table` prints it as text;
:func:`attention_figure` draws it with matplotlib (imported lazily: ``pip install npperceiver[plot]``) and
returns the ``matplotlib.figure.Figure``, which a notebook displays inline; :func:`render_attention` gives
its svg, png or pdf bytes.

>>> import numpy as np, npperceiver as npp
>>> from npperceiver.viz.attention import attention_map
>>> config = npp.load_preset("small")
>>> model = npp.PerceiverModel.init(config, seed=0)
>>> keep = [[1, 1, 1, 0, 0]]
>>> out = model(np.ones((1, 5, config.d_model), np.float32), attention_mask=keep, output_attentions=True)
>>> amap = attention_map(out, config, "cross", attention_mask=keep)
>>> amap.masked_keys, [p.head for p in amap.panels]
((3, 4), [0, 1])

Layers are named as on the command line (``npperceiver draw-attention --layer``): ``cross`` (the encoder's
cross-attention, ``cross_attentions[0]``), ``self:I`` or ``self:I:block J`` (``encoder.self_attends.I`` in
its J-th application, ``attentions[(J - 1) * S + I]``) and ``decoder`` (``PerceiverForMaskedLM``'s decoding
cross-attention, ``cross_attentions[1]``). The translation model (``npperceiver.seq2seq``, its config a
``Seq2SeqConfig``) has the encoder's ``cross`` and ``self`` layers too, and its decoder's: ``decoder`` or
``decoder:J`` (a decoder cross-attention, target positions down and latents across, ``cross_attentions[1 +
J]``) and ``causal`` or ``causal:J`` (the autoregressive decoder's causal self-attention, the future
positions of every row marked as masked, ``decoder_attentions[J]``). A new kind of attention is one more
entry in :data:`LAYER_KINDS`.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from npperceiver.config import PerceiverConfig
from npperceiver.masks import check_keep_mask, get_head_mask
from npperceiver.seq2seq import Seq2SeqConfig
from npperceiver.tasks import NUM_TARGET_SPECIALS, Vocabulary
from npperceiver.text import MLM_DECODER_HEADS
from npperceiver.tokenizer import NUM_SPECIAL_TOKENS, SPECIAL_TOKENS

#: What ``pip`` needs to draw: the error message a missing matplotlib gets.
INSTALL_HINT = "pip install 'npperceiver[plot]' (or pip install matplotlib)"
#: Output formats :func:`render_attention` writes.
FORMATS = ("svg", "png", "pdf")


# ---------------------------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class LayerKind:
    """One kind of attention a model returns: where its probabilities are, and which masks act on it.

    ``key_mask`` names the keyword argument whose zeros remove keys here (``None``: no mask acts);
    ``head_mask`` says whether ``head_mask`` scales its heads. ``dropped`` maps each mask that is passed to
    the model but does *not* act here to HF's reason. ``heads(config)`` is its number of heads;
    ``probs(outputs, layer, config)`` returns the (B, H, Q, K) probabilities, or raises ``ValueError`` when
    the outputs have no such layer.
    """

    kind: str
    what: str  # "latents attend to the inputs"
    queries: str  # what the rows are: "latents", "output queries"
    keys: str  # what the columns are: "inputs", "latents"
    key_mask: Optional[str]
    head_mask: bool
    dropped: dict = field(default_factory=dict)
    heads: Callable[[PerceiverConfig], int] = None  # type: ignore[assignment]
    probs: Callable[[Any, "AttentionLayer", PerceiverConfig], np.ndarray] = None  # type: ignore[assignment]


@dataclass(frozen=True)
class AttentionLayer:
    """A layer named as ``--layer`` names it: ``kind`` "cross", "self" or "decoder"; for "self" the index
    ``index`` of ``encoder.self_attends`` and the application ``block`` (1-based, as ``explain`` counts). In
    the translation model also "decoder_cross" and "decoder_self", ``index`` the decoder layer."""

    kind: str
    index: Optional[int] = None
    block: Optional[int] = None

    @property
    def name(self) -> str:
        """The name ``--layer`` takes: "cross", "self:1:block 2", "decoder"; "decoder:0", "causal:0"."""
        if self.kind in _DECODER_NAMES:
            return f"{_DECODER_NAMES[self.kind]}:{self.index}"
        return f"self:{self.index}:block {self.block}" if self.kind == "self" else self.kind

    def module(self, config: Union[PerceiverConfig, Seq2SeqConfig]) -> str:
        """The HF module computing this attention, with its application for a repeated self layer."""
        if self.kind in _DECODER_NAMES:  # the translation model's decoder
            if config.decoder == "queries":
                return "decoder.decoding_cross_attention"
            return f"decoder.layers.{self.index}.{'cross' if self.kind == 'decoder_cross' else 'self'}_attention"
        config = _encoder(config)
        if self.kind == "self":
            blocks = f", block {self.block} of {config.num_blocks}" if config.num_blocks > 1 else ""
            return f"encoder.self_attends.{self.index}{blocks}"
        return LAYER_MODULES[self.kind]

    def slug(self) -> str:
        """A file-name friendly form: "cross", "self1-block2", "decoder"; "decoder0", "causal0"."""
        if self.kind in _DECODER_NAMES:
            return f"{_DECODER_NAMES[self.kind]}{self.index}"
        return f"self{self.index}-block{self.block}" if self.kind == "self" else self.kind


#: The translation decoder's kinds of attention, by the name ``--layer`` gives them.
_DECODER_NAMES = {"decoder_cross": "decoder", "decoder_self": "causal"}
_DECODER_RE = re.compile(r"^\s*(decoder|causal)\s*(?::\s*(\d+)\s*)?$", re.I)


def _encoder(config: Union[PerceiverConfig, Seq2SeqConfig]) -> PerceiverConfig:
    """The encoder's config: the config itself, or a translation model's ``encoder``."""
    return config.encoder if isinstance(config, Seq2SeqConfig) else config


LAYER_MODULES = {"cross": "encoder.cross_attention", "decoder": "decoder.decoding_cross_attention"}
_LAYER_RE = re.compile(r"^\s*self\s*:\s*(\d+)\s*(?::\s*(?:block\s*)?(\d+)\s*)?$", re.I)


def parse_layer(name: str, config: Union[PerceiverConfig, Seq2SeqConfig]) -> AttentionLayer:
    """``"cross"``, ``"decoder"``, ``"self:I"`` (block 1) or ``"self:I:block J"`` (also ``"self:I:J"``),
    checked against ``config``: ``I`` in 0..S-1 and ``J`` in 1..num_blocks. ``ValueError`` otherwise.

    With a translation model's ``Seq2SeqConfig``: ``"decoder"`` or ``"decoder:J"`` is the cross-attention
    of decoder layer J (default 0), ``"causal"`` or ``"causal:J"`` its causal self-attention (the
    autoregressive decoder's only); ``"cross"`` and ``"self:..."`` are the encoder's layers."""
    text = str(name).strip()
    if isinstance(config, Seq2SeqConfig):
        match = _DECODER_RE.match(text)
        if match:
            return _decoder_layer(name, match[1].lower(), int(match[2] or 0), config)
        config = config.encoder
    elif text.lower().startswith("causal"):
        raise ValueError(f"layer {name!r} does not exist: only the translation model's decoder has a causal "
                         "self-attention (--model seq2seq)")
    if text.lower() in ("cross", "decoder"):
        return AttentionLayer(text.lower())
    match = _LAYER_RE.match(text)
    if not match:
        raise ValueError(f"layer {name!r} is not one of cross, self:I, self:I:block J, decoder")
    S, NB = config.num_self_attends_per_block, config.num_blocks
    index, block = int(match[1]), int(match[2]) if match[2] else 1
    if index >= S:
        raise ValueError(f"layer {name!r} does not exist: self-attention layers are self:0 .. self:{S - 1} "
                         f"(num_self_attends_per_block = {S})")
    if not 1 <= block <= NB:
        raise ValueError(f"layer {name!r} does not exist: blocks are 1 .. {NB} (num_blocks = {NB})")
    return AttentionLayer("self", index, block)


def _decoder_layer(name: str, which: str, index: int, config: Seq2SeqConfig) -> AttentionLayer:
    """A layer of the translation decoder, checked: it has ``num_decoder_layers`` of them, and the
    queries decoder one cross-attention and no self-attention."""
    if which == "causal" and config.decoder == "queries":
        raise ValueError(f"layer {name!r} does not exist: the queries decoder has no self-attention (its output "
                         "queries read the latents once: --layer decoder)")
    L = config.num_decoder_layers
    if index >= L:
        raise ValueError(f"layer {name!r} does not exist: the decoder has {L} layer{'s' * (L != 1)} "
                         f"({which}:0 .. {which}:{L - 1})")
    return AttentionLayer("decoder_cross" if which == "decoder" else "decoder_self", index)


def _attentions(outputs: Any, name: str) -> tuple:
    found = getattr(outputs, name, None)
    if found is None:
        raise ValueError(f"the outputs carry no {name}: call the model with output_attentions=True")
    return found


def _cross_probs(outputs: Any, layer: AttentionLayer, config: PerceiverConfig) -> np.ndarray:
    return _attentions(outputs, "cross_attentions")[0]  # (B, Hc, N, M)


def _self_probs(outputs: Any, layer: AttentionLayer, config: PerceiverConfig) -> np.ndarray:
    S = _encoder(config).num_self_attends_per_block
    return _attentions(outputs, "attentions")[(layer.block - 1) * S + layer.index]


def _decoder_probs(outputs: Any, layer: AttentionLayer, config: PerceiverConfig) -> np.ndarray:
    cross = _attentions(outputs, "cross_attentions")
    if len(cross) < 2:
        raise ValueError("layer 'decoder' does not exist in this model: PerceiverModel has no decoder (the masked "
                         "language model's decoding cross-attention is cross_attentions[1])")
    return cross[1]  # (B, 8, P, N)


def _target_cross_probs(outputs: Any, layer: AttentionLayer, config: Seq2SeqConfig) -> np.ndarray:
    return _attentions(outputs, "cross_attentions")[1 + layer.index]  # (B, Hd, T, N), after the encoder's


def _causal_probs(outputs: Any, layer: AttentionLayer, config: Seq2SeqConfig) -> np.ndarray:
    return _attentions(outputs, "decoder_attentions")[layer.index]  # (B, Hd, T, T)


_NO_HEAD_MASK = "head_mask never reaches a cross-attention: HF passes head_mask=None to it"
_SOURCE_MASK_DONE = ("the source mask does not act here: it acted once, in the encoder's cross-attention; the "
                     "decoder reads only the latents")

#: Every kind of attention a ``--layer`` can name. The translation model's decoder cross-attention, once it
#: exists, is one more entry: what its rows and columns are, which masks act, and where its outputs keep it.
LAYER_KINDS: dict[str, LayerKind] = {
    "cross": LayerKind(
        "cross", "latents attend to the inputs", "latents", "inputs", key_mask="attention_mask", head_mask=False,
        dropped={"latent_mask": "latent_mask does not act here: the cross-attention replaces the encoder's "
                                "attention_mask with inputs_mask (HF)",
                 "head_mask": _NO_HEAD_MASK},
        heads=lambda config: config.num_cross_attention_heads, probs=_cross_probs),
    "self": LayerKind(
        "self", "latents attend to latents", "latents", "latents", key_mask="latent_mask", head_mask=True,
        dropped={"attention_mask": "attention_mask does not act here: HF's PerceiverModel passes "
                                   "attention_mask=None to every self-attention layer; it acted once, in the "
                                   "cross-attention"},
        heads=lambda config: config.num_self_attention_heads, probs=_self_probs),
    "decoder": LayerKind(
        "decoder", "output queries attend to the latents", "output positions", "latents", key_mask=None,
        head_mask=False,
        dropped={"attention_mask": "attention_mask does not act here: HF hands it to the decoder as query_mask, "
                                   "which its cross-attention drops (no mask in the decoder)",
                 "head_mask": "head_mask never reaches the decoder: HF passes it to the encoder only"},
        heads=lambda config: MLM_DECODER_HEADS, probs=_decoder_probs),
    # the translation model's decoder (npperceiver.seq2seq), its config a Seq2SeqConfig
    "decoder_cross": LayerKind(
        "decoder_cross", "target positions attend to the latents", "target positions", "latents", key_mask=None,
        head_mask=False, dropped={"attention_mask": _SOURCE_MASK_DONE},
        heads=lambda config: config.num_decoder_heads, probs=_target_cross_probs),
    "decoder_self": LayerKind(
        "decoder_self", "target positions attend to earlier ones (causal)", "target positions",
        "target positions", key_mask=None, head_mask=False, dropped={"attention_mask": _SOURCE_MASK_DONE},
        heads=lambda config: config.num_decoder_heads, probs=_causal_probs),
}


# ---------------------------------------------------------------------------------------------- the figure model
@dataclass(frozen=True)
class Panel:
    """One head of one example: ``probs`` (Q, K) as the model returned them, queries down, keys across.

    ``head_scale`` is the factor ``head_mask`` multiplied into this head (1.0: not scaled), read from
    ``head_mask_entry`` ("head_mask[0][1]": row 0, head 1), None where no head mask acts.
    """

    head: int
    probs: np.ndarray
    head_scale: float = 1.0
    head_mask_entry: Optional[str] = None

    @property
    def scaled(self) -> bool:
        """Did ``head_mask`` change this head (a factor other than 1)?"""
        return self.head_scale != 1.0

    @property
    def title(self) -> str:
        """"head 1", or "head 1 × 0 (head_mask[0][1])" for a scaled head."""
        if not self.scaled:
            return f"head {self.head}"
        return f"head {self.head} × {_number(self.head_scale)} ({self.head_mask_entry})"


@dataclass(frozen=True)
class AttentionMap:
    """The figure model: one layer's attention for one example, one panel per head drawn.

    ``masked_keys`` are the key columns removed by ``masked_by`` (an additive mask: each gets exactly 0 in
    a row with any key kept); ``uniform_rows`` the query rows whose every key is masked, where HF's softmax
    gives every key 1/K (padding included). ``notes`` are the sentences a reader needs beside the picture:
    what HF does in the all-masked rows, and which passed masks do not act here and why.
    """

    layer: str  # "cross", "self:1:block 2", "decoder"
    module: str  # "encoder.self_attends.1, block 2 of 2"
    what: str  # "latents attend to latents"
    example: int  # the batch row shown
    num_heads: int  # heads the layer has (panels may show fewer)
    query_name: str  # "latents"
    key_name: str  # "inputs"
    query_labels: tuple[str, ...]
    key_labels: tuple[str, ...]
    panels: tuple[Panel, ...]
    masked_keys: tuple[int, ...] = ()
    masked_by: Optional[str] = None
    uniform_rows: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    hidden_queries: int = 0  # query rows left out (the MLM decoder's positions past the text)
    future_masked: bool = False  # a causal self-attention: every key after its query is masked (causal_mask)

    @property
    def shape(self) -> tuple[int, int]:
        """(Q, K): queries down, keys across."""
        return len(self.query_labels), len(self.key_labels)

    @property
    def masked_cells(self) -> np.ndarray:
        """(Q, K) bool: True in every cell of a masked key column, and in a causal self-attention in every
        cell whose key comes after its query (the same in every panel)."""
        cells = np.zeros(self.shape, bool)
        cells[:, list(self.masked_keys)] = True
        if self.future_masked:
            cells |= np.triu(np.ones(self.shape, bool), k=1)
        return cells

    @property
    def vmax(self) -> float:
        """Top of the colour scale: the largest probability drawn (at least 1e-6, so a silenced head still
        has a scale)."""
        return max(1e-6, max(float(p.probs.max()) for p in self.panels))

    @property
    def title(self) -> str:
        """"encoder.cross_attention: latents attend to the inputs (example 0)"."""
        return f"{self.module}: {self.what} (example {self.example})"


def attention_map(
    outputs: Any,
    config: Union[PerceiverConfig, Seq2SeqConfig],
    layer: Union[str, AttentionLayer] = "cross",
    *,
    head: Union[int, str] = "all",
    example: int = 0,
    attention_mask: Optional[Any] = None,
    head_mask: Optional[Any] = None,
    latent_mask: Optional[Any] = None,
    tokens: Optional[Sequence[str]] = None,
    target_tokens: Optional[Sequence[str]] = None,
) -> AttentionMap:
    """Build the figure model of one layer's attention from a model's outputs.

    Parameters
    ----------
    outputs : what ``PerceiverModel``, ``PerceiverForMaskedLM`` or ``PerceiverSeq2Seq`` returned with
        ``output_attentions=True``.
    config : the model's config (a ``Seq2SeqConfig`` for the translation model).
    layer : "cross", "self:I", "self:I:block J" or "decoder" (see :func:`parse_layer`).
    head : a head index, or "all" for one panel per head.
    example : the batch row to show.
    attention_mask, head_mask, latent_mask : the masks the model was called with (the outputs do not
        record them): (B, M), (Hs,) or (L, Hs), (B, N). They say which cells are masked and which heads
        scaled; a mask that does not act in ``layer`` adds a note saying why.
    tokens : one label per input (e.g. :func:`token_labels`): the key labels of the cross-attention and
        the query labels of the MLM decoder (output position i predicts token i).
    target_tokens : the translation decoder's: one label per target position (e.g.
        :func:`target_token_labels`), the query labels of its layers and the key labels of the causal one.
    """
    ref = parse_layer(layer, config) if isinstance(layer, str) else layer
    kind = LAYER_KINDS[ref.kind]
    if ref.kind not in _DECODER_NAMES:  # the encoder's layers (or the MLM's): read with the encoder's config
        config = _encoder(config)
    probs = np.asarray(kind.probs(outputs, ref, config))  # (B, H, Q, K)
    B, H, Q, K = probs.shape
    if isinstance(example, bool) or not isinstance(example, (int, np.integer)) or not 0 <= example < B:
        raise ValueError(f"example {example!r} does not exist: the batch has {B} row{'s' * (B != 1)} (0 .. {B - 1})")
    heads = select_heads(head, ref, config, H)
    M = _attentions(outputs, "cross_attentions")[0].shape[-1]  # the inputs' length, whatever the layer
    if tokens is not None and len(tokens) != M:
        raise ValueError(f"tokens has {len(tokens)} labels but the inputs are {M} long")
    if target_tokens is not None and ref.kind in _DECODER_NAMES and len(target_tokens) != Q:
        raise ValueError(f"target_tokens has {len(target_tokens)} labels but the decoder has {Q} target positions")
    given = {"attention_mask": attention_mask, "latent_mask": latent_mask, "head_mask": head_mask}

    # Which keys the additive mask acting here removes, for this example.
    masked_keys: tuple[int, ...] = ()
    if kind.key_mask is not None and given[kind.key_mask] is not None:
        keep = check_keep_mask(given[kind.key_mask], kind.key_mask, (B, K),
                               "(B, M)" if kind.keys == "inputs" else "(B, N)")
        masked_keys = tuple(int(k) for k in np.flatnonzero(keep[example] == 0))

    # The factor head_mask multiplies into each head: row ref.index, whatever the block.
    scales = np.ones(H, np.float32)
    row = None
    if kind.head_mask and head_mask is not None:
        rows = get_head_mask(head_mask, H, config.num_self_attention_layers)  # (L, 1, Hs, 1, 1)
        scales = rows[ref.index, 0, :, 0, 0]  # (Hs,)
        row = ref.index
    one_dim = head_mask is not None and np.ndim(head_mask) == 1
    panels = tuple(
        Panel(h, probs[example, h], float(scales[h]),
              None if row is None else (f"head_mask[{h}]" if one_dim else f"head_mask[{row}][{h}]"))
        for h in heads)

    # Rows and labels: the MLM decoder shows the output positions of the text only.
    hidden = 0
    if ref.kind == "decoder":
        hidden, Q = Q - M, M
        panels = tuple(Panel(p.head, p.probs[:M], p.head_scale, p.head_mask_entry) for p in panels)
    uniform_rows = tuple(range(Q)) if len(masked_keys) == K else ()  # a key mask is the same for every query
    tokens = tuple(tokens) if tokens is not None else tuple(str(m) for m in range(M))
    query_labels = tokens if ref.kind == "decoder" else tuple(str(q) for q in range(Q))
    key_labels = tokens if kind.keys == "inputs" else tuple(str(k) for k in range(K))
    if ref.kind in _DECODER_NAMES and target_tokens is not None:
        query_labels = tuple(target_tokens)
        key_labels = tuple(target_tokens) if ref.kind == "decoder_self" else key_labels

    notes = _notes(kind, ref, config, given, masked_keys, uniform_rows, K, panels, hidden)
    if ref.kind in _DECODER_NAMES and target_tokens is not None:  # what the row labels are
        notes += (("rows: the output queries, each labelled with the target token it predicts",)
                  if config.decoder == "queries" else
                  ("rows: the decoder's input, [BOS] then the target shifted right (teacher forcing); row t "
                   "predicts the token of row t + 1",))
    # PerceiverForMaskedLM and PerceiverSeq2Seq hold the encoder (and the MLM its decoder) as ``perceiver``
    prefix = "perceiver." if hasattr(outputs, "logits") and ref.kind not in _DECODER_NAMES else ""
    return AttentionMap(
        layer=ref.name, module=prefix + ref.module(config), what=kind.what, example=int(example), num_heads=H,
        query_name=kind.queries, key_name=kind.keys, query_labels=query_labels, key_labels=key_labels,
        panels=panels, masked_keys=masked_keys,
        masked_by="causal_mask" if ref.kind == "decoder_self" else kind.key_mask if masked_keys else None,
        uniform_rows=uniform_rows, notes=notes, hidden_queries=hidden, future_masked=ref.kind == "decoder_self")


def select_heads(head: Union[int, str], layer: AttentionLayer, config: Union[PerceiverConfig, Seq2SeqConfig],
                 num_heads: Optional[int] = None) -> list[int]:
    """The heads ``head`` names in ``layer``: all of them for "all", else the one index, checked
    (``ValueError`` for a head the layer does not have). ``num_heads`` defaults to the config's."""
    if layer.kind not in _DECODER_NAMES:
        config = _encoder(config)
    H = LAYER_KINDS[layer.kind].heads(config) if num_heads is None else num_heads
    module = layer.module(config)
    if isinstance(head, str) and head.strip().lower() == "all":
        return list(range(H))
    try:
        h = int(head)
    except (TypeError, ValueError):
        raise ValueError(f"head {head!r} is not a head index or 'all'") from None
    if isinstance(head, bool) or not 0 <= h < H:
        raise ValueError(f"head {head!r} does not exist: {module} has {H} heads (0 .. {H - 1})")
    return [h]


def _notes(kind: LayerKind, ref: AttentionLayer, config: PerceiverConfig, given: dict, masked_keys: tuple,
           uniform_rows: tuple, K: int, panels: tuple, hidden: int) -> tuple[str, ...]:
    """The sentences printed under the picture, in reading order."""
    notes = []
    if kind.kind == "decoder_self":
        notes.append("masked cells (causal_mask): a key after its query gets float32's minimum, so softmax gives "
                     "it exactly 0; row t reads positions 0..t only. Target padding needs no mask of its own: after "
                     "[EOS], the causal mask hides it from every real position")
    elif kind.kind == "decoder_cross":
        notes.append("no mask: every latent is real; the source reaches the decoder only through these latents")
    if uniform_rows:
        notes.append(f"every key is masked ({kind.key_mask} all 0 in this example): HF adds float32's minimum to "
                     f"every score, so softmax is uniform, 1/{K} = {_number(1 / K)} for every key, masked ones "
                     f"included (HF's behaviour: not NaN, not 0)")
    elif masked_keys:
        notes.append(f"masked keys ({kind.key_mask} = 0): float32's minimum is added to their scores, "
                     f"so softmax gives them exactly 0")
    for p in panels:
        if p.scaled:
            effect = "silenced: every probability is exactly 0" if p.head_scale == 0 else \
                f"probabilities multiplied by {_number(p.head_scale)} after softmax"
            notes.append(f"head {p.head}: {p.head_mask_entry} = {_number(p.head_scale)}, {effect}")
    if kind.head_mask and given["head_mask"] is not None and np.ndim(given["head_mask"]) == 2:
        S, L = config.num_self_attends_per_block, config.num_self_attention_layers
        if L > S:
            notes.append(f"head_mask row {ref.index} serves self_attends.{ref.index} in every block (HF quirk): "
                         f"rows {S} .. {L - 1} are never read")
    for mask, why in kind.dropped.items():
        if given[mask] is not None:
            notes.append(why)
    if kind.key_mask == "latent_mask" and given["latent_mask"] is None:
        notes.append("no key is masked here: HF's PerceiverModel has no latent mask (npperceiver's latent_mask "
                     "would act here)")
    if hidden:
        notes.append(f"output positions {len(panels[0].probs)} .. {len(panels[0].probs) + hidden - 1} (past the "
                     f"text) are not shown; their queries are the same learned positions, whatever the text")
    return tuple(notes)


def _number(x: float) -> str:
    """0, 0.5, 1.5, 0.2, 0.0625 -- short, exact where it can be."""
    return f"{x:.4g}"


# ---------------------------------------------------------------------------------------------- labels
def target_token_labels(target_ids: Sequence[int], vocab: Vocabulary) -> tuple[str, ...]:
    """A label per target id of the translation task (``npperceiver.tasks``): ``[PAD]``, ``[BOS]``,
    ``[EOS]``, or the word or digit."""
    specials = ("[PAD]", "[BOS]", "[EOS]")
    return tuple(specials[i] if i < NUM_TARGET_SPECIALS else vocab.tokens[i - NUM_TARGET_SPECIALS]
                 for i in map(int, target_ids))


def token_labels(input_ids: Sequence[int]) -> tuple[str, ...]:
    """A short label per token id: ``[CLS]`` for a special token, the character for a printable byte
    (``␣`` for a space), ``\\xc3`` for any other byte."""
    labels = []
    for token_id in input_ids:
        token_id = int(token_id)
        if token_id < NUM_SPECIAL_TOKENS:
            labels.append(SPECIAL_TOKENS[token_id])
            continue
        byte = token_id - NUM_SPECIAL_TOKENS
        labels.append("␣" if byte == 32 else chr(byte) if 32 < byte < 127 else f"\\x{byte:02x}")
    return tuple(labels)


# ---------------------------------------------------------------------------------------------- text
def attention_table(amap: AttentionMap, decimals: int = 3) -> str:
    """The figure model as text: a heading, one table per panel (queries down, keys across, ``x`` after a
    masked key's label), and the notes. What ``draw-attention --format text`` prints."""
    Q, K = amap.shape
    marked = set(amap.masked_keys)
    heads = "all heads" if len(amap.panels) == amap.num_heads else f"{len(amap.panels)} of {amap.num_heads} heads"
    lines = [f"{amap.title}, {heads}",
             f"rows: {Q} {amap.query_name} (queries); columns: {K} {amap.key_name} (keys)"
             + (f"; x = masked by {amap.masked_by}" if amap.masked_keys or amap.future_masked else "")]
    lines += [f"note: {n}" for n in amap.notes]
    headers = [label + ("x" if k in marked else "") for k, label in enumerate(amap.key_labels)]
    width = max([decimals + 2, *map(len, headers)])
    row_width = max(map(len, amap.query_labels))
    for panel in amap.panels:
        lines += ["", panel.title]
        lines.append(" " * row_width + "".join(f" {h:>{width}}" for h in headers))
        future = amap.masked_cells if amap.future_masked else np.zeros(amap.shape, bool)
        for label, row, masked in zip(amap.query_labels, panel.probs, future):
            lines.append(f"{label:>{row_width}}" + "".join(f" {'x':>{width}}" if m else f" {p:>{width}.{decimals}f}"
                                                             for p, m in zip(row, masked)))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- drawing
def require_matplotlib():
    """matplotlib's Figure and patches, imported on first use; ``ImportError`` saying how to install it."""
    try:
        from matplotlib import patches
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"drawing attention needs matplotlib, which is not installed: {INSTALL_HINT}") from e
    return Figure, patches


#: Colours: the heatmap's map, masked columns' hatching, a scaled head's title, callouts.
CMAP = "viridis"
MASKED_COLOUR = "#e8452c"
SCALED_COLOUR = "#b35900"
CELL = 0.22  # inches per row or column, where the panel has room
LABEL_SPACING = 0.12  # inches a tick label needs: longer axes label every k-th row or column


def attention_figure(amap_or_outputs: Union[AttentionMap, Any], config: Optional[PerceiverConfig] = None,
                     layer: Union[str, AttentionLayer] = "cross", **options: Any):
    """Draw an :class:`AttentionMap` with matplotlib and return the ``matplotlib.figure.Figure``.

    Pass an :class:`AttentionMap`, or a model's outputs with the arguments of :func:`attention_map`
    (``config``, ``layer``, ``head=``, ``example=``, the masks, ``tokens=``). In a notebook the returned
    figure displays inline. Needs matplotlib (``pip install npperceiver[plot]``).
    """
    if isinstance(amap_or_outputs, AttentionMap):
        amap = amap_or_outputs
    else:
        if config is None:
            raise ValueError("attention_figure(outputs, config, layer, ...) needs the model's config")
        amap = attention_map(amap_or_outputs, config, layer, **options)
    Figure, patches = require_matplotlib()

    Q, K = amap.shape
    n = len(amap.panels)
    ncols = n if n <= 2 else 2 if n <= 4 else 4
    nrows = math.ceil(n / ncols)
    # a quarter inch per cell where it fits; a panel within 4.2 in (3.2 in a grid), the figure within ~12 in
    side = 4.2 if n == 1 else 3.2
    panel_w = min(max(1.9, K * CELL), side, 12.0 / ncols - 0.8)
    panel_h = min(max(1.5, Q * CELL), side)
    width = max(ncols * (panel_w + 0.8) + 1.2, 0.09 * len(amap.title) + 0.6)  # the title fits at 10 pt
    chars = max(60, int(width * 15))  # note characters per line at 7.5 pt
    notes = [_wrap(f"• {n}", chars) for n in amap.notes]
    marked = amap.masked_keys or amap.future_masked  # masked cells to hatch and explain
    notes_h = 0.16 * sum(n.count("\n") + 1 for n in notes) + (0.3 if marked else 0.0) + 0.1
    plots_h = nrows * (panel_h + 0.95) + 0.7
    fig = Figure(figsize=(width, plots_h + notes_h), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[plots_h, notes_h])
    axes = top.subplots(nrows, ncols, squeeze=False)
    vmax = amap.vmax
    image = None
    for ax, panel in zip(axes.flat, amap.panels):
        image = ax.imshow(panel.probs, cmap=CMAP, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
        for k in amap.masked_keys:  # hatch the masked key columns, over whatever value they hold
            ax.add_patch(patches.Rectangle((k - 0.5, -0.5), 1, Q, fill=False, hatch="////",
                                           edgecolor=MASKED_COLOUR, linewidth=0.0))
        if amap.future_masked:  # a causal self-attention: in row q, the cells of the keys after q
            for q in range(min(Q, K - 1)):
                ax.add_patch(patches.Rectangle((q + 0.5, q - 0.5), K - 1 - q, 1, fill=False, hatch="////",
                                               edgecolor=MASKED_COLOUR, linewidth=0.0))
        if amap.uniform_rows:
            ax.text((K - 1) / 2, (Q - 1) / 2,
                    f"every key masked:\nuniform 1/{K} = {_number(panel.head_scale / K)}\n(HF's behaviour)",
                    ha="center", va="center", fontsize=8,
                    bbox=dict(boxstyle="round", facecolor="white", edgecolor=MASKED_COLOUR, alpha=0.9))
        ax.set_title(panel.title, fontsize=9, color=SCALED_COLOUR if panel.scaled else "black",
                     fontweight="bold" if panel.scaled else "normal")
        _ticks(ax, amap, panel_w, panel_h)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    bar = top.colorbar(image, ax=axes, shrink=0.9 if nrows > 1 else 1.0, pad=0.02)
    bar.set_label("attention probability", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    top.suptitle(f"{amap.title}\nqueries ({amap.query_name}) down, keys ({amap.key_name}) across", fontsize=10)
    y = 1.0
    if marked:
        what = "masked: a later position (causal_mask)" if amap.future_masked else \
            f"masked key ({amap.masked_by} = 0)"
        bottom.legend(handles=[patches.Patch(facecolor="white", edgecolor=MASKED_COLOUR, hatch="////", label=what)],
                      loc="upper left", bbox_to_anchor=(0.0, 1.0), fontsize=8, frameon=False)
        y -= 0.3 / notes_h
    if notes:
        bottom.text(0.012, y, "\n".join(notes), ha="left", va="top", fontsize=7.5, color="#333333",
                    linespacing=1.3)
    return fig


def _ticks(ax, amap: AttentionMap, width: float, height: float) -> None:
    """Label every row and column, or every k-th one where a panel of ``width`` x ``height`` inches has no
    room for all; masked keys' labels in the mask colour."""
    Q, K = amap.shape
    ystep = math.ceil(Q / max(1, int(height / LABEL_SPACING)))
    xstep = math.ceil(K / max(1, int(width / LABEL_SPACING)))
    ax.set_yticks(range(0, Q, ystep), [amap.query_labels[q] for q in range(0, Q, ystep)], fontsize=7)
    xs = list(range(0, K, xstep))
    ax.set_xticks(xs, [amap.key_labels[k] for k in xs], fontsize=7)
    for k, label in zip(xs, ax.get_xticklabels()):
        if len(amap.key_labels[k]) > (2 if K > 12 else 4):  # long labels stand up; bytes stay readable
            label.set_rotation(90)
        if k in amap.masked_keys:
            label.set_color(MASKED_COLOUR)
            label.set_fontweight("bold")
    ax.set_xlabel(amap.key_name, fontsize=8)
    ax.set_ylabel(amap.query_name, fontsize=8)
    ax.tick_params(length=2, pad=1)


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "  " + word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


def render_attention(amap: AttentionMap, fmt: str) -> bytes:
    """The drawing of ``amap`` as ``fmt`` ("svg", "png" or "pdf") bytes, reproducible: no date in the file,
    a fixed salt for SVG ids. Needs matplotlib."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    fig = attention_figure(amap)
    import matplotlib  # loaded by attention_figure; here for its rc settings

    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}, "png": {}}[fmt]
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "npperceiver", "svg.fonttype": "path"}):
        fig.savefig(buffer, format=fmt, dpi=150 if fmt == "png" else 100, metadata=metadata)
    return buffer.getvalue()
