"""The text path: Perceiver IO masked language modelling, from byte ids to logits over bytes.

Jaegle et al., "Perceiver IO: A General Architecture for Structured Inputs & Outputs" (2021), section 4.1:
the language model reads raw UTF-8 bytes and, through learned output queries, predicts a byte for every
position. Mirrors HF ``PerceiverForMaskedLM`` and the modules it is built from
(``modeling_perceiver.py``, transformers 4.57.6): ``PerceiverTextPreprocessor`` (lines 2718-2752),
``PerceiverTrainablePositionEncoding`` (2583-2636), ``PerceiverBasicDecoder`` (1922-2105),
``PerceiverEmbeddingDecoder`` (2755-2772) and ``PerceiverForMaskedLM`` itself (859-989)::

    input_ids (B, M)
      -> text preprocessor: token embedding + position embedding              (B, M, C)
      -> the Perceiver encoder (``PerceiverModel``): latents                  (B, N, D)
    output queries: learned position encodings, the same for every input     (B, P, C)
      -> decoding cross-attention, queries attend to the latents              (B, P, C)
      -> embedding decoder: (B, P, C) @ token-embedding^T + bias              (B, P, V)

Dimension letters as elsewhere (B, M, C, N, D, H), plus P = ``max_position_embeddings`` (positions, and
output queries) and V = ``vocab_size`` (262: 6 special tokens + 256 bytes).

HF QUIRKS reproduced here (each one is tested against HF):

* The output queries do not depend on the input: logits always have shape (B, P, V), whatever M is;
  predictions for position i are read at ``logits[:, i]``, positions M..P-1 included.
* The decoder ignores the input padding mask. ``PerceiverModel`` hands the inverted ``attention_mask`` to
  the decoder as ``query_mask``, which passes it to its cross-attention as ``attention_mask``; a
  cross-attention uses ``inputs_mask`` instead (``None`` here), so **no mask reaches the decoder**. This
  is harmless: the decoder attends to the latents, never to the (padded) inputs.
* The decoding cross-attention has 8 heads and query/key width 256 (``8 * 32``) whatever the config says,
  value width ``d_model`` and no query residual; so ``d_model`` must be divisible by 8.
* There is no output embedding matrix: logits are made with the *input* token embedding (tied by use).

Training: every piece has its backward right after it, and :meth:`PerceiverForMaskedLM.loss_and_grads`
gives the loss and the gradient of every parameter (``docs/training.md``). The tied token embedding gets
one gradient, the sum of its two uses (looking up the inputs, making the logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from .attention import Cache, Params, child
from .config import PerceiverConfig
from .encoder import latent_array_backward, perceiver_encoder_backward
from .functional import Dropout, linear, linear_backward, softmax
from .layers import perceiver_layer, perceiver_layer_backward
from .masks import check_keep_mask, invert_attention_mask
from .model import PerceiverModel, attention_dropout, cast_params, grads_state_dict
from .dims import AttentionDims
from .tokenizer import MASK_ID
from .weights import PREFIX, layer_param_shapes, flatten, init_params, param_shapes, params_from_shapes

#: HF ``PerceiverForMaskedLM``: the decoding cross-attention's head count and query/key width, fixed.
MLM_DECODER_HEADS = 8
MLM_DECODER_QK_CHANNELS = 8 * 32
#: Labels equal to this are left out of the loss (``torch.nn.CrossEntropyLoss``'s ``ignore_index``).
IGNORE_INDEX = -100


# ---------------------------------------------------------------------- sizes and parameter names
def decoder_attention_dims(config: PerceiverConfig) -> AttentionDims:
    """Widths of the MLM's decoding cross-attention (HF ``PerceiverBasicDecoder.decoding_cross_attention``):
    queries of width C attend to latents of width D; qk 256, v = C, 8 heads, output C, MLP C -> C -> C."""
    C = config.d_model
    return AttentionDims(
        is_cross=True, num_heads=MLM_DECODER_HEADS, q_dim=C, kv_dim=config.d_latents,
        qk_channels=MLM_DECODER_QK_CHANNELS, v_channels=C, output_channels=C,
        widening_factor=1, use_query_residual=False,
    )


def check_mlm_config(config: PerceiverConfig) -> None:
    """What ``PerceiverForMaskedLM`` needs beyond a valid encoder config: ``d_model`` divisible by 8."""
    if not isinstance(config, PerceiverConfig):
        raise ValueError(f"config must be a PerceiverConfig, got {type(config).__name__}")
    if config.d_model % MLM_DECODER_HEADS:
        raise ValueError(
            f"PerceiverForMaskedLM needs d_model divisible by {MLM_DECODER_HEADS} (its decoder splits the "
            f"value width d_model over {MLM_DECODER_HEADS} heads), got d_model={config.d_model}"
        )


def mlm_param_shapes(config: PerceiverConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of HF ``PerceiverForMaskedLM(config)``, by state-dict key, in HF order."""
    C, P, V = config.d_model, config.max_position_embeddings, config.vocab_size
    shapes = {
        f"{PREFIX}input_preprocessor.embeddings.weight": (V, C),
        f"{PREFIX}input_preprocessor.position_embeddings.weight": (P, C),
    }
    shapes.update({PREFIX + key: shape for key, shape in param_shapes(config).items()})  # the encoder
    shapes[f"{PREFIX}decoder.output_position_encodings.position_embeddings"] = (P, C)
    shapes.update(layer_param_shapes(f"{PREFIX}decoder.decoding_cross_attention", decoder_attention_dims(config)))
    shapes["embedding_decoder.bias"] = (V,)
    return shapes


