"""The forward pass, step by step: every operation of ``PerceiverModel`` and ``PerceiverForMaskedLM`` in the
order HF transformers 4.57.6 runs it, with the shape it produces -- computed from the config, never from arrays.

``encoder_steps`` and ``mlm_steps`` return a small dataflow program: each :class:`Step` names the HF module
it mirrors, what it computes, its output shape, the steps whose outputs it reads and the mask acting there.
``npperceiver explain`` prints it as a table and ``npperceiver.viz`` turns it into a diagram; a test executes
it with npperceiver's own functions and reproduces the model's outputs, so both agree with the model by
construction. The trace is also the one place that words each step and each group of steps
(:func:`scope_title`): the table and the drawing read their labels from here.

It sits above the models it traces: widths come from ``PerceiverConfig`` (``dims.py``), the MLM decoder's
fixed widths from ``text.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple, Union

from .config import PerceiverConfig
from .dims import AttentionDims
from .seq2seq import Seq2SeqConfig
from .text import MLM_DECODER_HEADS, check_mlm_config, decoder_attention_dims

Dim = Union[int, str]  # a size, or a letter standing for one ("B" batch, "M" inputs) when not given
Shape = Tuple[Dim, ...]

#: Kinds of step: data the user passes in, a learned parameter, a mask (given or derived), an operation,
#: and the encoder's result.
STEP_KINDS = ("input", "parameter", "mask", "op", "output")
#: The most self-attention layers (num_blocks x num_self_attends_per_block) a trace lists, about 20 steps
#: each. Real configs have tens (language-perceiver: 26); a typo such as num_blocks=10**9 would otherwise
#: build steps until memory runs out.
MAX_TRACED_LAYERS = 10_000


@dataclass(frozen=True)
class Step:
    """One step of the encoder's forward pass, as HF transformers 4.57.6 runs it.

    ``inputs`` are the ids of the earlier steps whose outputs this one reads (its data); ``residual`` is the
    id of the step added back by a residual connection; ``mask_source`` is the id of the step that produces
    the mask acting here, and ``mask`` says which mask that is, by the name the encoder gives it.
    """

    id: str  # unique and path-like: "cross/query", "block1/self0/softmax", "masks/inputs_mask"
    module: str  # the HF module (or method) it mirrors: "encoder.cross_attention.attention.self.query"
    name: str  # a short name for a box or a table row: "query", "softmax", "+ inputs_mask"
    op: str  # what it computes, with this config's sizes: "Linear 32 -> 24"
    shape: Shape  # the shape of its output
    axes: Tuple[str, ...]  # what each output axis is: ("B", "N", "D"), ("B", "Hs", "N", "N"), ...
    kind: str  # one of STEP_KINDS
    inputs: Tuple[str, ...] = ()  # ids of the steps whose outputs it reads
    residual: Optional[str] = None  # id of the step added back by a residual connection
    mask: Optional[str] = None  # "inputs_mask", "attention_mask" or "head_mask[i]" where a mask acts
    mask_source: Optional[str] = None  # id of the step producing that mask
    block: Optional[int] = None  # which application of the self-attention block (0 .. num_blocks-1)
    layer: Optional[int] = None  # index of the self-attention layer within the block (HF self_attends[i])
    note: str = ""  # what a learner should know here (HF quirks)

    @property
    def scope(self) -> str:
        """The group the step belongs to: "inputs", "masks", "cross", "block{b}/self{i}" or "output"; in the
        MLM trace also "text", "decoder_query", "decoder" and "embedding_decoder"."""
        return self.id.rsplit("/", 1)[0]


def scope_title(step: Step, config: Union[PerceiverConfig, Seq2SeqConfig], model: str = "encoder", *,
                rolled: bool = False, masks: bool = True) -> str:
    """A one-line title for the group of steps ``step`` belongs to (:attr:`Step.scope`), as the ``explain``
    table heads each group and the diagram titles each group. ``model`` is "encoder" or "mlm"; a
    :class:`Seq2SeqConfig` titles the steps of :func:`seq2seq_steps` (whatever ``model`` says).

    A layer's title is its HF module, a colon, then what it does. ``rolled=True`` words a self-attention
    layer for every block at once (a drawing of the block drawn once), without "block b of num_blocks";
    ``masks=False`` leaves out which masks act in a layer (a drawing without the masks).
    """
    scope = step.scope
    if isinstance(config, Seq2SeqConfig):
        return _seq2seq_title(step, config, rolled, masks)
    if scope == "inputs":
        return "inputs and the latent array"
    if scope == "masks":
        if model == "mlm":
            return "the masks, as PerceiverModel.forward prepares them (PerceiverForMaskedLM takes no latent mask)"
        return ("the masks: attention_mask and head_mask as PerceiverModel.forward prepares them; latent_mask is "
                "npperceiver's (HF's PerceiverModel has none: it passes attention_mask=None to its encoder)")
    if scope == "cross":
        return "encoder.cross_attention: latents attend to the inputs" + (" (inputs_mask only)" if masks else "")
    if scope == "text":
        return "perceiver.input_preprocessor: token and position embeddings (PerceiverTextPreprocessor)"
    if scope == "decoder_query":
        return "perceiver.decoder: the output queries, the same for every input"
    if scope == "decoder":
        return (f"perceiver.decoder.decoding_cross_attention: output queries attend to the latents "
                f"({MLM_DECODER_HEADS} heads{', no mask' if masks else ''})")
    if scope == "embedding_decoder":
        return "embedding_decoder: logits with the token embedding, transposed (tied by use)"
    if scope == "output":
        return "the encoder's result" if model == "mlm" and step.id.endswith("last_hidden_state") else "result"
    acting = f"head_mask[{step.layer}]"
    if model == "encoder":
        acting += ", and npperceiver's latent_mask as attention_mask: HF passes attention_mask=None here"
    where = "" if rolled else f", block {step.block + 1} of {config.num_blocks}"
    return (f"encoder.self_attends.{step.layer}{where}: latents attend "
            f"to latents ({acting + '; ' if masks else ''}same weights in every block)")


def _seq2seq_title(step: Step, config: Seq2SeqConfig, rolled: bool, masks: bool) -> str:
    scope, enc, Hd = step.scope, config.encoder, config.num_decoder_heads
    auto = config.decoder == "autoregressive"
    heads = f"{Hd} head{'s' * (Hd != 1)}"
    titles = {
        "source": "perceiver.input_preprocessor: the source bytes, embedded (PerceiverTextPreprocessor)",
        "inputs": "perceiver.embeddings: the latent array",
        "masks": "the masks: source_mask, the encoder's attention_mask" + (", and the decoder's causal mask"
                                                                           if auto else ""),
        "cross": "encoder.cross_attention: latents attend to the source bytes" + (" (inputs_mask)" if masks else ""),
        "target": ("the target: tokens, [EOS], then [PAD]" if auto else
                   "the target: read by the loss only (the queries decoder never sees it)"),
        "decoder_inputs": "decoder.embeddings: the target, shifted right (teacher forcing), with its positions",
        "queries": "decoder.output_position_encodings: the output queries, the same for every example",
        "decoding": f"decoder.decoding_cross_attention: the output queries attend to the latents ({heads}, no mask)",
        "head": "decoder.layernorm, decoder.lm_head: a score for each target token",
        "loss": "the loss: mean cross-entropy" + (", the target padding left out" if masks else ""),
    }
    if scope in titles:
        return titles[scope]
    if scope == "output":
        return "the encoder's result: the latents" if step.id.endswith("last_hidden_state") else "result"
    if scope.endswith("/self") and scope.startswith("decoder"):
        j = scope[len("decoder"):-len("/self")]
        return (f"decoder.layers.{j}.self_attention: target positions attend to earlier ones "
                f"({'causal_mask, ' if masks else ''}{heads}; no MLP)")
    if scope.endswith("/cross") and scope.startswith("decoder"):
        j = scope[len("decoder"):-len("/cross")]
        return f"decoder.layers.{j}.cross_attention: target positions attend to the latents ({heads}, no mask)"
    where = "" if rolled or enc.num_blocks == 1 else f", block {step.block + 1} of {enc.num_blocks}"
    return f"encoder.self_attends.{step.layer}{where}: latents attend to latents (no mask; same weights in every block)"


def part_title(config: Seq2SeqConfig, part: str) -> tuple[str, str]:
    """The title of the translation model's ``part`` ("encoder" or "decoder") and a line saying what it does,
    as the drawing frames each part."""
    enc, L = config.encoder, config.num_decoder_layers
    if part == "encoder":
        return ("perceiver: the Perceiver encoder",
                f"reads the source once, into N = {enc.num_latents} latents whatever its length")
    if config.decoder == "autoregressive":
        return ("decoder: autoregressive (T5-like)",
                f"{L} layer{'s' * (L != 1)}: causal self-attention, then cross-attention to the latents and an MLP")
    return ("decoder: output queries (Perceiver IO)",
            f"T = {config.max_target_length} learned queries read the latents once and predict every position")


def block_title(config: PerceiverConfig, block: Optional[int] = None) -> str:
    """The title of a group of ``num_self_attends_per_block`` self-attention layers: one application of the
    block (``block`` = 0 .. num_blocks-1), or the block drawn once for all of them (``block=None``)."""
    S, NB = config.num_self_attends_per_block, config.num_blocks
    layers = f"encoder.self_attends.0-{S - 1}" if S > 1 else "encoder.self_attends.0"
    if block is not None:
        return f"{layers}, block {block + 1} of {NB}"
    if NB == 1:
        return f"{layers}: the self-attention block, applied once (num_blocks = 1)"
    return f"{layers}: the self-attention block, applied num_blocks = {NB} times with the same weights"


def mask_label(mask: Optional[str]) -> str:
    """How a table names the mask acting at a step (:attr:`Step.mask`): the latent self-attention's
    ``attention_mask`` says where it comes from, because HF's ``PerceiverModel`` never passes one."""
    if mask == "attention_mask":
        return "attention_mask (= latent_mask; HF: None)"
    return mask or ""


