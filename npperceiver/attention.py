"""Multi-head attention as the Perceiver uses it, for cross- and self-attention.

Mirrors HF ``PerceiverSelfAttention``, ``PerceiverSelfOutput`` and ``PerceiverAttention``
(``modeling_perceiver.py``, transformers 4.57.6), one function each. One function serves both kinds, as in
HF: :func:`perceiver_self_attention` is a *cross*-attention when ``inputs`` is given (keys and values come
from the inputs, and the additive ``inputs_mask`` is used) and a *self*-attention otherwise (keys and values
come from the latents, and the additive ``attention_mask`` is used).

The attention core, :func:`scaled_dot_product_attention`, is written as the math and in HF's order::

    scores  = query @ key^T / sqrt(d)          (B, H, Q, K)
    scores  = scores + bias                    additive mask: 0 keeps, float32 min drops
    probs   = softmax(scores)                  over the K keys
    probs   = probs * head_mask                multiplicative, after the softmax
    context = probs @ value                    (B, H, Q, dv)

Shapes: B batch, Q queries (latents, N), K keys (inputs M for cross, latents N for self), H heads.
Parameters are plain dicts laid out like HF's modules (see ``weights.py``).

For long inputs, :func:`streaming_cross_attention` computes the same cross-attention over the inputs a
chunk at a time with an online softmax, so its memory stops growing with M (``docs/performance.md``); the
encoder chooses it when asked (``cross_attention_chunk_size``).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .functional import exp_shifted, layer_norm, linear, row_sum, softmax

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
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    bias: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The attention core of HF ``PerceiverSelfAttention.forward``, every head at once.

    ``softmax(query @ key^T / sqrt(dqk) + bias) * head_mask @ value``, in HF's order.

    query (B, H, Q, dqk), key (B, H, K, dqk), value (B, H, K, dv); ``bias`` additive, broadcastable to
    (B, H, Q, K) (0 keeps a key, float32's minimum drops it); ``head_mask`` multiplicative, broadcastable to
    (B, H, Q, K), applied *after* the softmax. Returns the context (B, H, Q, dv) and the attention
    probabilities (B, H, Q, K) after the head mask -- what HF returns as ``attentions``.
    """
    scores = query @ key.swapaxes(-1, -2)  # (B, H, Q, dqk) @ (B, H, dqk, K) -> (B, H, Q, K)
    scores /= np.float32(math.sqrt(query.shape[-1]))  # in place: scores is a new array
    if bias is not None:
        scores += bias  # (B, H, Q, K) + (B, 1, 1|Q, K): 0 keeps, float32 min drops
    probs = softmax(scores, out=scores)  # (B, H, Q, K), rows sum to 1; overwrites the scores it no longer needs
    if head_mask is not None:
        probs = probs * head_mask  # (B, H, Q, K) * (1, H, 1, 1): rows now sum to the head's factor
    context = probs @ value  # (B, H, Q, K) @ (B, H, K, dv) -> (B, H, Q, dv)
    return context, probs