# ---------------------------------------------------------------------- the pieces, bottom up
def text_preprocessor(
    params: Params, input_ids: np.ndarray, cache: Optional[Cache] = None
) -> tuple[np.ndarray, np.ndarray]:
    """HF ``PerceiverTextPreprocessor.forward``: token embedding plus learned position embedding.

    params: ``{"embeddings": {"weight": (V, C)}, "position_embeddings": {"weight": (P, C)}}``.
    input_ids: integers in [0, V), shape (B, M) with M <= P.
    Returns the encoder inputs (B, M, C) and the embeddings without positions (B, M, C).
    """
    positions = params["position_embeddings"]["weight"]  # (P, C)
    M = input_ids.shape[1]
    if M > positions.shape[0]:
        raise ValueError(
            f"input_ids has {M} tokens but the model has only max_position_embeddings={positions.shape[0]} "
            f"positions; truncate the text (tokenizer(..., truncation=True, max_length={positions.shape[0]}))"
        )
    tokens = params["embeddings"]["weight"][input_ids]  # (V, C)[(B, M)] -> (B, M, C)
    if cache is not None:
        cache["input_ids"] = input_ids
    return tokens + positions[:M], tokens  # (B, M, C) + (M, C): position m for token m


def text_preprocessor_backward(d_inputs: np.ndarray, params: Params, cache: Cache) -> Params:
    """Backward of :func:`text_preprocessor` (of its first output, the encoder inputs):
    ``dE[v] = sum of d_inputs[b, m] over every (b, m) with input_ids[b, m] == v`` (a scatter-add: a token
    seen twice gets both gradients, an unseen one gets 0); ``dP[m] = sum_b d_inputs[b, m]`` for m < M, 0 beyond.

    d_inputs: (B, M, C). Returns ``{"embeddings": {"weight": (V, C)}, "position_embeddings": {"weight": (P, C)}}``.
    """
    input_ids = cache["input_ids"]  # (B, M)
    d_tokens = embedding_backward(d_inputs, input_ids, params["embeddings"]["weight"].shape[0])  # (V, C)
    d_positions = np.zeros_like(params["position_embeddings"]["weight"])  # (P, C)
    d_positions[:input_ids.shape[1]] = d_inputs.sum(axis=0)  # (B, M, C) -> (M, C)
    return {"embeddings": {"weight": d_tokens}, "position_embeddings": {"weight": d_positions}}