def _check_size(name: str, value: Dim, letter: str) -> Dim:
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name} must be a positive integer or a letter such as {letter!r}, got ''")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer or a letter such as {letter!r}, got {value!r}")
    return value


def format_shape(shape: Shape) -> str:
    """``(B, M, 24)`` -- how shapes are written in tables and diagrams (``(262,)`` for one axis)."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def encoder_steps(config: PerceiverConfig, batch: Dim = "B", seq_len: Dim = "M", *,
                  latent_mask: bool = True, head_mask: bool = True) -> list[Step]:
    """Every step of HF ``PerceiverModel.forward`` through the encoder, in order, with its output shape.

    ``batch`` (B) and ``seq_len`` (M) are sizes, or letters to leave them symbolic; every other size comes
    from ``config``. The trace covers, in order:

    * the sources: ``inputs`` (B, M, C), the latent array (N, D) broadcast to (B, N, D), and the three
      masks with what the model makes of them -- ``attention_mask`` (B, M) -> ``inputs_mask``
      (B, 1, 1, M), ``latent_mask`` (B, N) -> the encoder's ``attention_mask`` (B, 1, 1, N), ``head_mask``
      (L, Hs) -> (L, 1, Hs, 1, 1);
    * the cross-attention layer (``encoder.cross_attention``), operation by operation;
    * ``num_blocks`` applications of the ``num_self_attends_per_block`` self-attention layers
      (``encoder.self_attends.{i}``): the same weights in every block, ``head_mask[i]`` in layer i of every
      block;
    * ``last_hidden_state`` (B, N, D).

    ``latent_mask=False`` leaves the latent mask out, as a model that cannot take one runs
    (``PerceiverForMaskedLM``): no ``latent_mask`` source and no ``+ attention_mask`` step. ``head_mask=False``
    leaves ``head_mask`` out the same way (``PerceiverSeq2Seq`` takes none): no source, no ``x head_mask`` step.

    Dropout on the attention probabilities is left out: it is the identity outside training. A config of
    more than :data:`MAX_TRACED_LAYERS` self-attention layers is a ``ValueError`` (before any step is made).
    """
    B = _check_size("batch", batch, "B")
    M = _check_size("seq_len", seq_len, "M")
    N, D, C = config.num_latents, config.d_latents, config.d_model
    S, NB = config.num_self_attends_per_block, config.num_blocks
    L, Hs = NB * S, config.num_self_attention_heads
    if L > MAX_TRACED_LAYERS:
        raise ValueError(
            f"this config applies num_blocks x num_self_attends_per_block = {NB:,} x {S:,} = {L:,} self-attention "
            f"layers; tracing them would take about {20 * L:,} steps, and the trace stops at "
            f"{MAX_TRACED_LAYERS:,} layers: check num_blocks and num_self_attends_per_block"
        )
    steps: list[Step] = []
    add = steps.append

    # ------------------------------------------------------------------ sources (PerceiverModel.forward)
    add(Step("inputs/inputs", "inputs", "inputs", f"the input array, d_model = {C}", (B, M, C), ("B", "M", "C"),
             "input"))
    add(Step("inputs/latents", "embeddings.latents", "latents", f"learned latent array, {N} x {D}", (N, D),
             ("N", "D"), "parameter"))
    add(Step("inputs/embeddings", "embeddings", "broadcast to batch", "latents.expand(B, N, D): same for every row",
             (B, N, D), ("B", "N", "D"), "op", inputs=("inputs/latents",)))
    add(Step("masks/attention_mask", "attention_mask", "attention_mask", "1 keeps an input, 0 drops it",
             (B, M), ("B", "M"), "mask",
             note="over the inputs; None means all ones"))
    add(Step("masks/inputs_mask", "invert_attention_mask", "inputs_mask", "(1 - mask) * float32 min",
             (B, 1, 1, M), ("B", "1", "1", "M"), "mask", inputs=("masks/attention_mask",),
             note="additive: 0 keeps, float32 min drops; the cross-attention's only mask"))
    if latent_mask:
        add(Step("masks/latent_mask", "latent_mask", "latent_mask", "1 keeps a latent, 0 drops it",
                 (B, N), ("B", "N"), "mask",
                 note="npperceiver's; HF PerceiverModel always passes attention_mask=None to its encoder"))
        add(Step("masks/attention_bias", "invert_attention_mask", "attention_mask", "(1 - mask) * float32 min",
                 (B, 1, 1, N), ("B", "1", "1", "N"), "mask", inputs=("masks/latent_mask",),
                 note="the encoder's attention_mask: added in every self-attention layer, ignored by the "
                      "cross-attention"))
    if head_mask:
        add(Step("masks/head_mask", "head_mask", "head_mask", "multiplies attention probabilities per head",
                 (L, Hs), ("L", "Hs"), "mask",
                 note="transformers 4.x only; (Hs,) is broadcast to every layer"))
        add(Step("masks/head_mask_5d", "get_head_mask", "head_mask", f"(L, Hs) -> (L, 1, Hs, 1, 1), L = {NB} x {S}",
                 (L, 1, Hs, 1, 1), ("L", "1", "Hs", "1", "1"), "mask", inputs=("masks/head_mask",),
                 note=(f"layer i of every block reads row i: rows {S}..{L - 1} are never read" if L > S
                       else "layer i reads row i")))

    # ------------------------------------------------------------------ the cross-attention
    last = _layer_steps(add, config.cross_attention, config, "cross", "encoder.cross_attention",
                        hidden="inputs/embeddings", inputs="inputs/inputs", B=B, rows=(N, "N", "D", "latents"),
                        kv_rows=(M, "M", "C", "inputs"), mask="inputs_mask", block=None, layer=None,
                        head_mask=head_mask)

    # ------------------------------------------------------------------ num_blocks x the shared block
    for b in range(NB):
        for i in range(S):
            last = _layer_steps(add, config.self_attention, config, f"block{b}/self{i}",
                                f"encoder.self_attends.{i}", hidden=last, inputs=None, B=B,
                                rows=(N, "N", "D", "latents"), kv_rows=None,
                                mask="attention_mask" if latent_mask else None, block=b, layer=i,
                                head_mask=head_mask)

    add(Step("output/last_hidden_state", "last_hidden_state", "last_hidden_state", "the encoded latents",
             (B, N, D), ("B", "N", "D"), "output", inputs=(last,)))
    return steps


#: Modules of the encoder trace that live under ``perceiver.`` in HF ``PerceiverForMaskedLM``.
_MLM_ENCODER_MODULES = ("embeddings", "encoder.")


def mlm_steps(config: PerceiverConfig, batch: Dim = "B", seq_len: Dim = "M") -> list[Step]:
    """Every step of HF ``PerceiverForMaskedLM.forward``, in order, with its output shape.

    The text path of Perceiver IO (``npperceiver/text.py``), with P = ``max_position_embeddings`` and
    V = ``vocab_size``:

    * ``perceiver.input_preprocessor`` (``PerceiverTextPreprocessor``): ``input_ids`` (B, M) -> token
      embedding E (V, C) looked up -> + ``position_embeddings`` (P, C)[:M] -> the encoder's inputs (B, M, C);
    * the encoder, as :func:`encoder_steps` lists it with module paths under ``perceiver.``, its ``inputs``
      fed by the preprocessor and no latent mask (``PerceiverForMaskedLM`` takes none);
    * ``perceiver.decoder`` (``PerceiverBasicDecoder``): ``output_position_encodings`` (P, C) -> expanded
      to (B, P, C), the output queries, the same for every input whatever M; then
      ``decoding_cross_attention``: the queries attend to the latents (B, N, D), 8 heads, query/key 256,
      value C, no query residual and **no mask** (HF passes ``query_mask``, which the cross-attention
      replaces by ``inputs_mask=None``);
    * ``embedding_decoder``: (B, P, C) @ E^T + bias -> ``logits`` (B, P, V), with the preprocessor's E.

    ``config`` must suit the MLM (:func:`npperceiver.text.check_mlm_config`); a numeric ``seq_len`` must be
    at most P.
    """
    check_mlm_config(config)
    B = _check_size("batch", batch, "B")
    M = _check_size("seq_len", seq_len, "M")
    C, N, P, V = config.d_model, config.num_latents, config.max_position_embeddings, config.vocab_size
    if isinstance(M, int) and M > P:
        raise ValueError(f"seq_len must be at most max_position_embeddings = {P} (one position per token), "
                         f"got {M}")
    steps: list[Step] = []
    add = steps.append
    pre = "perceiver.input_preprocessor"

    # ------------------------------------------------------------------ the text preprocessor
    add(Step("text/input_ids", "input_ids", "input_ids", "token ids: [CLS] UTF-8 bytes [SEP], padding",
             (B, M), ("B", "M"), "input"))
    add(Step("text/embeddings", f"{pre}.embeddings.weight", "embeddings", f"token embedding E, {V} x {C}",
             (V, C), ("V", "C"), "parameter",
             note="also the output embedding: embedding_decoder multiplies by E^T (tied by use)"))
    add(Step("text/token_embeddings", f"{pre}.embeddings", "look up", "E[input_ids]: one row per token",
             (B, M, C), ("B", "M", "C"), "op", inputs=("text/input_ids", "text/embeddings")))
    add(Step("text/position_embeddings", f"{pre}.position_embeddings.weight", "position_embeddings",
             f"learned positions, {P} x {C}", (P, C), ("P", "C"), "parameter"))
    add(Step("text/inputs", pre, "+ position_embeddings[:M]", "position m added to token m", (B, M, C),
             ("B", "M", "C"), "op", inputs=("text/token_embeddings", "text/position_embeddings")))

    # ------------------------------------------------------------------ the encoder, fed by the preprocessor
    steps += [_under_perceiver(s, "text/inputs") for s in encoder_steps(config, batch=B, seq_len=M, latent_mask=False)
              if s.id != "inputs/inputs"]

    # ------------------------------------------------------------------ the decoder
    dec = "perceiver.decoder"
    add(Step("decoder_query/output_position_encodings", f"{dec}.output_position_encodings.position_embeddings",
             "output_position_encodings", f"learned output queries, {P} x {C}", (P, C), ("P", "C"), "parameter"))
    add(Step("decoder_query/queries", f"{dec}.output_position_encodings", "expand to batch",
             "the same P queries for every input", (B, P, C), ("B", "P", "C"), "op",
             inputs=("decoder_query/output_position_encodings",),
             note="decoder_query: independent of the input and of M, so logits are (B, P, V) whatever M"))
    first = len(steps)
    last = _layer_steps(add, decoder_attention_dims(config), config, "decoder", f"{dec}.decoding_cross_attention",
                        hidden="decoder_query/queries", inputs="output/last_hidden_state", B=B,
                        rows=(P, "P", "C", "queries"), kv_rows=(N, "N", "D", "latents"), mask=None,
                        block=None, layer=None)
    for i in range(first, len(steps)):  # say where the input mask would have acted, and why it does not
        if steps[i].id == "decoder/softmax":
            steps[i] = replace(steps[i], note="no mask: HF passes query_mask (the inverted attention_mask) as "
                                              "attention_mask, which a cross-attention replaces by inputs_mask=None")

    # ------------------------------------------------------------------ the embedding decoder
    add(Step("embedding_decoder/bias", "embedding_decoder.bias", "bias", f"one per token, {V}", (V,), ("V",),
             "parameter"))
    add(Step("embedding_decoder/logits", "embedding_decoder", "@ E^T + bias", f"Linear {C} -> {V} with weight E",
             (B, P, V), ("B", "P", "V"), "op", inputs=(last, "text/embeddings", "embedding_decoder/bias"),
             note="E is the preprocessor's token embedding: no output embedding of its own"))
    add(Step("output/logits", "logits", "logits", "a score for each of the V tokens at each of the P positions",
             (B, P, V), ("B", "P", "V"), "output", inputs=("embedding_decoder/logits",)))
    return steps


#: What the trace says where the latents enter a decoder cross-attention: the answer to "where does the
#: source enter the decoder?" (T5 reads its encoder output at the same point of each decoder layer).
SOURCE_ENTERS = "the source enters the decoder here"


def seq2seq_steps(config: Seq2SeqConfig, batch: Dim = "B", seq_len: Dim = "M") -> list[Step]:
    """Every step of ``PerceiverSeq2Seq``'s teacher-forced forward pass and loss (``npperceiver/seq2seq.py``),
    in order, with its output shape.

    Letters as in :func:`encoder_steps` (M source bytes), plus T target positions (``max_target_length``),
    E ``d_decoder``, Hd ``num_decoder_heads`` and V the target vocabulary; T, E, Hd and V come from
    ``config``, as N, D and C do. The trace covers, in order:

    * ``perceiver.input_preprocessor``: ``source_ids`` (B, M) -> byte and position embeddings (B, M, C);
    * the Perceiver encoder, as :func:`encoder_steps` lists it under ``perceiver.``, with ``source_mask``
      (B, M) as its ``attention_mask`` -> ``inputs_mask`` (B, 1, 1, M) in its cross-attention, and neither
      a latent mask nor a ``head_mask`` (the model takes none) -> the latents z (B, N, D);
    * the decoder's masks and target: the causal mask (1, 1, T, T) (autoregressive only), ``target_ids``
      (B, T) and their padding (B, T);
    * decoder ``autoregressive``: ``shift_right`` -> target embedding (V, E) + positions (T, E) -> per layer j
      a causal self-attention (``decoder.layers.{j}.self_attention``, a ``PerceiverAttention``: no MLP), then
      a cross-attention from the target positions to the latents + MLP
      (``decoder.layers.{j}.cross_attention``, a ``PerceiverLayer``);
      decoder ``queries``: T learned output queries (T, E) -> one cross-attention to the latents + MLP
      (``decoder.decoding_cross_attention``);
    * both: ``decoder.layernorm`` and ``decoder.lm_head`` -> ``logits`` (B, T, V), then the loss: labels with
      the target padding as -100, mean cross-entropy ().

    Nothing masks a decoder cross-attention: every latent is real. A numeric ``seq_len`` must be at most
    the encoder's ``max_position_embeddings`` (one position per source byte).
    """
    if not isinstance(config, Seq2SeqConfig):
        raise ValueError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
    enc = config.encoder
    B = _check_size("batch", batch, "B")
    M = _check_size("seq_len", seq_len, "M")
    C, N, D, P = enc.d_model, enc.num_latents, enc.d_latents, enc.max_position_embeddings
    T, E, V, Hd = config.max_target_length, config.d_decoder, config.target_vocab_size, config.num_decoder_heads
    if isinstance(M, int) and M > P:
        raise ValueError(f"seq_len must be at most the encoder's max_position_embeddings = {P} (one position per "
                         f"source byte), got {M}")
    auto = config.decoder == "autoregressive"
    steps: list[Step] = []
    add = steps.append
    pre = "perceiver.input_preprocessor"

    # ------------------------------------------------------------------ the source, embedded
    add(Step("source/source_ids", "source_ids", "source_ids", "UTF-8 bytes as ids (byte + 6), then [PAD] = 0",
             (B, M), ("B", "M"), "input", note="no [CLS] or [SEP]: the bytes alone"))
    add(Step("source/embeddings", f"{pre}.embeddings.weight", "embeddings", f"byte embedding, {enc.vocab_size} x {C}",
             (enc.vocab_size, C), ("vocab", "C"), "parameter"))
    add(Step("source/token_embeddings", f"{pre}.embeddings", "look up", "one row per byte", (B, M, C),
             ("B", "M", "C"), "op", inputs=("source/source_ids", "source/embeddings")))
    add(Step("source/position_embeddings", f"{pre}.position_embeddings.weight", "position_embeddings",
             f"learned positions, {P} x {C}", (P, C), ("P", "C"), "parameter"))
    add(Step("source/inputs", pre, "+ position_embeddings[:M]", "position m added to byte m", (B, M, C),
             ("B", "M", "C"), "op", inputs=("source/token_embeddings", "source/position_embeddings")))

    # ------------------------------------------------------------------ the encoder, fed by the source
    for s in encoder_steps(enc, batch=B, seq_len=M, latent_mask=False, head_mask=False):
        if s.id == "inputs/inputs":
            continue
        s = _under_perceiver(s, "source/inputs")
        if s.id == "masks/attention_mask":
            s = replace(s, module="source_mask", name="source_mask", op="1 keeps a source byte, 0 is padding",
                        note="the encoder's attention_mask, as in PerceiverModel")
        elif s.id == "output/last_hidden_state":
            s = replace(s, name="latents z", op="the source, read once into N latents",
                        note=f"N = {N} whatever the source length: what every decoder cross-attention reads, "
                             "where T5's decoder reads its encoder's output")
        elif s.id == "cross/inputs_mask":
            s = replace(s, note="source_mask, inverted: padding bytes get zero attention")
        add(s)
        if s.id == "masks/inputs_mask" and auto:  # the decoder's mask, beside the encoder's
            add(Step("masks/causal_mask", "causal_mask", "causal_mask", "0 on and below the diagonal, float32 min "
                     "above", (1, 1, T, T), ("1", "1", "T", "T"), "mask",
                     note="target position t reads positions 0..t only; the same for every example"))

    # ------------------------------------------------------------------ the target
    add(Step("target/target_ids", "target_ids", "target_ids", "target tokens, [EOS], then [PAD] to T",
             (B, T), ("B", "T"), "input"))
    add(Step("target/padding", "seq2seq_loss", "target padding", "True on the [PAD] after [EOS]", (B, T),
             ("B", "T"), "mask", inputs=("target/target_ids",),
             note=("no mask of its own in the decoder: after [EOS], the causal mask hides it from every real "
                   "position; the loss leaves it out" if auto else
                   "the queries decoder never reads the target; the loss leaves the padding out")))
    if auto:
        add(Step("decoder_inputs/decoder_input_ids", "shift_right", "shift right",
                 "[BOS], then the target but its last token", (B, T), ("B", "T"), "op", inputs=("target/target_ids",),
                 note="teacher forcing: position t reads [BOS] y_1 .. y_t and predicts y_t+1"))
        add(Step("decoder_inputs/embeddings", "decoder.embeddings.weight", "embeddings",
                 f"target embedding, {V} x {E}", (V, E), ("V", "E"), "parameter"))
        add(Step("decoder_inputs/token_embeddings", "decoder.embeddings", "look up", "one row per target token",
                 (B, T, E), ("B", "T", "E"), "op",
                 inputs=("decoder_inputs/decoder_input_ids", "decoder_inputs/embeddings")))
        add(Step("decoder_inputs/position_embeddings", "decoder.position_embeddings.weight", "position_embeddings",
                 f"learned positions, {T} x {E}", (T, E), ("T", "E"), "parameter"))
        add(Step("decoder_inputs/inputs", "decoder.position_embeddings", "+ position_embeddings[:T]",
                 "position t added to token t", (B, T, E), ("B", "T", "E"), "op",
                 inputs=("decoder_inputs/token_embeddings", "decoder_inputs/position_embeddings")))
    else:
        add(Step("queries/output_position_encodings", "decoder.output_position_encodings.position_embeddings",
                 "output_position_encodings", f"learned output queries, {T} x {E}", (T, E), ("T", "E"), "parameter"))
        add(Step("queries/queries", "decoder.output_position_encodings", "expand to batch",
                 "the same T queries for every example", (B, T, E), ("B", "T", "E"), "op",
                 inputs=("queries/output_position_encodings",)))

    # ------------------------------------------------------------------ the decoder
    latents = "output/last_hidden_state"
    target = (T, "T", "E", "targets" if auto else "queries")  # the query side: T positions of width E
    no_mask = "no mask: every latent is real"
    if auto:
        last = "decoder_inputs/inputs"
        for j in range(config.num_decoder_layers):
            last = _layer_steps(add, config.decoder_self_attention, enc, f"decoder{j}/self",
                                f"decoder.layers.{j}.self_attention", hidden=last, inputs=None, B=B, rows=target,
                                kv_rows=None, mask="causal_mask", block=None, layer=None, head_mask=False,
                                heads="Hd", mlp=False)
            last = _layer_steps(add, config.decoder_cross_attention, enc, f"decoder{j}/cross",
                                f"decoder.layers.{j}.cross_attention", hidden=last, inputs=latents, B=B, rows=target,
                                kv_rows=(N, "N", "D", "latents"), mask=None, block=None, layer=None,
                                head_mask=False, heads="Hd", softmax_note=no_mask)
    else:
        last = _layer_steps(add, config.decoder_cross_attention, enc, "decoding", "decoder.decoding_cross_attention",
                            hidden="queries/queries", inputs=latents, B=B, rows=target,
                            kv_rows=(N, "N", "D", "latents"), mask=None, block=None, layer=None, head_mask=False,
                            heads="Hd", softmax_note=no_mask)
    add(Step("head/layernorm", "decoder.layernorm", "layernorm", f"LayerNorm({E})", (B, T, E), ("B", "T", "E"), "op",
             inputs=(last,)))
    add(Step("head/lm_head", "decoder.lm_head", "lm_head", f"Linear {E} -> {V}", (B, T, V), ("B", "T", "V"), "op",
             inputs=("head/layernorm",)))
    add(Step("output/logits", "logits", "logits", "a score for each of the V target tokens at each position",
             (B, T, V), ("B", "T", "V"), "output", inputs=("head/lm_head",)))

    # ------------------------------------------------------------------ the loss
    add(Step("loss/labels", "seq2seq_loss", "labels", "target_ids, -100 on the padding", (B, T), ("B", "T"), "op",
             inputs=("target/target_ids",), mask="target_padding", mask_source="target/padding",
             note="-100: left out of the loss ([EOS] stays in)"))
    add(Step("loss/loss", "seq2seq_loss", "loss", "mean cross-entropy over the target tokens", (), (), "output",
             inputs=("output/logits", "loss/labels")))
    return steps


def _under_perceiver(s: Step, inputs: str) -> Step:
    """A step of :func:`encoder_steps` inside a model that holds the encoder as ``perceiver`` (the masked LM,
    the translation model): module paths under ``perceiver.``, its ``inputs`` read from the step ``inputs``."""
    module = f"perceiver.{s.module}" if s.module.startswith(_MLM_ENCODER_MODULES) else s.module
    reads = tuple(inputs if r == "inputs/inputs" else r for r in s.inputs)
    return replace(s, module=module, inputs=reads)


def _layer_steps(add, dims: AttentionDims, config: PerceiverConfig, scope: str, module: str, *, hidden: str,
                 inputs: Optional[str], B: Dim, rows: tuple, kv_rows: Optional[tuple], mask: Optional[str],
                 block: Optional[int], layer: Optional[int], head_mask: bool = True, heads: Optional[str] = None,
                 mlp: bool = True, softmax_note: str = "") -> str:
    """Append the steps of one HF ``PerceiverLayer``; return the id of its output step.

    ``rows`` = (size, letter, width letter, what) of the query side: the latents (N, "N", "D", "latents") in
    the encoder, the output queries (P, "P", "C", "queries") in the MLM decoder. ``kv_rows`` the same for a
    cross-attention's keys and values (None: self-attention, keys and values are the query side). ``mask``
    names the additive mask added to the scores: "inputs_mask", "attention_mask", "causal_mask" or None (no
    mask). ``head_mask=False``: no ``x head_mask`` step in a self-attention (a model that takes none).
    ``heads``: the letter of its number of heads (default: Hc in "cross", Hd in "decoder", else Hs).
    ``mlp=False``: an HF ``PerceiverAttention`` alone (attention, output projection, query residual) at
    ``module``, as the translation decoder's self-attention; else a ``PerceiverLayer``. ``softmax_note``: a
    note for the softmax.
    """
    cross = dims.is_cross
    H = dims.num_heads
    h = heads or {"cross": "Hc", "decoder": "Hd"}.get(scope, "Hs")
    Q, q, qw, q_what = rows
    K, k, kw, kv_what = kv_rows if cross else rows  # keys/values: the inputs (cross) or the queries' own rows
    D, kv, qk, v, out = dims.q_dim, dims.kv_dim, dims.qk_channels, dims.v_channels, dims.output_channels
    dqk, dv, hid = dims.qk_head_dim, dims.v_head_dim, dims.mlp_hidden
    a = f"{module}.attention.self" if mlp else f"{module}.self"

    def step(name_id: str, where: str, name: str, op: str, shape: Shape, axes: Tuple[str, ...], reads: Tuple[str, ...],
             **kw) -> str:
        add(Step(f"{scope}/{name_id}", where, name, op, shape, axes, "op", reads, block=block, layer=layer, **kw))
        return f"{scope}/{name_id}"

    s = lambda name_id: f"{scope}/{name_id}"  # noqa: E731 - id of a step of this layer

    ln1 = step("layernorm1", f"{a}.layernorm1", "layernorm1", f"LayerNorm({D}), {q_what}", (B, Q, D),
               ("B", q, qw), (hidden,))
    if cross:
        kv_src = step("layernorm2", f"{a}.layernorm2", "layernorm2", f"LayerNorm({kv}), {kv_what}", (B, K, kv),
                      ("B", k, kw), (inputs,))
    else:
        kv_src = ln1  # layernorm2 is nn.Identity in self-attention: keys and values read layernorm1's output
    step("query", f"{a}.query", "query", f"Linear {D} -> {qk}", (B, Q, qk), ("B", q, "qk"), (ln1,))
    step("key", f"{a}.key", "key", f"Linear {kv} -> {qk}", (B, K, qk), ("B", k, "qk"), (kv_src,))
    step("value", f"{a}.value", "value", f"Linear {kv} -> {v}", (B, K, v), ("B", k, "v"), (kv_src,))
    for what, n, r, width in (("query", Q, q, dqk), ("key", K, k, dqk), ("value", K, k, dv)):
        step(f"split_{what}", f"{a}.transpose_for_scores", f"split {what} heads",
             f"({n if isinstance(n, int) else r}, {H * width}) -> {H} heads x {width}",
             (B, H, n, width), ("B", h, r, "dqk" if what != "value" else "dv"), (s(what),))
    last = step("scores", a, "scores", f"query @ key^T / sqrt({dqk})", (B, H, Q, K), ("B", h, q, k),
                (s("split_query"), s("split_key")))
    if mask == "inputs_mask":
        last = step("inputs_mask", a, "+ inputs_mask", "0 keeps, float32 min drops", (B, H, Q, K),
                    ("B", h, q, k), (last,), mask="inputs_mask", mask_source="masks/inputs_mask",
                    note="HF replaces the cross-attention's attention_mask by inputs_mask: the latent mask is ignored")
    elif mask == "attention_mask":
        last = step("attention_mask", a, "+ attention_mask", "0 keeps, float32 min drops", (B, H, Q, K),
                    ("B", h, q, k), (last,), mask="attention_mask", mask_source="masks/attention_bias")
    elif mask == "causal_mask":
        last = step("causal_mask", a, "+ causal_mask", "0 keeps s <= t, float32 min drops s > t", (B, H, Q, K),
                    ("B", h, q, k), (last,), mask="causal_mask", mask_source="masks/causal_mask")
    last = step("softmax", a, "softmax", f"over the {k} keys", (B, H, Q, K), ("B", h, q, k), (last,),
                note=softmax_note or ("no head_mask: HF passes head_mask=None to the cross-attention"
                                      if scope == "cross" and head_mask else ""))
    if not cross and head_mask:
        last = step("head_mask", a, f"x head_mask[{layer}]", f"row {layer} scales each head",
                    (B, H, Q, K), ("B", h, q, k), (last,), mask=f"head_mask[{layer}]",
                    mask_source="masks/head_mask_5d",
                    note=f"row {layer} in every block" if config.num_blocks > 1 else "")
    step("context", a, "@ value", "probabilities @ value", (B, H, Q, dv), ("B", h, q, "dv"),
         (last, s("split_value")))
    step("merge_heads", a, "merge heads", f"{H} heads x {dv} -> {v}", (B, Q, v), ("B", q, "v"), (s("context"),))
    last = step("output", f"{module}.attention.output.dense" if mlp else f"{module}.output.dense", "output.dense",
                f"Linear {v} -> {out}", (B, Q, out), ("B", q, qw), (s("merge_heads"),))
    if dims.use_query_residual:
        last = step("query_residual", f"{module}.attention" if mlp else module, "+ query residual",
                    "+ the layer input (before layernorm1)", (B, Q, D), ("B", q, qw), (last,), residual=hidden)
    if not mlp:
        return last
    attention_output = last
    step("layernorm", f"{module}.layernorm", "layernorm", f"LayerNorm({D})", (B, Q, D), ("B", q, qw),
         (attention_output,))
    step("mlp_dense1", f"{module}.mlp.dense1", "mlp.dense1",
         f"Linear {D} -> {hid} (widening x{dims.widening_factor})", (B, Q, hid), ("B", q, "w" + qw),
         (s("layernorm"),))
    step("mlp_act", f"{module}.mlp.intermediate_act_fn", config.hidden_act, _ACT_DESCRIPTIONS[config.hidden_act],
         (B, Q, hid), ("B", q, "w" + qw), (s("mlp_dense1"),))
    step("mlp_dense2", f"{module}.mlp.dense2", "mlp.dense2", f"Linear {hid} -> {D}", (B, Q, D), ("B", q, qw),
         (s("mlp_act"),))
    return step("residual", module, "+ residual", "+ the attention output", (B, Q, D), ("B", q, qw),
                (s("mlp_dense2"),), residual=attention_output)


_ACT_DESCRIPTIONS = {
    "gelu": "GELU, exact erf form",
    "gelu_new": "GELU, tanh approximation",
    "gelu_pytorch_tanh": "GELU, tanh approximation",
    "relu": "ReLU",
    "silu": "SiLU",
    "swish": "SiLU",
}


# ---------------------------------------------------------------------------- the compact view: one row per layer
@dataclass(frozen=True)
class LayerSummary:
    """One row of ``explain``'s compact view: a layer (or an input, or the result) of the trace."""

    module: str  # "encoder.self_attends.0 (block 2)"
    what: str  # "latents attend to latents, 4 heads"
    shape: Shape  # the shape it outputs
    masks: Tuple[str, ...] = ()  # the masks acting in it, as mask_label words them


