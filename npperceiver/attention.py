"""Multi-head attention as the Perceiver uses it, for cross- and self-attention.

Mirrors HF ``PerceiverSelfAttention`` and ``PerceiverAttention`` (``modeling_perceiver.py``,
transformers 4.57.6, lines 135-357). One function serves both kinds, as in HF: it is a
*cross*-attention when ``inputs`` is given (keys and values come from the inputs, and the additive
``inputs_mask`` is used) and a *self*-attention otherwise (keys and values come from the latents, and the
additive ``attention_mask`` is used).

Shapes: B batch, Q queries (latents, N), K keys (inputs M for cross, latents N for self), H heads.
Parameters are plain dicts laid out like HF's modules (see ``weights.py``).

Where the time and memory go (``docs/performance.md``): the score matrix (B, H, Q, K) is the only
large array, so it is made once and worked on in place. The 1/sqrt(d) scale multiplies the queries
(B, H, Q, d) instead of the scores; the softmax's division is applied to the context (B, H, Q, dv)
instead of the scores; and a cross-attention can stream over its inputs in chunks
(:func:`streaming_cross_attention`), so that its memory stops growing with M.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .functional import exp_shifted, layer_norm, linear, row_sum

Params = dict  # nested dict of float32 arrays, keyed like the HF module tree


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """HF ``transpose_for_scores``: (B, T, H*d) -> (B, H, T, d); head h owns channels [h*d, (h+1)*d)."""
    B, T, C = x.shape
    return x.reshape(B, T, num_heads, C // num_heads).transpose(0, 2, 1, 3)  # (B, T, H, d) -> (B, H, T, d)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_heads`: (B, H, T, d) -> (B, T, H*d)."""
    B, H, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * d)  # (B, H, T, d) -> (B, T, H, d) -> (B, T, H*d)