def embedding_backward(d_out: np.ndarray, ids: np.ndarray, num_embeddings: int) -> np.ndarray:
    """Backward of an embedding lookup ``table[ids]`` (``torch.nn.Embedding``): ``d_table[v]`` is the sum of
    ``d_out`` over every position whose id is v -- a scatter-add (an id used twice gets both, an unused one 0).

    d_out (..., C), ids (...) -> d_table (num_embeddings, C). The sums ``np.add.at(d_table, ids, d_out)`` makes
    (to float rounding: the order of the additions differs), taken another way for speed: the rows sorted by
    id (a stable argsort), then each id's run summed by one ``np.add.reduceat``. ``np.add.at`` adds row by row;
    this is ~5x faster (B = 128 sources of M = 60 bytes, C = 64, one thread: 4.3 ms -> 0.8 ms, measured; about
    4% of a translation training step).
    """
    flat_ids = ids.reshape(-1)  # (R,) R = every position
    rows = d_out.reshape(-1, d_out.shape[-1])  # (R, C)
    order = np.argsort(flat_ids, kind="stable")  # (R,): the positions grouped by id, in order within an id
    sorted_ids = flat_ids[order]  # (R,)
    starts = np.flatnonzero(np.diff(sorted_ids, prepend=-1))  # (U,): where each of the U distinct ids' runs begins
    d_table = np.zeros((num_embeddings, rows.shape[1]), d_out.dtype)  # (V, C): 0 for every unused id
    d_table[sorted_ids[starts]] = np.add.reduceat(rows[order], starts, axis=0)  # (R, C) -> (U, C): each run's sum
    return d_table


def trainable_position_encoding(position_embeddings: np.ndarray, batch_size: int) -> np.ndarray:
    """HF ``PerceiverTrainablePositionEncoding.forward``: the learned (P, C) table, the same for each row.

    Returns a read-only broadcast view (B, P, C).
    """
    return np.broadcast_to(position_embeddings, (batch_size, *position_embeddings.shape))  # (P, C) -> (B, P, C)


def trainable_position_encoding_backward(d_out: np.ndarray) -> np.ndarray:
    """Backward of :func:`trainable_position_encoding`: the same table in every row, so
    ``d_table = sum_b d_out[b]``, (B, P, C) -> (P, C)."""
    return d_out.sum(axis=0)


def decoder_query(params: Params, batch_size: int) -> np.ndarray:
    """HF ``PerceiverBasicDecoder.decoder_query`` with trainable position encodings and no projection.

    The queries are the position encodings alone: they depend on nothing in the input, not even its
    length M. params: the ``decoder`` sub-tree. Returns (B, P, C).
    """
    return trainable_position_encoding(params["output_position_encodings"]["position_embeddings"], batch_size)


def decoder_query_backward(d_query: np.ndarray) -> Params:
    """Backward of :func:`decoder_query`: the queries' gradient (B, P, C), summed over the batch, is the
    gradient of the position encodings: ``{"output_position_encodings": {"position_embeddings": (P, C)}}``."""
    return {"output_position_encodings": {"position_embeddings": trainable_position_encoding_backward(d_query)}}