def layer_summary(steps: list[Step], config: Union[PerceiverConfig, Seq2SeqConfig],
                  model: str = "encoder") -> list[LayerSummary]:
    """The trace of :func:`encoder_steps` or :func:`mlm_steps` with one row per layer instead of one per
    operation: the inputs, each attention layer with its heads and the masks acting in it, the results. The
    mask sources are left out (:func:`mask_summary` words them). A latent self-attention's
    ``attention_mask`` is listed as ``latent_mask*``: npperceiver's, never passed by HF's ``PerceiverModel``."""
    groups: list[list[Step]] = []
    for s in steps:  # consecutive runs of one scope (the MLM's "output" scope comes twice)
        if groups and groups[-1][0].scope == s.scope:
            groups[-1].append(s)
        else:
            groups.append([s])
    if isinstance(config, Seq2SeqConfig):
        return _seq2seq_summary(groups, config)
    rows: list[LayerSummary] = []
    for group in groups:
        scope, last = group[0].scope, group[-1]
        masks = tuple(sorted(("latent_mask*" if s.mask == "attention_mask" else s.mask) for s in group if s.mask))
        if scope == "inputs":
            rows += [LayerSummary(s.module, s.op, s.shape) for s in group if s.kind != "parameter"]
        elif scope == "output":
            rows += [LayerSummary(s.module, _RESULTS.get(s.name, s.op), s.shape) for s in group]
        elif scope == "text":
            rows.append(LayerSummary(group[0].module, group[0].op, group[0].shape))
            rows.append(LayerSummary(last.module, "token embedding + position embedding", last.shape))
        elif scope == "cross":
            rows.append(LayerSummary(last.module, f"latents attend to inputs, {_widths(config.cross_attention)}",
                                     last.shape, masks))
        elif scope == "decoder_query":
            rows.append(LayerSummary(last.module, "output queries: learned, the same for every input", last.shape))
        elif scope == "decoder":
            rows.append(LayerSummary(last.module, "output queries attend to the latents, "
                                     f"{_widths(decoder_attention_dims(config))}", last.shape,
                                     ("none: HF drops query_mask",)))
        elif scope == "embedding_decoder":
            rows.append(LayerSummary(last.module, "@ token embedding^T + bias", last.shape))
        elif last.layer is not None:  # a self-attention layer in one application of the block
            block = f" (block {last.block + 1})" if config.num_blocks > 1 else ""
            rows.append(LayerSummary(f"{last.module}{block}", f"latents attend to latents, "
                                     f"{_widths(config.self_attention)}", last.shape, masks))
    return rows