def scaled_dot_product_attention(
    queries: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    bias: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    *,
    return_probs: bool = True,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The attention core of HF ``PerceiverSelfAttention.forward`` (lines 211-238), heads stacked.

    queries (B, H, Q, dqk), keys (B, H, K, dqk), values (B, H, K, dv); ``bias`` additive, broadcastable
    to (B, H, Q, K); ``head_mask`` multiplicative, broadcastable to (B, H, Q, K), applied *after* softmax.
    Returns the context (B, H, Q, dv) and the probabilities (B, H, Q, K) after the head mask, as HF does
    -- or None in their place with ``return_probs=False``, which skips one pass over the scores.

    The context is ``(exp(s - max) @ v) / sum`` rather than HF's ``(exp(s - max) / sum) @ v``: the same
    number to float32 rounding, divided on the small (B, H, Q, dv) side, and the same whether or not the
    probabilities are returned.
    """
    queries = queries * np.float32(1.0 / math.sqrt(queries.shape[-1]))  # (B, H, Q, dqk): HF divides the
    #                                            scores by sqrt(head width); scaling the queries is the same
    scores = queries @ keys.swapaxes(-1, -2)  # (B, H, Q, dqk) @ (B, H, dqk, K) -> (B, H, Q, K), the one big array
    if bias is not None:
        scores += bias  # (B, H, Q, K) + (B, 1, 1|Q, K), in place: 0 keeps, float32 min drops
    weights, _ = exp_shifted(scores, out=scores)  # (B, H, Q, K): the softmax before its division, in place
    sums = row_sum(weights)  # (B, H, Q, K) -> (B, H, Q, 1)
    context = weights @ values  # (B, H, Q, K) @ (B, H, K, dv) -> (B, H, Q, dv)
    context /= sums  # (B, H, Q, dv) / (B, H, Q, 1): the softmax's division, on the small side
    if head_mask is not None:
        context *= head_mask  # (B, H, Q, dv) * (1, H, 1, 1): HF scales the probabilities, after softmax
    if not return_probs:
        return context, None
    probs = weights
    probs /= sums  # (B, H, Q, K), rows sum to 1, in place
    if head_mask is not None:
        probs *= head_mask  # (B, H, Q, K) * (1, H, 1, 1): rows now sum to the mask value
    return context, probs


def cross_attention_keys_values(params: Params, inputs: np.ndarray, num_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """The inputs' side of a cross-attention (HF lines 194-203): ``layernorm2``, key and value projections.

    inputs: shape (B, K, kv_dim). Returns keys (B, H, K, qk/H) and values (B, H, K, v/H).
    """
    inputs = layer_norm(inputs, **params["layernorm2"])  # (B, K, kv_dim)
    keys = split_heads(linear(inputs, **params["key"]), num_heads)  # (B, K, kv_dim) -> (B, K, qk) -> (B, H, K, qk/H)
    values = split_heads(linear(inputs, **params["value"]), num_heads)  # (B, K, kv_dim) -> (B, K, v) -> (B, H, K, v/H)
    return keys, values


def streaming_cross_attention(
    params: Params, queries: np.ndarray, inputs: np.ndarray, num_heads: int,
    inputs_mask: Optional[np.ndarray] = None, chunk_size: int = 2048,
) -> np.ndarray:
    """A cross-attention over the inputs ``chunk_size`` at a time, with an online softmax.

    Gives the context of :func:`scaled_dot_product_attention` (with ``cross_attention_keys_values``)
    to float32 rounding, while the keys, values and scores of only one chunk exist at a time: memory
    O(chunk_size), not O(M). Each chunk's softmax numerator is taken relative to the chunk's own max;
    the running sum and context are rescaled by ``exp(old max - new max)`` whenever a larger max appears
    (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"). HF's all-masked row stays
    uniform over all M inputs: every chunk of it has max ``finfo(float32).min`` and weights 1.

    queries (B, H, Q, dqk), unscaled; inputs (B, M, kv_dim), raw; ``inputs_mask`` additive, broadcastable
    to (B, H, Q, M). Returns the context (B, H, Q, dv).
    """
    queries = queries * np.float32(1.0 / math.sqrt(queries.shape[-1]))  # (B, H, Q, dqk), scaled once
    for start in range(0, inputs.shape[1], chunk_size):
        stop = start + chunk_size
        keys, values = cross_attention_keys_values(params, inputs[:, start:stop], num_heads)  # (B, H, m, d*)
        scores = queries @ keys.swapaxes(-1, -2)  # (B, H, Q, dqk) @ (B, H, dqk, m) -> (B, H, Q, m)
        if inputs_mask is not None:
            scores += inputs_mask if inputs_mask.shape[-1] == 1 else inputs_mask[..., start:stop]  # (B, 1, 1|Q, m)
        weights, chunk_max = exp_shifted(scores, out=scores)  # (B, H, Q, m), (B, H, Q, 1)
        chunk_sum = row_sum(weights)  # (B, H, Q, m) -> (B, H, Q, 1)
        chunk_context = weights @ values  # (B, H, Q, m) @ (B, H, m, dv) -> (B, H, Q, dv)
        if start == 0:
            running_max, running_sum, context = chunk_max, chunk_sum, chunk_context
            continue
        new_max = np.maximum(running_max, chunk_max)  # (B, H, Q, 1)
        old_scale, new_scale = np.exp(running_max - new_max), np.exp(chunk_max - new_max)  # (B, H, Q, 1), <= 1
        running_sum = running_sum * old_scale + chunk_sum * new_scale  # (B, H, Q, 1)
        context *= old_scale  # (B, H, Q, dv) * (B, H, Q, 1)
        chunk_context *= new_scale
        context += chunk_context
        running_max = new_max
    context /= running_sum  # (B, H, Q, dv) / (B, H, Q, 1): the softmax's normalisation
    return context


def perceiver_self_attention(
    params: Params,
    hidden_states: np.ndarray,
    num_heads: int,
    attention_mask: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    inputs: Optional[np.ndarray] = None,
    inputs_mask: Optional[np.ndarray] = None,
    *,
    output_attentions: bool = True,
    inputs_chunk_size: Optional[int] = None,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """HF ``PerceiverSelfAttention.forward``: layernorms, q/k/v projections, multi-head attention, merge.

    hidden_states: shape (B, Q, q_dim) -- the latents. inputs: shape (B, K, kv_dim) for cross-attention,
    or None for self-attention. HF QUIRK: a cross-attention ignores ``attention_mask`` and uses
    ``inputs_mask`` instead (line 204); a self-attention uses ``attention_mask``.
    Returns the merged context (B, Q, v) and the attention probabilities (B, H, Q, K) -- or None in
    their place with ``output_attentions=False``, which saves a pass over the scores.
    ``inputs_chunk_size`` (cross-attention only) streams over the inputs that many at a time
    (:func:`streaming_cross_attention`); it is not used when the probabilities are returned (they are
    the full (B, H, Q, M) array anyway), when a ``head_mask`` is given, or when M fits in one chunk.
    """
    hidden_states = layer_norm(hidden_states, **params["layernorm1"])  # (B, Q, q_dim)
    queries = split_heads(linear(hidden_states, **params["query"]), num_heads)  # (B, Q, qk) -> (B, H, Q, qk/H)
    if inputs is None:  # self-attention: keys and values from the same layer-normed latents
        keys = split_heads(linear(hidden_states, **params["key"]), num_heads)  # (B, Q, qk) -> (B, H, Q, qk/H)
        values = split_heads(linear(hidden_states, **params["value"]), num_heads)  # (B, Q, v) -> (B, H, Q, v/H)
        bias = attention_mask
    elif (inputs_chunk_size is not None and inputs.shape[1] > inputs_chunk_size
          and not output_attentions and head_mask is None):  # cross-attention, streamed
        context = streaming_cross_attention(params, queries, inputs, num_heads, inputs_mask, inputs_chunk_size)
        return merge_heads(context), None  # (B, H, Q, v/H) -> (B, Q, v)
    else:  # cross-attention: its only mask is inputs_mask
        keys, values = cross_attention_keys_values(params, inputs, num_heads)  # (B, H, K, qk/H), (B, H, K, v/H)
        bias = inputs_mask
    context, probs = scaled_dot_product_attention(
        queries, keys, values, bias=bias, head_mask=head_mask, return_probs=output_attentions,
    )  # (B, H, Q, v/H), (B, H, Q, K) or None
    return merge_heads(context), probs  # (B, H, Q, v/H) -> (B, Q, v)


def perceiver_attention(
    params: Params,
    hidden_states: np.ndarray,
    num_heads: int,
    use_query_residual: bool = True,
    attention_mask: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    inputs: Optional[np.ndarray] = None,
    inputs_mask: Optional[np.ndarray] = None,
    *,
    output_attentions: bool = True,
    inputs_chunk_size: Optional[int] = None,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """HF ``PerceiverAttention.forward``: self-attention, output projection, optional query residual.

    The residual adds the *raw* query input ``hidden_states`` (before ``layernorm1``).
    Returns the attention output (B, Q, out) and the probabilities (B, H, Q, K), or None in their place
    with ``output_attentions=False``. ``inputs_chunk_size``: see :func:`perceiver_self_attention`.
    """
    context, probs = perceiver_self_attention(
        params["self"], hidden_states, num_heads, attention_mask=attention_mask, head_mask=head_mask,
        inputs=inputs, inputs_mask=inputs_mask, output_attentions=output_attentions,
        inputs_chunk_size=inputs_chunk_size,
    )
    attention_output = linear(context, **params["output"]["dense"])  # (B, Q, v) -> (B, Q, out)
    if use_query_residual:
        attention_output += hidden_states  # (B, Q, q_dim), out == q_dim here; in place on the new array
    return attention_output, probs
