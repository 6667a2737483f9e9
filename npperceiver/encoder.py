"""The latent array and the Perceiver encoder: one cross-attention, then a weight-shared block of
latent self-attention layers applied ``num_blocks`` times.

Jaegle et al., "Perceiver: General Perception with Iterative Attention" (2021) and "Perceiver IO: A General
Architecture for Structured Inputs & Outputs" (2021). Mirrors HF ``PerceiverEmbeddings`` and
``PerceiverEncoder`` (``modeling_perceiver.py``, transformers 4.57.6).

Masks here are *additive* and already inverted, exactly as HF's encoder receives them (see ``masks.py``):
``inputs_mask`` (B, 1, 1, M) for the cross-attention, ``attention_mask`` (B, 1, 1, N) for every
self-attention layer, and ``head_mask`` (L, 1, Hs, 1, 1) or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .attention import Params, perceiver_self_output, streaming_cross_attention
from .config import PerceiverConfig
from .layers import feed_forward, perceiver_layer


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
        as M grows; same result to float32 rounding. Not used with ``output_attentions`` (the
        (B, Hc, N, M) probabilities are then whole anyway) or when the inputs fit in one chunk.
    """
    cross, self_attends = params["cross_attention"], params["self_attends"]
    all_hidden_states = () if output_hidden_states else None
    all_self_attentions = () if output_attentions else None

    # The cross-attention: latents attend to the inputs (the latent attention_mask is not used here).
    M = inputs.shape[1]
    if cross_attention_chunk_size is not None and M > cross_attention_chunk_size and not output_attentions:
        hidden_states, cross_probs = _streamed_cross_attention_layer(
            cross, config, hidden_states, inputs, inputs_mask, cross_attention_chunk_size), None
    else:
        hidden_states, cross_probs = perceiver_layer(
            cross, hidden_states, config.num_cross_attention_heads,
            use_query_residual=config.use_query_residual, hidden_act=config.hidden_act,
            attention_mask=attention_mask, head_mask=None, inputs=inputs, inputs_mask=inputs_mask,
        )  # (B, N, D), (B, Hc, N, M)
    all_cross_attentions = (cross_probs,) if output_attentions else None

    # The block of self-attention layers, applied num_blocks times with the same weights.
    for _ in range(config.num_blocks):
        for i, layer in enumerate(self_attends):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)  # the input of every layer
            hidden_states, probs = perceiver_layer(
                layer, hidden_states, config.num_self_attention_heads, use_query_residual=True,
                hidden_act=config.hidden_act, attention_mask=attention_mask,
                head_mask=None if head_mask is None else head_mask[i],  # row i, whatever the block
            )  # (B, N, D), (B, Hs, N, N)
            if output_attentions:
                all_self_attentions += (probs,)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)  # end of block (== the next block's first input)

    return EncoderOutput(hidden_states, all_hidden_states, all_self_attentions, all_cross_attentions)


def _streamed_cross_attention_layer(
    params: Params, config: PerceiverConfig, hidden_states: np.ndarray, inputs: np.ndarray,
    inputs_mask: Optional[np.ndarray], chunk_size: int,
) -> np.ndarray:
    """``encoder.cross_attention`` -- the same ``perceiver_layer`` -- with its attention streamed over the
    inputs ``chunk_size`` at a time. (B, N, D) -> (B, N, D); no probabilities (they are never whole)."""
    attention = params["attention"]
    context = streaming_cross_attention(
        attention["self"], hidden_states, inputs, config.num_cross_attention_heads, inputs_mask, chunk_size,
    )  # (B, N, v)
    attention_output = perceiver_self_output(attention["output"], context)  # (B, N, v) -> (B, N, D)
    if config.use_query_residual:
        attention_output += hidden_states  # (B, N, D)
    layer_output = feed_forward(params, attention_output, config.hidden_act)  # (B, N, D)
    layer_output += attention_output  # residual around the MLP
    return layer_output