def _seq2seq_summary(groups: list[list[Step]], config: Seq2SeqConfig) -> list[LayerSummary]:
    """:func:`layer_summary` of :func:`seq2seq_steps`: one row per layer, input and result."""
    enc = config.encoder
    rows: list[LayerSummary] = []
    for group in groups:
        scope, first, last = group[0].scope, group[0], group[-1]
        masks = tuple(sorted(s.mask for s in group if s.mask))
        if scope in ("masks", "inputs"):
            rows += [LayerSummary(s.module, s.op, s.shape) for s in group if s.kind not in ("parameter", "mask")]
        elif scope in ("source", "target", "decoder_inputs"):  # the ids (and the shifted ids), then their embedding
            rows += [LayerSummary(s.module, s.op, s.shape) for s in group
                     if s.kind == "input" or s.module == "shift_right"]
            if last.id.endswith("/inputs"):
                what, module = ("byte", last.module) if scope == "source" else ("target", "decoder.embeddings")
                rows.append(LayerSummary(module, f"{what} embedding + position embedding", last.shape))
        elif scope == "cross":
            rows.append(LayerSummary(last.module, f"latents attend to the source bytes, {_widths(enc.cross_attention)}",
                                     last.shape, masks))
        elif last.layer is not None:
            block = f" (block {last.block + 1})" if enc.num_blocks > 1 else ""
            rows.append(LayerSummary(f"{last.module}{block}", f"latents attend to latents, "
                                     f"{_widths(enc.self_attention)}", last.shape))
        elif scope.endswith("/self"):
            rows.append(LayerSummary(last.module, f"target position t attends to positions 0..t, "
                                     f"{_widths(config.decoder_self_attention)}", last.shape, masks))
        elif scope.endswith("/cross") or scope == "decoding":
            who = "target positions" if scope != "decoding" else "output queries"
            rows.append(LayerSummary(last.module, f"{who} attend to the latents: {SOURCE_ENTERS}, "
                                     f"{_widths(config.decoder_cross_attention)}", last.shape,
                                     ("none: every latent is real",)))
        elif scope == "queries":
            rows.append(LayerSummary(last.module, "output queries: learned, the same for every example", last.shape))
        elif scope in ("head", "output", "loss"):
            rows += [LayerSummary(s.module, s.op, s.shape, (s.mask,) if s.mask else ()) for s in group]
        else:  # pragma: no cover - a scope this summary does not know must fail loudly
            raise ValueError(f"no summary for the steps of {first.scope!r}")
    return rows


