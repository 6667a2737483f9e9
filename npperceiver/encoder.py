"""The latent array and the Perceiver encoder: one cross-attention, then a weight-shared block of
latent self-attention layers applied ``num_blocks`` times.

Jaegle et al., "Perceiver: General Perception with Iterative Attention" (2021) and "Perceiver IO: A General
Architecture for Structured Inputs & Outputs" (2021). Mirrors HF ``PerceiverEmbeddings`` and
``PerceiverEncoder`` (``modeling_perceiver.py``, transformers 4.57.6).

Masks here are *additive* and already inverted, exactly as HF's encoder receives them (see ``masks.py``):
``inputs_mask`` (B, 1, 1, M) for the cross-attention, ``attention_mask`` (B, 1, 1, N) for every
self-attention layer, and ``head_mask`` (L, 1, Hs, 1, 1) or None.

Backward: :func:`perceiver_encoder_backward` walks the layer applications in reverse; the shared block's
gradients are *summed* over its ``num_blocks`` applications, and :func:`latent_array_backward` sums the
latents' gradient over the batch it was broadcast to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .attention import Cache, Params, child, perceiver_self_output, streaming_cross_attention
from .config import PerceiverConfig
from .functional import Dropout
from .layers import feed_forward, perceiver_layer, perceiver_layer_backward


@dataclass
class EncoderOutput:
    """What the encoder returns (HF ``BaseModelOutputWithCrossAttentions``)."""

    last_hidden_state: np.ndarray  # (B, N, D)
    hidden_states: Optional[tuple[np.ndarray, ...]] = None  # num_blocks * (S + 1) entries of (B, N, D)
    attentions: Optional[tuple[np.ndarray, ...]] = None  # L entries of (B, Hs, N, N)
    cross_attentions: Optional[tuple[np.ndarray, ...]] = None  # one entry (B, Hc, N, M)


def latent_array(latents: np.ndarray, batch_size: int) -> np.ndarray:
    """HF ``PerceiverEmbeddings.forward``: the learned (N, D) latents, the same for every batch row.

    Returns a read-only broadcast view (B, N, D); nothing is copied.
    """
    return np.broadcast_to(latents, (batch_size, *latents.shape))  # (N, D) -> (B, N, D)


def latent_array_backward(d_hidden_states: np.ndarray) -> np.ndarray:
    """Backward of :func:`latent_array`: every batch row used the same latents, so ``d_latents = sum_b d[b]``,
    (B, N, D) -> (N, D)."""
    return d_hidden_states.sum(axis=0)


def perceiver_encoder(
    params: Params,
    config: PerceiverConfig,
    hidden_states: np.ndarray,
    attention_mask: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    inputs: Optional[np.ndarray] = None,
    inputs_mask: Optional[np.ndarray] = None,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
    cross_attention_chunk_size: Optional[int] = None,
    dropout: Optional[Dropout] = None,
    cache: Optional[Cache] = None,
) -> EncoderOutput:
    """HF ``PerceiverEncoder.forward``, call by call.

    Parameters
    ----------
    params : the ``encoder`` sub-tree: ``{"cross_attention": ..., "self_attends": [S layers]}``.
    hidden_states : shape (B, N, D), the latent array.
    attention_mask : additive, broadcastable to (B, Hs, N, N); added in every self-attention layer and
        ignored by the cross-attention.
    head_mask : shape (L, 1, Hs, 1, 1) or None. HF QUIRK: layer ``i`` of *every* block reads row ``i``,
        so rows ``S .. L-1`` are never used.
    inputs : shape (B, M, C).
    inputs_mask : additive, broadcastable to (B, Hc, N, M); used only by the cross-attention.
    output_attentions : also return every layer's probabilities.
    cross_attention_chunk_size : stream the cross-attention over the inputs this many at a time (an
        online softmax, :func:`~npperceiver.attention.streaming_cross_attention`), so its memory stays flat
        as M grows; same result to float32 rounding. With a ``cache`` (training), its backward streams too,
        recomputing each chunk, so training memory stays flat as well. Not used with ``output_attentions``
        (the (B, Hc, N, M) probabilities are then whole anyway), with dropout, or when the inputs fit in one
        chunk.
    dropout : training-mode dropout on every attention's probabilities; None (the default) is HF's ``eval()``.
    cache : a dict to record what :func:`perceiver_encoder_backward` needs; None records nothing.
    """
    cross, self_attends = params["cross_attention"], params["self_attends"]
    all_hidden_states = () if output_hidden_states else None
    all_self_attentions = () if output_attentions else None

    # The cross-attention: latents attend to the inputs (the latent attention_mask is not used here).
    M = inputs.shape[1]
    streamed = cross_attention_chunk_size is not None and M > cross_attention_chunk_size
    if streamed and not output_attentions and dropout is None:
        hidden_states, cross_probs = _streamed_cross_attention_layer(
            cross, config, hidden_states, inputs, inputs_mask, cross_attention_chunk_size,
            cache=child(cache, "cross_attention")), None
    else:
        hidden_states, cross_probs = perceiver_layer(
            cross, hidden_states, config.num_cross_attention_heads,
            use_query_residual=config.use_query_residual, hidden_act=config.hidden_act,
            attention_mask=attention_mask, head_mask=None, inputs=inputs, inputs_mask=inputs_mask,
            dropout=dropout, cache=child(cache, "cross_attention"),
        )  # (B, N, D), (B, Hc, N, M)
    all_cross_attentions = (cross_probs,) if output_attentions else None

    # The block of self-attention layers, applied num_blocks times with the same weights.
    applications = None if cache is None else cache.setdefault("self_attends", [])  # one cache per application
    for _ in range(config.num_blocks):
        for i, layer in enumerate(self_attends):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)  # the input of every layer
            layer_cache = None if applications is None else {"index": i}
            hidden_states, probs = perceiver_layer(
                layer, hidden_states, config.num_self_attention_heads, use_query_residual=True,
                hidden_act=config.hidden_act, attention_mask=attention_mask,
                head_mask=None if head_mask is None else head_mask[i],  # row i, whatever the block
                dropout=dropout, cache=layer_cache,
            )  # (B, N, D), (B, Hs, N, N)
            if applications is not None:
                applications.append(layer_cache)
            if output_attentions:
                all_self_attentions += (probs,)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)  # end of block (== the next block's first input)

    return EncoderOutput(hidden_states, all_hidden_states, all_self_attentions, all_cross_attentions)


def perceiver_encoder_backward(
    d_last_hidden_state: np.ndarray, params: Params, cache: Cache
) -> tuple[np.ndarray, np.ndarray, Params]:
    """Backward of :func:`perceiver_encoder`: the self-attention layers in reverse order of application, then
    the cross-attention.

    The block's S layers were applied ``num_blocks`` times with the same weights, so each weight's gradient
    is the sum over its applications: ``dW_i = sum_b dW_i(application b*S + i)``. A ``head_mask`` row i that
    zeroes head h silences h in layer i of *every* block, so that head's slice of layer i's (shared) q/k/v
    weights gets no gradient from any application.

    The backward *uses up* ``cache``, as torch frees a graph's saved tensors during ``backward()``: each
    layer's record is dropped as soon as its backward has run, so the activations of the layers already
    done are freed while the gradients of the rest are made (the step's peak memory is the gradients plus
    what is left to go back through, not the gradients plus every activation). Record a new cache for
    each backward.

    d_last_hidden_state: (B, N, D). Returns d_hidden_states (B, N, D) -- the gradient of the latent array
    as broadcast, see :func:`latent_array_backward` -- d_inputs (B, M, C), and the gradients of ``params``
    (``{"cross_attention": ..., "self_attends": [S layers]}``).
    """
    self_attends = params["self_attends"]
    self_grads: list[Optional[Params]] = [None] * len(self_attends)
    d_hidden_states = d_last_hidden_state
    applications = cache["self_attends"]
    while applications:  # last application first; each record is dropped once used (see below)
        i = applications[-1]["index"]
        d_hidden_states, _, grads = perceiver_layer_backward(d_hidden_states, self_attends[i], applications.pop())
        self_grads[i] = grads if self_grads[i] is None else _accumulate(self_grads[i], grads)  # shared: sum
    d_hidden_states, d_inputs, cross_grads = perceiver_layer_backward(
        d_hidden_states, params["cross_attention"], cache.pop("cross_attention"))  # (B, N, D), (B, M, C)
    return d_hidden_states, d_inputs, {"cross_attention": cross_grads, "self_attends": self_grads}


def _accumulate(total: Params, grads: Params) -> Params:
    """``total += grads``, leaf by leaf, over two nested dicts laid out alike; returns ``total``."""
    for name, value in grads.items():
        if isinstance(value, dict):
            _accumulate(total[name], value)
        else:
            total[name] += value
    return total


def _streamed_cross_attention_layer(
    params: Params, config: PerceiverConfig, hidden_states: np.ndarray, inputs: np.ndarray,
    inputs_mask: Optional[np.ndarray], chunk_size: int, cache: Optional[Cache] = None,
) -> np.ndarray:
    """``encoder.cross_attention`` -- the same ``perceiver_layer`` -- with its attention streamed over the
    inputs ``chunk_size`` at a time. (B, N, D) -> (B, N, D); no probabilities (they are never whole).

    ``cache`` is laid out as :func:`~npperceiver.layers.perceiver_layer`'s, so its backward is
    ``perceiver_layer_backward``; the streamed attention's part recomputes each chunk there
    (:func:`~npperceiver.attention.streaming_cross_attention_backward`), so training memory stays flat in M too."""
    attention = params["attention"]
    attention_cache = child(cache, "attention")
    context = streaming_cross_attention(
        attention["self"], hidden_states, inputs, config.num_cross_attention_heads, inputs_mask, chunk_size,
        cache=child(attention_cache, "self"),
    )  # (B, N, v)
    attention_output = perceiver_self_output(attention["output"], context,
                                             cache=child(attention_cache, "output"))  # (B, N, v) -> (B, N, D)
    if config.use_query_residual:
        attention_output += hidden_states  # (B, N, D)
    if attention_cache is not None:
        attention_cache["use_query_residual"] = config.use_query_residual
    layer_output = feed_forward(params, attention_output, config.hidden_act,
                                cache=child(cache, "feed_forward"))  # (B, N, D)
    layer_output += attention_output  # residual around the MLP
    return layer_output