def perceiver_basic_decoder(
    params: Params,
    query: np.ndarray,
    z: np.ndarray,
    query_mask: Optional[np.ndarray] = None,
    num_heads: int = MLM_DECODER_HEADS,
    use_query_residual: bool = False,
    hidden_act: str = "gelu",
    dropout: Optional[Dropout] = None,
    cache: Optional[Cache] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """HF ``PerceiverBasicDecoder.forward`` as the MLM builds it (``final_project=False``).

    query: (B, P, C), the output queries; z: (B, N, D), the encoder's latents.
    HF QUIRK: ``query_mask`` is accepted and dropped, as in HF. It reaches the cross-attention as its
    ``attention_mask``, which a cross-attention replaces with its ``inputs_mask`` -- ``None`` here -- so
    the decoder attends to every latent whatever the mask. Passing it anyway keeps HF's call as it is.
    Returns the decoder output (B, P, C) (``final_layer`` is the identity) and the attention
    probabilities (B, H, P, N).
    """
    return perceiver_layer(
        params["decoding_cross_attention"], query, num_heads, use_query_residual=use_query_residual,
        hidden_act=hidden_act, attention_mask=query_mask, head_mask=None, inputs=z, inputs_mask=None,
        dropout=dropout, cache=child(cache, "decoding_cross_attention"),
    )  # (B, P, C), (B, H, P, N)


def perceiver_basic_decoder_backward(
    d_out: np.ndarray, params: Params, cache: Cache
) -> tuple[np.ndarray, np.ndarray, Params]:
    """Backward of :func:`perceiver_basic_decoder`: its one cross-attention layer's
    (:func:`~npperceiver.layers.perceiver_layer_backward`). The MLM's decoder has no query residual, so its
    queries get gradient only through ``layernorm1`` and the query projection; with the residual (the
    translation model's queries decoder), ``d_out`` reaches them directly too.

    d_out: (B, P, C). Returns d_query (B, P, C), d_z (B, N, D) and ``{"decoding_cross_attention": ...}``.
    """
    d_query, d_z, grads = perceiver_layer_backward(
        d_out, params["decoding_cross_attention"], cache["decoding_cross_attention"])
    return d_query, d_z, {"decoding_cross_attention": grads}


def embedding_decoder(hidden_states: np.ndarray, embedding_weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """HF ``PerceiverEmbeddingDecoder.forward``: ``logits = hidden_states @ E.T + bias``.

    A Linear layer whose weight is the input token embedding E (V, C): hidden_states (B, P, C) ->
    logits (B, P, V). ``bias`` (V,) is the decoder's only parameter.
    """
    return linear(hidden_states, embedding_weight, bias)  # (B, P, C) @ (C, V) + (V,) -> (B, P, V)


def embedding_decoder_backward(
    d_logits: np.ndarray, hidden_states: np.ndarray, embedding_weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of :func:`embedding_decoder`: ``d_hidden = d_logits @ E;  dE = d_logits^T hidden,
    d_bias = d_logits`` summed over B, P. ``dE`` is only this use's share of the token embedding's gradient:
    the caller adds the input lookup's (:func:`text_preprocessor_backward`).

    d_logits (B, P, V), hidden_states (B, P, C) -> d_hidden_states (B, P, C), dE (V, C), d_bias (V,).
    """
    d_hidden_states, grads = linear_backward(d_logits, hidden_states, embedding_weight)
    return d_hidden_states, grads["weight"], grads["bias"]


def masked_lm_loss(logits: np.ndarray, labels: np.ndarray) -> np.float32:
    """HF's MLM loss: ``CrossEntropyLoss()(logits.view(-1, V), labels.view(-1))``.

    The mean, over every position whose label is not -100, of ``-log softmax(logits)[label]``.
    logits (B, P, V) float32, labels (B, P) integers. HF QUIRK: with every label -100 the mean is over
    nothing and the loss is NaN, as torch returns.
    """
    V = logits.shape[-1]
    logits, labels = logits.reshape(-1, V), labels.reshape(-1)  # (B, P, V) -> (B*P, V); (B, P) -> (B*P,)
    keep = labels != IGNORE_INDEX  # (B*P,)
    if not keep.any():
        return np.float32(np.nan)
    logits, labels = logits[keep], labels[keep]  # (K, V), (K,)
    shifted = logits - logits.max(axis=-1, keepdims=True)  # (K, V), max-shifted: exp cannot overflow
    log_z = np.log(np.exp(shifted).sum(axis=-1))  # (K,) log of the softmax denominator
    picked = np.take_along_axis(shifted, labels[:, None], axis=-1)[:, 0]  # (K, V) -> (K,) the label's score
    return logits.dtype.type((log_z - picked).mean())  # float32 (float64 in the float64 mode)


def masked_lm_loss_backward(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Backward of :func:`masked_lm_loss`: ``d_logits = (softmax(logits) - onehot(label)) / K`` at each of the K
    positions whose label is not -100, and exactly 0 at the others (they are not in the loss).

    logits (B, P, V), labels (B, P) -> d_logits (B, P, V). With no label kept, every gradient is 0 (as torch
    gives, although the loss itself is NaN).
    """
    keep = labels != IGNORE_INDEX  # (B, P)
    d_logits = np.zeros_like(logits)  # (B, P, V)
    K = int(keep.sum())
    if K == 0:
        return d_logits
    kept = softmax(logits[keep])  # (K, V): the predicted distribution at each kept position
    kept[np.arange(K), labels[keep]] -= 1  # minus the one-hot label
    kept /= np.asarray(K, dtype=logits.dtype)  # the mean over K positions
    d_logits[keep] = kept
    return d_logits


# ---------------------------------------------------------------------- the model
@dataclass
class PerceiverMaskedLMOutput:
    """HF ``PerceiverMaskedLMOutput``. ``logits`` (B, P, V) always; ``loss`` when labels are given;
    ``hidden_states`` (num_blocks * (S + 1) entries (B, N, D)) and ``attentions`` (L entries (B, Hs, N, N))
    of the encoder when asked for; ``cross_attentions`` = (encoder (B, Hc, N, M), decoder (B, 8, P, N))."""

    loss: Optional[np.float32] = None
    logits: Optional[np.ndarray] = None
    hidden_states: Optional[tuple[np.ndarray, ...]] = None
    attentions: Optional[tuple[np.ndarray, ...]] = None
    cross_attentions: Optional[tuple[np.ndarray, ...]] = None


class PerceiverForMaskedLM:
    """The Perceiver IO byte-level masked language model (HF ``PerceiverForMaskedLM``).

    Build it with :meth:`init` (random, HF-style) or :meth:`from_state_dict` (HF weights, keys as HF's
    ``PerceiverForMaskedLM.state_dict()``), then call it on token ids from :class:`PerceiverTokenizer`.
    ``params`` is a nested dict laid out like HF's module tree: ``params["perceiver"]["input_preprocessor"]``,
    ``["embeddings"]``, ``["encoder"]``, ``["decoder"]`` and ``params["embedding_decoder"]``.
    ``self.perceiver`` is the encoder, a :class:`PerceiverModel` sharing these arrays (HF's
    ``model.perceiver`` also holds the preprocessor and decoder).
    """

    def __init__(self, config: PerceiverConfig, params: dict) -> None:
        check_mlm_config(config)
        self.config = config
        self.params = params
        self.perceiver = PerceiverModel(config, params["perceiver"])

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(cls, config: PerceiverConfig, seed: int = 0) -> "PerceiverForMaskedLM":
        """A model with HF-style random weights drawn from ``np.random.default_rng(seed)``: Linear weights,
        embeddings, latents and position encodings ~ N(0, initializer_range), biases 0, LayerNorms 1 and 0."""
        check_mlm_config(config)
        rng = np.random.default_rng(seed)
        return cls(config, init_params(config, rng, shapes=mlm_param_shapes(config)))

    @classmethod
    def from_state_dict(
        cls, config: PerceiverConfig, state_dict: Mapping[str, Any], strict: bool = True
    ) -> "PerceiverForMaskedLM":
        """Load HF weights, keys as in ``PerceiverForMaskedLM.state_dict()`` (``perceiver.`` prefixes and
        ``embedding_decoder.bias``); e.g. ``load_weights("model.safetensors")``. Missing, unexpected (unless
        ``strict=False``) or wrongly shaped tensors raise a ``ValueError`` listing every one of them."""
        check_mlm_config(config)
        return cls(config, params_from_shapes(mlm_param_shapes(config), state_dict, strict=strict))

    def state_dict(self) -> dict[str, np.ndarray]:
        """HF key names -> the model's arrays (not copies), in HF order."""
        flat = dict(flatten(self.params))
        return {k: flat[k] for k in mlm_param_shapes(self.config)}

    @property
    def dtype(self) -> np.dtype:
        """The dtype the model computes in: float32, or float64 after ``astype(np.float64)``."""
        return self.perceiver.dtype

    def astype(self, dtype: Any) -> "PerceiverForMaskedLM":
        """A copy of the model with every parameter in ``dtype`` (``np.float64``: the gradient checks' mode)."""
        return type(self)(self.config, cast_params(self.params, dtype))

    # ------------------------------------------------------------------ forward
    def __call__(
        self,
        input_ids: Any,
        attention_mask: Optional[Any] = None,
        head_mask: Optional[Any] = None,
        labels: Optional[Any] = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        *,
        dropout_rng: Optional[np.random.Generator] = None,
        cache: Optional[Cache] = None,
    ) -> PerceiverMaskedLMOutput:
        """Predict a byte for each of the P output positions -- HF ``PerceiverForMaskedLM.forward``.

        Parameters
        ----------
        input_ids : integers in [0, vocab_size), shape (B, M) with M <= max_position_embeddings.
        attention_mask : shape (B, M), 1 keeps a token, 0 drops it (padding); used by the encoder's
            cross-attention only (see the module docstring).
        head_mask : shape (Hs,) or (L, Hs); multiplies the encoder's self-attention probabilities
            (transformers 4.x semantics, see ``masks.py``). The decoder never gets one.
        labels : integers, shape (B, P) with P = max_position_embeddings; -100 leaves a position out of the
            loss. The loss is the mean cross-entropy over the other positions.
        output_attentions, output_hidden_states : also return the probabilities / the encoder's latents.
        dropout_rng : None (the default): no dropout, as HF's ``eval()``. A ``np.random.Generator``: training-mode
            dropout of every attention's probabilities (encoder and decoder), p = ``attention_probs_dropout_prob``.
        cache : a dict to record what :meth:`backward` needs; None records nothing.
        """
        cfg = self.config
        input_ids = _check_input_ids(input_ids, cfg.vocab_size, cfg.max_position_embeddings)  # (B, M) int64
        B, M = input_ids.shape
        if labels is not None:
            labels = _check_labels(labels, (B, cfg.max_position_embeddings), cfg.vocab_size)  # (B, P) int64
        perceiver = self.params["perceiver"]

        inputs, _ = text_preprocessor(
            perceiver["input_preprocessor"], input_ids, cache=child(cache, "input_preprocessor"))  # (B, M, C)
        encoded = self.perceiver(
            inputs, attention_mask=attention_mask, head_mask=head_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            dropout_rng=dropout_rng, cache=child(cache, "perceiver"),
        )  # latents (B, N, D)

        # HF hands the inverted input mask to the decoder as query_mask, which drops it (see docstrings).
        query_mask = None
        if attention_mask is not None:
            query_mask = invert_attention_mask(check_keep_mask(attention_mask, "attention_mask", (B, M), "(B, M)"))
        query = decoder_query(perceiver["decoder"], B)  # (P, C) -> (B, P, C)
        decoded, decoder_probs = perceiver_basic_decoder(
            perceiver["decoder"], query, encoded.last_hidden_state, query_mask=query_mask,
            hidden_act=cfg.hidden_act, dropout=attention_dropout(cfg, dropout_rng), cache=child(cache, "decoder"),
        )  # (B, P, C), (B, 8, P, N)
        logits = embedding_decoder(
            decoded, perceiver["input_preprocessor"]["embeddings"]["weight"], self.params["embedding_decoder"]["bias"]
        )  # (B, P, C) -> (B, P, V)
        if cache is not None:
            cache.update(decoded=decoded, batch_size=B)

        loss = masked_lm_loss(logits, labels) if labels is not None else None
        cross_attentions = encoded.cross_attentions + (decoder_probs,) if output_attentions else None
        return PerceiverMaskedLMOutput(loss, logits, encoded.hidden_states, encoded.attentions, cross_attentions)

    # ------------------------------------------------------------------ backward
    def backward(self, d_logits: Any, cache: Cache) -> dict[str, np.ndarray]:
        """The gradient of every parameter, given the gradient of a call's logits (B, P, V) and the ``cache`` it
        recorded; keyed like :meth:`state_dict`. :meth:`loss_and_grads` calls it with the loss's gradient.
        The backward uses the cache up (as torch frees the saved tensors of a graph it went back through)."""
        cfg, perceiver = self.config, self.params["perceiver"]
        B = cache["batch_size"]
        d_logits = _check_d_logits(d_logits, (B, cfg.max_position_embeddings, cfg.vocab_size), self.dtype)
        token_embedding = perceiver["input_preprocessor"]["embeddings"]["weight"]  # (V, C)

        d_decoded, d_token_embedding, d_bias = embedding_decoder_backward(
            d_logits, cache.pop("decoded"), token_embedding)  # (B, P, C), (V, C), (V,)
        d_query, d_latents, decoder_grads = perceiver_basic_decoder_backward(
            d_decoded, perceiver["decoder"], cache.pop("decoder"))  # (B, P, C), (B, N, D); records used up
        decoder_grads.update(decoder_query_backward(d_query))  # the output queries' position encodings
        encoder_cache = cache["perceiver"]["encoder"]
        d_latent_array, d_inputs, encoder_grads = perceiver_encoder_backward(
            d_latents, perceiver["encoder"], encoder_cache)  # (B, N, D), (B, M, C)
        preprocessor_grads = text_preprocessor_backward(
            d_inputs, perceiver["input_preprocessor"], cache["input_preprocessor"])
        preprocessor_grads["embeddings"]["weight"] += d_token_embedding  # the tied weight: one gradient, both uses

        grads = {
            "perceiver": {
                "input_preprocessor": preprocessor_grads,
                "embeddings": {"latents": latent_array_backward(d_latent_array)},
                "encoder": encoder_grads,
                "decoder": decoder_grads,
            },
            "embedding_decoder": {"bias": d_bias},
        }
        return grads_state_dict(grads, mlm_param_shapes(cfg))

    def loss_and_grads(
        self,
        input_ids: Any,
        labels: Any,
        attention_mask: Optional[Any] = None,
        head_mask: Optional[Any] = None,
        *,
        dropout_rng: Optional[np.random.Generator] = None,
    ) -> tuple[np.float32, dict[str, np.ndarray]]:
        """HF's masked-LM loss and its gradient for every parameter: what ``loss.backward()`` leaves in each
        parameter's ``.grad`` for HF's model in ``eval()`` mode.

        Arguments as in :meth:`__call__`; ``labels`` (B, P) is required (-100 leaves a position out).
        Returns ``(loss, grads)``, ``grads`` keyed exactly like :meth:`state_dict`. With every label -100 the
        loss is NaN and every gradient 0, as in torch. ``dropout_rng``: see :meth:`__call__`.
        """
        if labels is None:
            raise ValueError("labels are required: (B, P) integers, -100 where a position is not in the loss")
        cache: Cache = {}
        out = self(input_ids, attention_mask=attention_mask, head_mask=head_mask, labels=labels,
                   dropout_rng=dropout_rng, cache=cache)
        labels = np.asarray(labels).astype(np.int64)  # checked by the call above: (B, P), in range
        loss, d_logits = out.loss, masked_lm_loss_backward(out.logits, labels)  # (B, P, V)
        del out  # the logits (B, P, V): not kept through the backward, as torch does not keep them
        return loss, self.backward(d_logits, cache)


# ---------------------------------------------------------------------- fill-mask
@dataclass(frozen=True)
class MaskedSpan:
    """One maximal run of ``[MASK]`` tokens in a sequence, and the model's predictions for it."""

    start: int  # first masked position, counted in input_ids ([CLS] is position 0)
    stop: int  # one past the last masked position
    top_ids: np.ndarray  # (stop - start, k) the k most likely ids at each position, best first
    top_probs: np.ndarray  # (stop - start, k) their probabilities (softmax over the vocabulary)

    @property
    def greedy_ids(self) -> np.ndarray:
        """The most likely id at each position, shape (stop - start,)."""
        return self.top_ids[:, 0]


def masked_spans(input_ids: Any) -> list[tuple[int, int]]:
    """``(start, stop)`` of every maximal run of ``[MASK]`` (id 3) in a 1-D sequence of ids."""
    is_mask = np.asarray(input_ids) == MASK_ID  # (M,)
    edges = np.diff(np.concatenate([[0], is_mask.astype(np.int8), [0]]))  # (M + 1,): +1 opens a run, -1 closes it
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def fill_mask(model: PerceiverForMaskedLM, input_ids: Any, top_k: int = 5) -> tuple[list[MaskedSpan], np.ndarray]:
    """Predict every ``[MASK]`` of one sequence, as HF's fill-mask example does.

    input_ids: 1-D, e.g. ``PerceiverTokenizer()(text)["input_ids"]`` (HF's example pads to
    ``max_length`` with an attention mask; padding is inert, so it is not needed here).
    Returns the masked spans with the ``top_k`` predictions at each position, and ``input_ids`` with every
    ``[MASK]`` replaced by its most likely id (greedy: ``logits[0, i].argmax()`` in HF's example).
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be one sequence, shape (M,), got {ids.shape}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= model.config.vocab_size:
        raise ValueError(f"top_k must be an integer in [1, vocab_size={model.config.vocab_size}], got {top_k!r}")
    logits = model(ids[None]).logits[0]  # (1, M) -> (1, P, V) -> (P, V)
    spans, filled = [], ids.astype(np.int64).copy()
    for start, stop in masked_spans(ids):
        probs = softmax(logits[start:stop], axis=-1)  # (K, V), K masked positions
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]  # (K, V) -> (K, k), best first
        top_probs = np.take_along_axis(probs, top, axis=-1)  # (K, V) -> (K, k), the probabilities of `top`
        spans.append(MaskedSpan(start, stop, top, top_probs))
        filled[start:stop] = top[:, 0]
    return spans, filled


# ---------------------------------------------------------------------- input checks
def _check_int_array(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_input_ids(input_ids: Any, vocab_size: int, max_positions: int) -> np.ndarray:
    """input_ids as int64 (B, M), each in [0, vocab_size), 1 <= M <= max_position_embeddings."""
    arr = _check_int_array(input_ids, "input_ids")
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"input_ids must have shape (B, M) = (batch, tokens) with B, M >= 1, got {arr.shape}"
            + (" (wrap a single sequence in a list: [ids])" if arr.ndim == 1 else "")
        )
    if arr.shape[1] > max_positions:
        raise ValueError(
            f"input_ids has {arr.shape[1]} tokens but the model accepts at most max_position_embeddings="
            f"{max_positions}; truncate the text (tokenizer(..., truncation=True, max_length={max_positions}))"
        )
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}), found {int(arr[bad][0])}")
    return arr


def _check_d_logits(value: Any, shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    """The gradient of the logits handed to a backward: real, finite, shape (B, P, V)."""
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"d_logits must be a real-valued array, got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"d_logits must have the shape of the logits (B, P, V) = {tuple(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"d_logits must be finite, found {int(np.sum(~np.isfinite(arr)))} NaN/inf value(s)")
    return arr.astype(dtype, copy=False)


def _check_labels(labels: Any, shape: tuple[int, int], vocab_size: int) -> np.ndarray:
    """labels as int64 (B, P), each in [0, vocab_size) or -100."""
    arr = _check_int_array(labels, "labels")
    if arr.shape != shape:
        raise ValueError(
            f"labels must have shape (B, P) = {shape} with P = max_position_embeddings (the model predicts "
            f"every position), got {arr.shape}; pad them with {IGNORE_INDEX} to leave positions out of the loss"
        )
    bad = ((arr < 0) | (arr >= vocab_size)) & (arr != IGNORE_INDEX)
    if bad.any():
        raise ValueError(
            f"labels must lie in [0, vocab_size={vocab_size}) or be {IGNORE_INDEX}, found {int(arr[bad][0])}"
        )
    return arr