def _widths(dims: AttentionDims) -> str:
    """"2 heads, qk 24, v 24": an attention's heads and its query/key and value widths."""
    return f"{dims.num_heads} heads, qk {dims.qk_channels}, v {dims.v_channels}"


_RESULTS = {"last_hidden_state": "the encoded latents", "logits": "a score for each token at each position"}


def mask_summary(steps: list[Step], config: Union[PerceiverConfig, Seq2SeqConfig],
                 model: str = "encoder") -> list[str]:
    """Lines saying what becomes of each mask and where it acts, HF's masks apart from npperceiver's."""
    by_id = {s.id: s for s in steps}
    if isinstance(config, Seq2SeqConfig):
        return _seq2seq_masks(by_id, config)
    am, im = by_id["masks/attention_mask"], by_id["masks/inputs_mask"]
    hm, hm5 = by_id["masks/head_mask"], by_id["masks/head_mask_5d"]
    S, L = config.num_self_attends_per_block, config.num_self_attention_layers
    lines = [
        "The masks, as PerceiverModel.forward prepares them:",
        f"  attention_mask {format_shape(am.shape)} -> inputs_mask {format_shape(im.shape)} = (1 - mask) * float32 "
        "min: the cross-attention only",
        f"  head_mask {format_shape(hm.shape)} -> {format_shape(hm5.shape)}: self_attends.i x row i in every block"
        + (f" (rows {S}..{L - 1} never read)" if L > S else ""),
    ]
    if model == "mlm":
        lines.append("  the decoder gets none: HF passes inputs_mask as query_mask, which its cross-attention drops")
        lines.append("PerceiverForMaskedLM takes no latent mask.")
    if "masks/latent_mask" in by_id:
        lm, bias = by_id["masks/latent_mask"], by_id["masks/attention_bias"]
        lines += [
            "* npperceiver's latent_mask (HF's PerceiverModel has none: it passes attention_mask=None to its encoder):",
            f"  latent_mask {format_shape(lm.shape)} -> attention_mask {format_shape(bias.shape)}: every self-attention "
            "layer, not the cross-attention",
        ]
    return lines


