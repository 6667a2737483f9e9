"""A sequence-to-sequence Perceiver: the Perceiver encoder over source bytes, and one of two decoders.

Jaegle et al., "Perceiver IO: A General Architecture for Structured Inputs & Outputs" (2021) for the
encoder and the output-query decoder; Raffel et al., "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer" (T5, 2020) for the autoregressive one. Every layer is one of HF's
Perceiver modules (``modeling_perceiver.py``, transformers 4.57.6) as npperceiver already computes them;
only their arrangement is new. The forward pass::

    source_ids (B, M), source_mask (B, M)
      -> text preprocessor: byte embedding + position embedding             (B, M, C)
      -> the Perceiver encoder, source_mask as its inputs mask              latents z (B, N, D)

    decoder "autoregressive" (T5-like), over the target prefix y_<t:
      x = target embedding[BOS, y_1 .. y_T-1] + position embedding          (B, T, E)
      per decoder layer:
        x = x + SelfAttention(LN(x), causal bias)                         PerceiverAttention, self
        x = x + CrossAttention(LN(x), LN(z)); x = x + MLP(LN(x))          PerceiverLayer, cross
      logits = lm_head(LN(x))                                               (B, T, V)

    decoder "queries" (Perceiver IO, like PerceiverForMaskedLM's decoder):
      q = learned per-position queries (the same for every example)         (B, T, E)
      x = CrossAttention(LN(q), LN(z)) [+ q]; x = x + MLP(LN(x))            PerceiverLayer, cross, once
      logits = lm_head(LN(x))                                               (B, T, V)

Letters: B batch, M source bytes, C ``d_model``, N latents, D ``d_latents`` (the encoder's, as everywhere),
and for the decoder T target positions (``max_target_length``, ``[EOS]`` included), E ``d_decoder``,
Hd ``num_decoder_heads``, V ``target_vocab_size``.

Where the source comes in. The encoder reads the source once, into the latents. The autoregressive decoder
reads the latents in *every* layer, midway between its self-attention and its MLP -- exactly where T5's
decoder reads T5's encoder output; the latents are the Perceiver's "encoder output", N of them whatever the
source length. The queries decoder reads them once, and predicts all T tokens at the same time
(``[EOS]`` ends the target, ``[PAD]`` fills the rest); it never sees the target tokens at all.

Masks. The source padding mask is the encoder's ``attention_mask`` (its cross-attention's inputs mask, as in
``PerceiverModel``): padding bytes get zero attention. The causal mask is an additive (1, 1, T, T) bias in
each decoder self-attention: 0 on and below the diagonal, float32's minimum above it, so position t reads
positions 0..t only. Target padding needs no mask of its own: it sits after ``[EOS]``, so the causal mask
already hides it from every real position, and the loss leaves it out (label -100). Nothing masks the
decoder's cross-attention: every latent is real.

Parameters are nested dicts keyed like the state dict (see :func:`seq2seq_param_shapes`): the encoder under
``perceiver.`` exactly as in ``PerceiverForMaskedLM``, the decoder under ``decoder.``, where every attention
has HF's ``PerceiverAttention`` layout and every attention + MLP HF's ``PerceiverLayer`` layout.

Training. Each decoder's backward sits right after its forward (``*_backward(d_out, params, cache)``, the
convention of ``attention.py``: a forward given a ``cache`` dict records what its backward needs), built from
the layers' own backwards; :meth:`PerceiverSeq2Seq.loss_and_grads` runs the teacher-forced forward, the
loss's backward (:func:`seq2seq_loss_backward`), the decoder's and the encoder's, and returns the gradient
of every parameter keyed like :meth:`PerceiverSeq2Seq.state_dict` -- what ``loss.backward()`` leaves in
``.grad`` for the torch twin (``tests/seq2seq_reference.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from .attention import Cache, Params, child, perceiver_attention, perceiver_attention_backward
from .config import PerceiverConfig
from .dims import AttentionDims
from .encoder import latent_array_backward, perceiver_encoder_backward
from .functional import Dropout, layer_norm, layer_norm_backward, linear, linear_backward
from .layers import perceiver_layer, perceiver_layer_backward
from .masks import MASK_MIN
from .model import PerceiverModel, attention_dropout, cast_params, grads_state_dict
from .tasks import BOS_ID, EOS_ID, SOURCE_VOCAB_SIZE, get_task
from .text import (
    IGNORE_INDEX, decoder_query, decoder_query_backward, masked_lm_loss, masked_lm_loss_backward,
    perceiver_basic_decoder, perceiver_basic_decoder_backward, text_preprocessor, text_preprocessor_backward,
)
from .tokenizer import PAD_ID
from .weights import PREFIX, flatten, init_params, layer_param_shapes, param_shapes, params_from_shapes

DECODERS = ("autoregressive", "queries")


# ---------------------------------------------------------------------- config
@dataclass(frozen=True)
class Seq2SeqConfig:
    """Hyper-parameters of the encoder-decoder: the encoder's :class:`PerceiverConfig` and the decoder's.

    The encoder config's ``vocab_size`` is the source vocabulary (262 byte ids) and its
    ``max_position_embeddings`` the longest source (in bytes).
    """

    encoder: PerceiverConfig
    decoder: str = "autoregressive"  # "autoregressive" (T5-like) or "queries" (Perceiver IO)
    target_vocab_size: int = 33  # [V] target ids, [PAD] [BOS] [EOS] included
    max_target_length: int = 10  # [T] target positions, [EOS] included
    d_decoder: int = 64  # [E] width of the target embeddings / output queries and of the decoder's residual stream
    num_decoder_layers: int = 1  # autoregressive only: (causal self-attention, cross-attention + MLP) layers
    num_decoder_heads: int = 4  # [Hd] heads of every decoder attention
    decoder_widening_factor: int = 1  # MLP hidden width = factor * E
    decoder_use_query_residual: bool = True  # queries decoder: add the queries back after the cross-attention
    #                                          (HF's PerceiverForMaskedLM: False); autoregressive: always True
    task: Optional[str] = None  # the toy task the model translates (tasks.py), when it is one

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, PerceiverConfig):
            raise ValueError(f"encoder must be a PerceiverConfig, got {type(self.encoder).__name__}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        for name in ("target_vocab_size", "max_target_length", "d_decoder", "num_decoder_layers",
                     "num_decoder_heads", "decoder_widening_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.target_vocab_size <= EOS_ID:
            raise ValueError(f"target_vocab_size must exceed the special ids [PAD] [BOS] [EOS], got "
                             f"{self.target_vocab_size}")
        if self.d_decoder % self.num_decoder_heads:
            raise ValueError(f"d_decoder ({self.d_decoder}) must be divisible by num_decoder_heads "
                             f"({self.num_decoder_heads})")
        if self.decoder == "queries" and self.num_decoder_layers != 1:
            raise ValueError(f"the queries decoder cross-attends once: num_decoder_layers must be 1, got "
                             f"{self.num_decoder_layers}")
        if not isinstance(self.decoder_use_query_residual, bool):
            raise ValueError(f"decoder_use_query_residual must be a bool, got {self.decoder_use_query_residual!r}")
        if self.task is not None:
            task = get_task(self.task)  # a ValueError for an unknown name
            wanted = {"target_vocab_size": task.target_vocab.size, "max_target_length": task.max_target_length}
            for name, value in wanted.items():
                if getattr(self, name) != value:
                    raise ValueError(f"task {self.task!r} needs {name}={value}, got {getattr(self, name)}")
            if self.encoder.max_position_embeddings < task.max_source_length:
                raise ValueError(f"task {self.task!r} has sources of up to {task.max_source_length} bytes; "
                                 f"encoder max_position_embeddings is {self.encoder.max_position_embeddings}")

    @property
    def decoder_self_attention(self) -> AttentionDims:
        """The autoregressive decoder's causal self-attention (a ``PerceiverAttention``, no MLP): E -> E."""
        E = self.d_decoder
        return AttentionDims(is_cross=False, num_heads=self.num_decoder_heads, q_dim=E, kv_dim=E, qk_channels=E,
                             v_channels=E, output_channels=E, widening_factor=self.decoder_widening_factor,
                             use_query_residual=True)

    @property
    def decoder_cross_attention(self) -> AttentionDims:
        """Every decoder cross-attention to the latents + MLP (a ``PerceiverLayer``): queries E, latents D."""
        E = self.d_decoder
        residual = self.decoder_use_query_residual or self.decoder == "autoregressive"
        return AttentionDims(is_cross=True, num_heads=self.num_decoder_heads, q_dim=E, kv_dim=self.encoder.d_latents,
                             qk_channels=E, v_channels=E, output_channels=E,
                             widening_factor=self.decoder_widening_factor, use_query_residual=residual)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the decoder fields, with the encoder config as a nested dict."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["encoder"] = self.encoder.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Seq2SeqConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        if not isinstance(data, Mapping) or not isinstance(data.get("encoder"), Mapping):
            raise ValueError("a Seq2SeqConfig dict needs an 'encoder' mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown Seq2SeqConfig field(s): {', '.join(unknown)}")
        return cls(**{**data, "encoder": PerceiverConfig.from_dict(data["encoder"])})

    @classmethod
    def for_task(cls, task: str, decoder: str = "autoregressive") -> "Seq2SeqConfig":
        """The model that learns ``task`` (``digits-to-words`` or ``words-to-digits``) with ``decoder``: the
        recipe of docs/translation.md. Encoder: N = 32 latents, D = C = 64, one block of two self-attention
        layers, 4 heads in every attention, widening 1; decoder: E = 64, 4 heads, one layer, widening 1."""
        spec = get_task(task)  # a ValueError for an unknown name
        encoder = PerceiverConfig(
            num_latents=32, d_latents=64, d_model=64, num_blocks=1, num_self_attends_per_block=2,
            num_self_attention_heads=4, num_cross_attention_heads=4, self_attention_widening_factor=1,
            cross_attention_widening_factor=1, attention_probs_dropout_prob=0.0,
            vocab_size=SOURCE_VOCAB_SIZE, max_position_embeddings=spec.max_source_length,
        )
        return cls(encoder, decoder=decoder, target_vocab_size=spec.target_vocab.size,
                   max_target_length=spec.max_target_length, d_decoder=64, num_decoder_layers=1,
                   num_decoder_heads=4, decoder_widening_factor=1, task=task)