def cross_attention_keys_values(params: Params, inputs: np.ndarray, num_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """The inputs' side of a cross-attention (in HF ``PerceiverSelfAttention.forward``): ``layernorm2``, then
    the key and value projections, split into heads.

    inputs: shape (B, K, kv_dim). Returns keys (B, H, K, qk/H) and values (B, H, K, v/H).
    """
    inputs = layer_norm(inputs, **params["layernorm2"])  # (B, K, kv_dim)
    keys = split_heads(linear(inputs, **params["key"]), num_heads)  # (B, K, kv_dim) -> (B, K, qk) -> (B, H, K, qk/H)
    values = split_heads(linear(inputs, **params["value"]), num_heads)  # (B, K, kv_dim) -> (B, K, v) -> (B, H, K, v/H)
    return keys, values


def streaming_cross_attention(
    params: Params, hidden_states: np.ndarray, inputs: np.ndarray, num_heads: int,
    inputs_mask: Optional[np.ndarray] = None, chunk_size: int = 2048,
) -> np.ndarray:
    """:func:`perceiver_self_attention` as a cross-attention, over the inputs ``chunk_size`` at a time.

    Gives its merged context to float32 rounding, while the keys, values and scores of only one chunk
    exist at a time: memory
    O(chunk_size), not O(M). Each chunk's softmax numerator is taken relative to the chunk's own max;
    the running sum and context are rescaled by ``exp(old max - new max)`` whenever a larger max appears
    (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"). HF's all-masked row stays
    uniform over all M inputs: every chunk of it has max ``finfo(float32).min`` and weights 1.

    hidden_states (B, Q, q_dim), the latents; inputs (B, M, kv_dim); ``inputs_mask`` additive, broadcastable
    to (B, H, Q, M). Returns the merged context (B, Q, v), but no probabilities: they are never whole. No
    head mask: the cross-attention never gets one.
    """
    hidden_states = layer_norm(hidden_states, **params["layernorm1"])  # (B, Q, q_dim)
    queries = split_heads(linear(hidden_states, **params["query"]), num_heads)  # (B, Q, qk) -> (B, H, Q, qk/H)
    scale = np.float32(math.sqrt(queries.shape[-1]))
    for start in range(0, inputs.shape[1], chunk_size):
        stop = start + chunk_size
        keys, values = cross_attention_keys_values(params, inputs[:, start:stop], num_heads)  # (B, H, m, d*)
        scores = queries @ keys.swapaxes(-1, -2)  # (B, H, Q, dqk) @ (B, H, dqk, m) -> (B, H, Q, m)
        scores /= scale  # as in scaled_dot_product_attention
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
    return merge_heads(context)  # (B, H, Q, v/H) -> (B, Q, v)


def perceiver_self_attention(
    params: Params,
    hidden_states: np.ndarray,
    num_heads: int,
    attention_mask: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    inputs: Optional[np.ndarray] = None,
    inputs_mask: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """HF ``PerceiverSelfAttention.forward``: layernorms, q/k/v projections, multi-head attention, merge.

    hidden_states: shape (B, Q, q_dim) -- the latents. inputs: shape (B, K, kv_dim) for cross-attention,
    or None for self-attention. HF QUIRK: a cross-attention ignores ``attention_mask`` and uses
    ``inputs_mask`` instead; a self-attention uses ``attention_mask``.
    Returns the merged context (B, Q, v) and the attention probabilities (B, H, Q, K).
    """
    hidden_states = layer_norm(hidden_states, **params["layernorm1"])  # (B, Q, q_dim)
    query = split_heads(linear(hidden_states, **params["query"]), num_heads)  # (B, Q, qk) -> (B, H, Q, qk/H)
    if inputs is None:  # self-attention: keys and values from the same layer-normed latents
        key = split_heads(linear(hidden_states, **params["key"]), num_heads)  # (B, Q, qk) -> (B, H, Q, qk/H)
        value = split_heads(linear(hidden_states, **params["value"]), num_heads)  # (B, Q, v) -> (B, H, Q, v/H)
        bias = attention_mask
    else:  # cross-attention: keys and values from the inputs; its only mask is inputs_mask
        key, value = cross_attention_keys_values(params, inputs, num_heads)  # (B, H, K, qk/H), (B, H, K, v/H)
        bias = inputs_mask
    context, probs = scaled_dot_product_attention(query, key, value, bias=bias, head_mask=head_mask)
    return merge_heads(context), probs  # (B, H, Q, v/H) -> (B, Q, v); (B, H, Q, K)


def perceiver_self_output(params: Params, context: np.ndarray) -> np.ndarray:
    """HF ``PerceiverSelfOutput.forward``: the output projection, (B, Q, v) -> (B, Q, out)."""
    return linear(context, **params["dense"])  # (B, Q, v) @ (v, out) + (out,) -> (B, Q, out)


def perceiver_attention(
    params: Params,
    hidden_states: np.ndarray,
    num_heads: int,
    use_query_residual: bool = True,
    attention_mask: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    inputs: Optional[np.ndarray] = None,
    inputs_mask: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """HF ``PerceiverAttention.forward``: self-attention, output projection, optional query residual.

    The residual adds the *raw* query input ``hidden_states`` (before ``layernorm1``).
    Returns the attention output (B, Q, out) and the probabilities (B, H, Q, K).
    """
    context, probs = perceiver_self_attention(
        params["self"], hidden_states, num_heads, attention_mask=attention_mask, head_mask=head_mask,
        inputs=inputs, inputs_mask=inputs_mask,
    )  # (B, Q, v), (B, H, Q, K)
    attention_output = perceiver_self_output(params["output"], context)  # (B, Q, v) -> (B, Q, out)
    if use_query_residual:
        attention_output += hidden_states  # (B, Q, q_dim): out == q_dim here
    return attention_output, probs