def _seq2seq_masks(by_id: dict, config: Seq2SeqConfig) -> list[str]:
    """:func:`mask_summary` of :func:`seq2seq_steps`: each mask of the translation model, and where it acts."""
    source, inputs_mask, padding = by_id["masks/attention_mask"], by_id["masks/inputs_mask"], by_id["target/padding"]
    layers = [s.scope.split("/")[0] for s in by_id.values() if s.mask == "causal_mask"]
    lines = [
        "The masks, as PerceiverSeq2Seq makes them:",
        f"  source_mask {format_shape(source.shape)} -> inputs_mask {format_shape(inputs_mask.shape)} = (1 - mask) * "
        "float32 min: the encoder's cross-attention only (its attention_mask, as in PerceiverModel)",
    ]
    if "masks/causal_mask" in by_id:
        where = ", ".join(f"decoder.layers.{scope[len('decoder'):]}.self_attention" for scope in layers)
        lines.append(f"  causal_mask {format_shape(by_id['masks/causal_mask'].shape)}: 0 on and below the diagonal, "
                     f"float32 min above: every decoder self-attention ({where})")
        lines.append(f"  target padding {format_shape(padding.shape)} = target_ids == [PAD]: no mask of its own in the "
                     "decoder (it comes after [EOS], so the causal mask hides it from every real position); the loss "
                     "leaves it out (label -100)")
    else:
        lines.append(f"  target padding {format_shape(padding.shape)} = target_ids == [PAD]: the loss leaves it out "
                     "(label -100); the queries decoder never reads the target")
    lines += ["  the decoder's cross-attention to the latents: no mask, every latent is real",
              "PerceiverSeq2Seq takes no latent mask and no head_mask."]
    return lines