# ---------------------------------------------------------------------- parameter names and shapes
def attention_param_shapes(prefix: str, dims: AttentionDims) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one HF ``PerceiverAttention`` (attention + output projection, no MLP) at ``prefix``."""
    layer = layer_param_shapes("_", dims)  # a PerceiverLayer's keys; keep its attention's
    return {prefix + key[len("_.attention"):]: shape for key, shape in layer.items() if key.startswith("_.attention.")}


def seq2seq_param_shapes(config: Seq2SeqConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of the encoder-decoder, by state-dict key, in the order the forward pass uses them."""
    enc = config.encoder
    C, V, T, E = enc.d_model, config.target_vocab_size, config.max_target_length, config.d_decoder
    shapes = {
        f"{PREFIX}input_preprocessor.embeddings.weight": (enc.vocab_size, C),
        f"{PREFIX}input_preprocessor.position_embeddings.weight": (enc.max_position_embeddings, C),
    }
    shapes.update({PREFIX + key: shape for key, shape in param_shapes(enc).items()})  # latents, encoder
    if config.decoder == "autoregressive":
        shapes["decoder.embeddings.weight"] = (V, E)
        shapes["decoder.position_embeddings.weight"] = (T, E)
        for j in range(config.num_decoder_layers):
            shapes.update(attention_param_shapes(f"decoder.layers.{j}.self_attention", config.decoder_self_attention))
            shapes.update(layer_param_shapes(f"decoder.layers.{j}.cross_attention", config.decoder_cross_attention))
    else:
        shapes["decoder.output_position_encodings.position_embeddings"] = (T, E)
        shapes.update(layer_param_shapes("decoder.decoding_cross_attention", config.decoder_cross_attention))
    shapes.update({"decoder.layernorm.weight": (E,), "decoder.layernorm.bias": (E,),
                   "decoder.lm_head.weight": (V, E), "decoder.lm_head.bias": (V,)})
    return shapes


