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


def scope_title(step: Step, config: PerceiverConfig, model: str = "encoder", *, rolled: bool = False,
                masks: bool = True) -> str:
    """A one-line title for the group of steps ``step`` belongs to (:attr:`Step.scope`), as the ``explain``
    table heads each group and the diagram titles each group. ``model`` is "encoder" or "mlm".

    A layer's title is its HF module, a colon, then what it does. ``rolled=True`` words a self-attention
    layer for every block at once (a drawing of the block drawn once), without "block b of num_blocks";
    ``masks=False`` leaves out which masks act in a layer (a drawing without the masks).
    """
    scope = step.scope
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
                  latent_mask: bool = True) -> list[Step]:
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
    (``PerceiverForMaskedLM``): no ``latent_mask`` source and no ``+ attention_mask`` step.

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
                        kv_rows=(M, "M", "C", "inputs"), mask="inputs_mask", block=None, layer=None)

    # ------------------------------------------------------------------ num_blocks x the shared block
    for b in range(NB):
        for i in range(S):
            last = _layer_steps(add, config.self_attention, config, f"block{b}/self{i}",
                                f"encoder.self_attends.{i}", hidden=last, inputs=None, B=B,
                                rows=(N, "N", "D", "latents"), kv_rows=None,
                                mask="attention_mask" if latent_mask else None, block=b, layer=i)

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
    def in_mlm(s: Step) -> Step:
        module = f"perceiver.{s.module}" if s.module.startswith(_MLM_ENCODER_MODULES) else s.module
        reads = tuple("text/inputs" if r == "inputs/inputs" else r for r in s.inputs)
        return replace(s, module=module, inputs=reads)

    steps += [in_mlm(s) for s in encoder_steps(config, batch=B, seq_len=M, latent_mask=False)
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


def _layer_steps(add, dims: AttentionDims, config: PerceiverConfig, scope: str, module: str, *, hidden: str,
                 inputs: Optional[str], B: Dim, rows: tuple, kv_rows: Optional[tuple], mask: Optional[str],
                 block: Optional[int], layer: Optional[int]) -> str:
    """Append the steps of one HF ``PerceiverLayer``; return the id of its output step.

    ``rows`` = (size, letter, width letter, what) of the query side: the latents (N, "N", "D", "latents") in
    the encoder, the output queries (P, "P", "C", "queries") in the MLM decoder. ``kv_rows`` the same for a
    cross-attention's keys and values (None: self-attention, keys and values are the query side). ``mask``
    names the additive mask added to the scores: "inputs_mask", "attention_mask" or None (no mask).
    """
    cross = dims.is_cross
    H = dims.num_heads
    h = {"cross": "Hc", "decoder": "Hd"}.get(scope, "Hs")
    Q, q, qw, q_what = rows
    K, k, kw, kv_what = kv_rows if cross else rows  # keys/values: the inputs (cross) or the queries' own rows
    D, kv, qk, v, out = dims.q_dim, dims.kv_dim, dims.qk_channels, dims.v_channels, dims.output_channels
    dqk, dv, hid = dims.qk_head_dim, dims.v_head_dim, dims.mlp_hidden
    a = f"{module}.attention.self"

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
    last = step("softmax", a, "softmax", f"over the {k} keys", (B, H, Q, K), ("B", h, q, k), (last,),
                note="no head_mask: HF passes head_mask=None to the cross-attention" if scope == "cross" else "")
    if not cross:
        last = step("head_mask", a, f"x head_mask[{layer}]", f"row {layer} scales each head",
                    (B, H, Q, K), ("B", h, q, k), (last,), mask=f"head_mask[{layer}]",
                    mask_source="masks/head_mask_5d",
                    note=f"row {layer} in every block" if config.num_blocks > 1 else "")
    step("context", a, "@ value", "probabilities @ value", (B, H, Q, dv), ("B", h, q, "dv"),
         (last, s("split_value")))
    step("merge_heads", a, "merge heads", f"{H} heads x {dv} -> {v}", (B, Q, v), ("B", q, "v"), (s("context"),))
    last = step("output", f"{module}.attention.output.dense", "output.dense", f"Linear {v} -> {out}",
                (B, Q, out), ("B", q, qw), (s("merge_heads"),))
    if dims.use_query_residual:
        last = step("query_residual", f"{module}.attention", "+ query residual", "+ the layer input (before layernorm1)",
                    (B, Q, D), ("B", q, qw), (last,), residual=hidden)
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


def layer_summary(steps: list[Step], config: PerceiverConfig, model: str = "encoder") -> list[LayerSummary]:
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


def _widths(dims: AttentionDims) -> str:
    """"2 heads, qk 24, v 24": an attention's heads and its query/key and value widths."""
    return f"{dims.num_heads} heads, qk {dims.qk_channels}, v {dims.v_channels}"


_RESULTS = {"last_hidden_state": "the encoded latents", "logits": "a score for each token at each position"}


def mask_summary(steps: list[Step], config: PerceiverConfig, model: str = "encoder") -> list[str]:
    """Lines saying what becomes of each mask and where it acts, HF's masks apart from npperceiver's."""
    by_id = {s.id: s for s in steps}
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