# ---------------------------------------------------------------------- the pieces
def causal_mask(T: int) -> np.ndarray:
    """The additive causal bias (1, 1, T, T): 0 where key s <= query t, float32's minimum where s > t -- the
    decoder self-attention's mask of HF's causal language models (e.g. ``T5Stack``'s extended causal mask),
    in the additive form ``PerceiverSelfAttention`` adds to its scores."""
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # (T, T) True above the diagonal
    return np.where(future, MASK_MIN, np.float32(0))[None, None].astype(np.float32)  # (1, 1, T, T)


def shift_right(target_ids: np.ndarray) -> np.ndarray:
    """Teacher forcing's decoder input, as T5's ``_shift_right``: ``[BOS]`` then the target without its last
    position, (B, T) -> (B, T).

    Position t of the decoder reads ``[BOS] y_1 .. y_t`` and predicts ``y_{t+1}``.
    """
    bos = np.full((target_ids.shape[0], 1), BOS_ID, dtype=target_ids.dtype)  # (B, 1)
    return np.concatenate([bos, target_ids[:, :-1]], axis=1)  # (B, 1) ++ (B, T-1) -> (B, T)


def seq2seq_loss(logits: np.ndarray, target_ids: np.ndarray) -> np.float32:
    """Mean cross-entropy over the target tokens, ``[EOS]`` included and ``[PAD]`` left out:
    ``torch.nn.CrossEntropyLoss(ignore_index=-100)`` with ``[PAD]`` labelled -100, as HF's MLM loss.

    logits (B, T, V), target_ids (B, T). The same loss for both decoders.
    """
    labels = np.where(target_ids == PAD_ID, IGNORE_INDEX, target_ids)  # (B, T): padding -> -100
    return masked_lm_loss(logits, labels)


def seq2seq_loss_backward(logits: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """Backward of :func:`seq2seq_loss`: ``d_logits = (softmax(logits) - onehot(y)) / K`` at each of the K target
    tokens (``[EOS]`` included), exactly 0 at ``[PAD]`` -- ``CrossEntropyLoss(ignore_index=-100)``'s gradient.

    logits (B, T, V), target_ids (B, T) -> d_logits (B, T, V).
    """
    labels = np.where(target_ids == PAD_ID, IGNORE_INDEX, target_ids)  # (B, T): padding -> -100
    return masked_lm_loss_backward(logits, labels)


def autoregressive_decoder(
    params: Params, config: Seq2SeqConfig, decoder_input_ids: np.ndarray, latents: np.ndarray,
    dropout: Optional[Dropout] = None, cache: Optional[Cache] = None, output_attentions: bool = False,
) -> Any:
    """The T5-like decoder: (B, T') decoder input ids and latents (B, N, D) -> logits (B, T', V), T' <= T.
    Each layer is an HF ``PerceiverAttention`` (causal self-attention, no MLP) then an HF ``PerceiverLayer``
    (cross-attention to the latents + MLP), after a ``PerceiverTextPreprocessor`` over the target ids.

    ``params``: the ``decoder`` sub-tree. Logits at position t depend on ``decoder_input_ids[:, :t+1]`` and
    the latents only (the causal mask). ``dropout``: training-mode dropout of every attention's probabilities
    (None: HF's ``eval()``). ``cache``: a dict to record what :func:`autoregressive_decoder_backward` needs.
    ``output_attentions=True``: ``(logits, self_attentions, cross_attentions)``, one (B, Hd, T', T') and one
    (B, Hd, T', N) probability array per layer.
    """
    H, T = config.num_decoder_heads, decoder_input_ids.shape[1]
    x, _ = text_preprocessor(params, decoder_input_ids, cache=cache)  # target embedding + positions: (B, T, E),
    #   HF's PerceiverTextPreprocessor over the target vocabulary
    bias = causal_mask(T)  # (1, 1, T, T)
    layer_caches = None if cache is None else cache.setdefault("layers", [])  # one record per layer
    attentions: tuple = ((), ())  # output_attentions: (self, cross) probabilities, layer by layer
    for layer in params["layers"]:
        layer_cache = None if layer_caches is None else {}
        x, self_probs = perceiver_attention(
            layer["self_attention"], x, H, use_query_residual=True, attention_mask=bias, dropout=dropout,
            cache=child(layer_cache, "self_attention"),
        )  # x + SelfAttention(LN(x)): (B, T, E)
        x, cross_probs = perceiver_layer(
            layer["cross_attention"], x, H, use_query_residual=True, hidden_act=config.encoder.hidden_act,
            inputs=latents, dropout=dropout, cache=child(layer_cache, "cross_attention"),
        )  # x + CrossAttention(LN(x), LN(z)), then + MLP(LN(.)): (B, T, E)
        attentions = (attentions[0] + (self_probs,), attentions[1] + (cross_probs,))
        if layer_caches is not None:
            layer_caches.append(layer_cache)
    if cache is not None:
        cache["hidden_states"] = x
    x = layer_norm(x, **params["layernorm"])  # (B, T, E)
    if cache is not None:
        cache["normed"] = x
    logits = linear(x, **params["lm_head"])  # (B, T, E) -> (B, T, V)
    return (logits, *attentions) if output_attentions else logits


def decoder_head_backward(d_logits: np.ndarray, params: Params, cache: Cache) -> tuple[np.ndarray, Params]:
    """Backward of both decoders' last two steps, ``logits = lm_head(LN(x))`` (``nn.Linear`` after
    ``nn.LayerNorm``): :func:`~npperceiver.functional.linear_backward`, then
    :func:`~npperceiver.functional.layer_norm_backward`.

    d_logits (B, T, V) -> d_x (B, T, E) and ``{"lm_head": ..., "layernorm": ...}``.
    """
    grads = {}
    d_normed, grads["lm_head"] = linear_backward(d_logits, cache.pop("normed"), **params["lm_head"])  # (B, T, E)
    d_x, grads["layernorm"] = layer_norm_backward(d_normed, cache.pop("hidden_states"),
                                                  **params["layernorm"])  # (B, T, E)
    return d_x, grads


def autoregressive_decoder_backward(
    d_logits: np.ndarray, params: Params, cache: Cache
) -> tuple[np.ndarray, Params]:
    """Backward of :func:`autoregressive_decoder`: the head's, then the layers in reverse -- each layer's
    cross-attention + MLP (:func:`~npperceiver.layers.perceiver_layer_backward`) and causal self-attention
    (:func:`~npperceiver.attention.perceiver_attention_backward`; the causal bias is a constant) -- then the
    embeddings': ``dE[v] = sum of d_x[b, t] over the uses of id v``, ``dP[t] = sum_b d_x[b, t]``.

    Every layer reads the same latents, so ``d_latents = sum over layers of each cross-attention's d_inputs``.
    d_logits: (B, T', V). Returns d_latents (B, N, D) and the gradients of the ``decoder`` sub-tree. The
    backward uses the cache up (as torch frees a graph's saved tensors).
    """
    d_x, grads = decoder_head_backward(d_logits, params, cache)  # (B, T, E)
    layer_caches, layer_grads = cache.pop("layers"), []
    d_latents = None
    for layer in reversed(params["layers"]):
        layer_cache = layer_caches.pop()
        d_x, d_z, cross_grads = perceiver_layer_backward(
            d_x, layer["cross_attention"], layer_cache.pop("cross_attention"))  # (B, T, E), (B, N, D)
        d_x, _, self_grads = perceiver_attention_backward(
            d_x, layer["self_attention"], layer_cache.pop("self_attention"))  # (B, T, E): residual included
        d_latents = d_z if d_latents is None else np.add(d_latents, d_z, out=d_latents)  # (B, N, D)
        layer_grads.append({"self_attention": self_grads, "cross_attention": cross_grads})
    grads["layers"] = layer_grads[::-1]  # first layer first, as in ``params``
    grads.update(text_preprocessor_backward(d_x, params, cache))  # the (target) embedding + positions: the same
    #   arithmetic as PerceiverTextPreprocessor's -- a scatter-add over the ids, a sum over the batch
    return d_latents, grads


def queries_decoder(
    params: Params, config: Seq2SeqConfig, latents: np.ndarray,
    dropout: Optional[Dropout] = None, cache: Optional[Cache] = None, output_attentions: bool = False,
) -> Any:
    """The Perceiver IO decoder: T learned queries read the latents (B, N, D) once -> logits (B, T, V).

    ``params``: the ``decoder`` sub-tree. HF ``PerceiverBasicDecoder`` (text.py's, as the MLM builds it, with
    the query residual as configured) with trainable position encodings as queries, then a layernorm and a
    linear head over the target vocabulary. ``dropout``,
    ``cache``: as in :func:`autoregressive_decoder`. ``output_attentions=True``: ``(logits, (), (cross_probs,))``,
    the cross-attention's (B, Hd, T, N).
    """
    query = decoder_query(params, latents.shape[0])  # the T learned queries: (T, E) -> (B, T, E)
    x, cross_probs = perceiver_basic_decoder(
        params, query, latents, num_heads=config.num_decoder_heads,
        use_query_residual=config.decoder_cross_attention.use_query_residual,
        hidden_act=config.encoder.hidden_act, dropout=dropout, cache=cache,
    )  # CrossAttention(LN(q), LN(z)) [+ q], then + MLP(LN(.)): (B, T, E)
    if cache is not None:
        cache["hidden_states"] = x
    x = layer_norm(x, **params["layernorm"])  # (B, T, E)
    if cache is not None:
        cache["normed"] = x
    logits = linear(x, **params["lm_head"])  # (B, T, E) -> (B, T, V)
    return (logits, (), (cross_probs,)) if output_attentions else logits


def queries_decoder_backward(d_logits: np.ndarray, params: Params, cache: Cache) -> tuple[np.ndarray, Params]:
    """Backward of :func:`queries_decoder`: the head's, the cross-attention layer's
    (:func:`~npperceiver.layers.perceiver_layer_backward`), and the queries': every batch row used the same
    learned queries, so ``d_queries = sum_b d_query[b]`` (HF ``PerceiverTrainablePositionEncoding``).

    d_logits: (B, T, V). Returns d_latents (B, N, D) and the gradients of the ``decoder`` sub-tree.
    """
    d_x, grads = decoder_head_backward(d_logits, params, cache)  # (B, T, E)
    d_query, d_latents, decoder_grads = perceiver_basic_decoder_backward(d_x, params, cache)  # (B, T, E), (B, N, D)
    grads.update(decoder_grads)
    grads.update(decoder_query_backward(d_query))  # (B, T, E) -> the queries' (T, E), summed over the batch
    return d_latents, grads


# ---------------------------------------------------------------------- the model
@dataclass
class Seq2SeqOutput:
    """``logits`` (B, T', V); ``latents`` (B, N, D), the encoder's output; ``loss`` when targets are given.

    With ``output_attentions=True``, the probabilities of every attention, as HF names them: ``attentions``
    the encoder's self-attentions (B, Hs, N, N); ``cross_attentions`` the encoder's cross-attention
    (B, Hc, N, M), then each decoder cross-attention (B, Hd, T', N); ``decoder_attentions`` each causal
    self-attention of the autoregressive decoder (B, Hd, T', T') (none for the queries decoder)."""

    logits: np.ndarray
    latents: np.ndarray
    loss: Optional[np.float32] = None
    attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None
    decoder_attentions: Optional[tuple] = None


class PerceiverSeq2Seq:
    """The encoder-decoder with its weights. Build it with :meth:`init` or :meth:`from_state_dict`.

    ``params["perceiver"]`` is the encoder, laid out as ``PerceiverForMaskedLM``'s (``self.encoder`` is a
    :class:`PerceiverModel` sharing its arrays); ``params["decoder"]`` the decoder.
    """

    def __init__(self, config: Seq2SeqConfig, params: dict) -> None:
        if not isinstance(config, Seq2SeqConfig):
            raise ValueError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
        self.config = config
        self.params = params
        self.encoder = PerceiverModel(config.encoder, params["perceiver"])

    @classmethod
    def init(cls, config: Seq2SeqConfig, seed: int = 0) -> "PerceiverSeq2Seq":
        """HF-style random weights from ``np.random.default_rng(seed)``: Linear weights, embeddings, latents and
        queries ~ N(0, initializer_range), biases 0, LayerNorms 1 and 0."""
        if not isinstance(config, Seq2SeqConfig):
            raise ValueError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
        rng = np.random.default_rng(seed)
        return cls(config, init_params(config.encoder, rng, shapes=seq2seq_param_shapes(config)))

    @classmethod
    def from_state_dict(cls, config: Seq2SeqConfig, state_dict: Mapping[str, Any]) -> "PerceiverSeq2Seq":
        """Load weights keyed as :func:`seq2seq_param_shapes` (e.g. the torch reference's ``state_dict()``)."""
        return cls(config, params_from_shapes(seq2seq_param_shapes(config), state_dict))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Key -> the model's arrays (not copies), in :func:`seq2seq_param_shapes` order."""
        flat = dict(flatten(self.params))
        return {k: flat[k] for k in seq2seq_param_shapes(self.config)}

    @property
    def dtype(self) -> np.dtype:
        """The dtype the model computes in: float32, or float64 after ``astype(np.float64)``."""
        return self.encoder.dtype

    def astype(self, dtype: Any) -> "PerceiverSeq2Seq":
        """A copy of the model with every parameter in ``dtype`` (``np.float64``: the gradient checks' mode)."""
        return type(self)(self.config, cast_params(self.params, dtype))

    def encode(self, source_ids: Any, source_mask: Optional[Any] = None, output_attentions: bool = False, *,
               dropout_rng: Optional[np.random.Generator] = None, cache: Optional[Cache] = None) -> Any:
        """Source byte ids (B, M) and keep-mask (B, M) -> latents (B, N, D); with ``output_attentions=True``,
        the encoder's :class:`PerceiverModel` output (``last_hidden_state``, ``attentions``,
        ``cross_attentions``). ``dropout_rng``, ``cache``: as in :meth:`__call__`."""
        enc = self.config.encoder
        source_ids = _check_ids(source_ids, "source_ids", enc.vocab_size, enc.max_position_embeddings)
        inputs, _ = text_preprocessor(self.params["perceiver"]["input_preprocessor"], source_ids,
                                      cache=child(cache, "input_preprocessor"))  # (B, M, C)
        out = self.encoder(inputs, attention_mask=source_mask, output_attentions=output_attentions,
                           dropout_rng=dropout_rng, cache=child(cache, "perceiver"))
        return out if output_attentions else out.last_hidden_state  # (B, N, D)

    def decode(self, latents: np.ndarray, decoder_input_ids: Optional[Any] = None, output_attentions: bool = False,
               *, dropout_rng: Optional[np.random.Generator] = None, cache: Optional[Cache] = None) -> Any:
        """Latents (B, N, D) -> logits: (B, T', V) for the autoregressive decoder's (B, T') input ids,
        (B, T, V) for the queries decoder (which takes no ids). ``output_attentions=True``: ``(logits,
        self_attentions, cross_attentions)`` (see :func:`autoregressive_decoder`). ``dropout_rng``, ``cache``:
        as in :meth:`__call__`."""
        cfg = self.config
        latents = np.asarray(latents)
        N, D = cfg.encoder.num_latents, cfg.encoder.d_latents
        if latents.ndim != 3 or latents.shape[1:] != (N, D) or not np.issubdtype(latents.dtype, np.floating):
            raise ValueError(f"latents must be a float array of shape (B, N, D) = (batch, {N}, {D}), got "
                             f"{latents.dtype} {latents.shape}")
        latents = latents.astype(self.dtype, copy=False)  # (B, N, D) in the model's dtype
        dropout = attention_dropout(cfg.encoder, dropout_rng)
        if cfg.decoder == "queries":
            if decoder_input_ids is not None:
                raise ValueError("the queries decoder reads no target tokens: pass decoder_input_ids=None")
            return queries_decoder(self.params["decoder"], cfg, latents, dropout=dropout,
                                   cache=child(cache, "decoder"), output_attentions=output_attentions)
        if decoder_input_ids is None:
            raise ValueError("the autoregressive decoder needs decoder_input_ids (B, T'), e.g. "
                             "shift_right(target_ids)")
        ids = _check_ids(decoder_input_ids, "decoder_input_ids", cfg.target_vocab_size, cfg.max_target_length)
        if ids.shape[0] != latents.shape[0]:
            raise ValueError(f"decoder_input_ids has {ids.shape[0]} rows but the batch has {latents.shape[0]}")
        return autoregressive_decoder(self.params["decoder"], cfg, ids, latents, dropout=dropout,
                                      cache=child(cache, "decoder"), output_attentions=output_attentions)

    def __call__(self, source_ids: Any, source_mask: Optional[Any] = None,
                 target_ids: Optional[Any] = None, output_attentions: bool = False, *, dropout_rng: Optional[np.random.Generator] = None,
                 cache: Optional[Cache] = None) -> Seq2SeqOutput:
        """Teacher-forced forward pass: logits (B, T, V) for every target position, and the loss when
        ``target_ids`` (B, T) -- ``[EOS]`` then ``[PAD]`` -- are given. The autoregressive decoder needs them
        (its input is ``shift_right(target_ids)``); the queries decoder predicts without them.

        ``dropout_rng``: None (the default) runs every attention as HF's ``eval()`` does; a
        ``np.random.Generator`` switches on training-mode dropout of every attention's probabilities, encoder
        and decoder, with the encoder config's ``attention_probs_dropout_prob`` (as the torch twin built from
        HF's modules with that config). ``cache``: a dict to record what :meth:`backward` needs.
        ``output_attentions=True`` returns every attention's probabilities too (see :class:`Seq2SeqOutput`)."""
        cfg = self.config
        encoded = self.encode(source_ids, source_mask, output_attentions, dropout_rng=dropout_rng, cache=cache)
        latents = encoded.last_hidden_state if output_attentions else encoded  # (B, N, D)
        if target_ids is not None:
            target_ids = _check_ids(target_ids, "target_ids", cfg.target_vocab_size, cfg.max_target_length)
            if target_ids.shape != (latents.shape[0], cfg.max_target_length):
                raise ValueError(f"target_ids must have shape (B, T) = {(latents.shape[0], cfg.max_target_length)}, "
                                 f"got {target_ids.shape}")
        if cfg.decoder == "autoregressive":
            if target_ids is None:
                raise ValueError("the autoregressive decoder is teacher-forced here: pass target_ids "
                                 "(or use generate())")
            decoded = self.decode(latents, shift_right(target_ids), output_attentions, dropout_rng=dropout_rng,
                                  cache=cache)  # (B, T, V)
        else:
            decoded = self.decode(latents, output_attentions=output_attentions, dropout_rng=dropout_rng,
                                  cache=cache)  # (B, T, V)
        logits = decoded[0] if output_attentions else decoded
        loss = seq2seq_loss(logits, target_ids) if target_ids is not None else None
        if cache is not None:
            cache["batch_size"] = latents.shape[0]
        if not output_attentions:
            return Seq2SeqOutput(logits, latents, loss)
        return Seq2SeqOutput(logits, latents, loss, attentions=encoded.attentions,
                             cross_attentions=(*encoded.cross_attentions, *decoded[2]),
                             decoder_attentions=decoded[1] if cfg.decoder == "autoregressive" else None)

    # ------------------------------------------------------------------ backward
    def backward(self, d_logits: Any, cache: Cache) -> dict[str, np.ndarray]:
        """The gradient of every parameter, given the gradient of a call's logits (B, T, V) and the ``cache`` it
        recorded; keyed like :meth:`state_dict`. The decoder's backward, then the encoder's (its latents'
        gradient is the sum of what every decoder cross-attention sent back), then the source embedding's.
        The backward uses the cache up: record a new one for each backward."""
        cfg, perceiver = self.config, self.params["perceiver"]
        d_logits = np.asarray(d_logits)
        T = cache["decoder"]["normed"].shape[1]
        expected = (cache["batch_size"], T, cfg.target_vocab_size)  # (B, T, V)
        if d_logits.shape != expected or not np.issubdtype(d_logits.dtype, np.floating):
            raise ValueError(f"d_logits must be a float array of the logits' shape (B, T, V) = {expected}, got "
                             f"{d_logits.dtype} {d_logits.shape}")
        d_logits = d_logits.astype(self.dtype, copy=False)
        decoder_backward = autoregressive_decoder_backward if cfg.decoder == "autoregressive" \
            else queries_decoder_backward
        d_latents, decoder_grads = decoder_backward(d_logits, self.params["decoder"], cache.pop("decoder"))  # (B, N, D)
        d_latent_array, d_inputs, encoder_grads = perceiver_encoder_backward(
            d_latents, perceiver["encoder"], cache["perceiver"].pop("encoder"))  # (B, N, D), (B, M, C)
        grads = {
            "perceiver": {
                "input_preprocessor": text_preprocessor_backward(
                    d_inputs, perceiver["input_preprocessor"], cache.pop("input_preprocessor")),  # bytes, positions
                "embeddings": {"latents": latent_array_backward(d_latent_array)},  # (B, N, D) -> (N, D)
                "encoder": encoder_grads,
            },
            "decoder": decoder_grads,
        }
        return grads_state_dict(grads, seq2seq_param_shapes(cfg))

    def loss_and_grads(
        self, source_ids: Any, source_mask: Any, target_ids: Any,
        dropout_rng: Optional[np.random.Generator] = None,
    ) -> tuple[np.float32, dict[str, np.ndarray]]:
        """The training loss and its gradient for every parameter: what ``loss.backward()`` leaves in each
        parameter's ``.grad`` for the torch twin.

        Teacher forcing: the autoregressive decoder reads ``shift_right(target_ids)`` (``[BOS]``, then the
        target less its last position), as :meth:`__call__` does. The loss is :func:`seq2seq_loss`, the mean
        cross-entropy over the target tokens, ``[EOS]`` included and the ``[PAD]`` after it left out.
        source_ids (B, M), source_mask (B, M) keep-mask (1 keeps a byte, 0 is padding; None keeps all),
        target_ids (B, T). ``dropout_rng``: see :meth:`__call__` (None: no dropout).
        Returns ``(loss, grads)``: the loss as ``np.float32`` (float64 in the float64 mode), and ``grads`` keyed
        exactly like :meth:`state_dict`, every key, arrays of the parameters' shapes and dtype.
        """
        if target_ids is None:
            raise ValueError("target_ids are required: (B, T) integers, [EOS] then [PAD]")
        cache: Cache = {}
        out = self(source_ids, source_mask, target_ids, dropout_rng=dropout_rng, cache=cache)
        target_ids = np.asarray(target_ids).astype(np.int64)  # checked by the call above: (B, T), in range
        loss, d_logits = out.loss, seq2seq_loss_backward(out.logits, target_ids)  # (B, T, V)
        del out  # the logits: not kept through the backward, as torch does not keep them
        return loss, self.backward(d_logits, cache)

    def generate(self, source_ids: Any, source_mask: Optional[Any] = None) -> np.ndarray:
        """Greedy decoding: target ids (B, T), ``[EOS]`` after the last token and ``[PAD]`` after that.

        Queries decoder: the argmax at every position at once. Autoregressive: one position at a time, each
        step re-running the decoder on the prefix so far (``[BOS]`` and the tokens chosen), until every row
        has produced ``[EOS]`` or T tokens. ``[PAD]`` and ``[BOS]`` are never chosen (they cannot stand before
        ``[EOS]``). Ties go to the lowest id (``argmax``), so decoding is deterministic.
        """
        cfg = self.config
        latents = self.encode(source_ids, source_mask)  # (B, N, D)
        B, T = latents.shape[0], cfg.max_target_length
        never = np.zeros(cfg.target_vocab_size, dtype=latents.dtype)  # (V,) added to every position's logits:
        never[[PAD_ID, BOS_ID]] = MASK_MIN  # a model never writes [PAD] or [BOS] before its [EOS]
        if cfg.decoder == "queries":
            out = (self.decode(latents) + never).argmax(axis=-1)  # (B, T, V) -> (B, T)
        else:
            out = np.full((B, T), PAD_ID, dtype=np.int64)  # (B, T) the chosen tokens
            prefix = np.full((B, 1), BOS_ID, dtype=np.int64)  # (B, 1) the decoder's input so far
            for t in range(T):
                out[:, t] = (self.decode(latents, prefix)[:, t] + never).argmax(axis=-1)  # (B, t+1, V) -> (B,)
                if t + 1 < T:
                    prefix = np.concatenate([prefix, out[:, t:t + 1]], axis=1)  # (B, t+2)
                if (out[:, : t + 1] == EOS_ID).any(axis=1).all():
                    break
        return _pad_after_eos(out)


def _pad_after_eos(ids: np.ndarray) -> np.ndarray:
    """Everything after a row's first ``[EOS]`` becomes ``[PAD]``, (B, T) -> (B, T)."""
    after = np.cumsum(ids == EOS_ID, axis=1) - (ids == EOS_ID) > 0  # (B, T) True past the first EOS
    return np.where(after, PAD_ID, ids)


def _check_ids(ids: Any, name: str, vocab_size: int, max_length: int) -> np.ndarray:
    """Integer ids (B, L) with 1 <= L <= max_length, each in [0, vocab_size)."""
    arr = np.asarray(ids)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] == 0 or not 1 <= arr.shape[1] <= max_length:
        raise ValueError(f"{name} must have shape (B, L) with B >= 1 and 1 <= L <= {max_length}, got {arr.shape}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        raise ValueError(f"{name} must lie in [0, {vocab_size}), found {int(arr[bad][0])}")
    return arr.astype(np.int64, copy=False)
