"""Multi-head attention as the Perceiver uses it, for cross- and self-attention.

Mirrors HF ``PerceiverSelfAttention`` and ``PerceiverAttention`` (``modeling_perceiver.py``,
transformers 4.57.6, lines 135-357). One function serves both kinds, as in HF: it is a
*cross*-attention when ``inputs`` is given (keys and values come from the inputs, and the additive
``inputs_mask`` is used) and a *self*-attention otherwise (keys and values come from the latents, and the
additive ``attention_mask`` is used).

Shapes: B batch, Q queries (latents, N), K keys (inputs M for cross, latents N for self), H heads.
Parameters are plain dicts laid out like HF's modules (see ``weights.py``).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .functional import layer_norm, linear, softmax

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
) -> tuple[np.ndarray, np.ndarray]:
    """The attention core of HF ``PerceiverSelfAttention.forward`` (lines 211-238), heads stacked.

    queries (B, H, Q, dqk), keys (B, H, K, dqk), values (B, H, K, dv); ``bias`` additive, broadcastable
    to (B, H, Q, K); ``head_mask`` multiplicative, broadcastable to (B, H, Q, K), applied *after* softmax.
    Returns the context (B, H, Q, dv) and the probabilities (B, H, Q, K) after the head mask, as HF does.
    """
    scores = queries @ keys.swapaxes(-1, -2)  # (B, H, Q, dqk) @ (B, H, dqk, K) -> (B, H, Q, K)
    scores = scores / np.float32(math.sqrt(queries.shape[-1]))  # scaled by the *query/key* head width
    if bias is not None:
        scores = scores + bias  # (B, H, Q, K) + (B, 1, 1|Q, K): 0 keeps, float32 min drops
    probs = softmax(scores, axis=-1)  # (B, H, Q, K), rows sum to 1
    if head_mask is not None:
        probs = probs * head_mask  # (B, H, Q, K) * (1, H, 1, 1): after softmax, so rows sum to the mask value
    context = probs @ values  # (B, H, Q, K) @ (B, H, K, dv) -> (B, H, Q, dv)
    return context, probs


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
    ``inputs_mask`` instead (line 204); a self-attention uses ``attention_mask``.
    Returns the merged context (B, Q, v) and the attention probabilities (B, H, Q, K).
    """
    hidden_states = layer_norm(hidden_states, **params["layernorm1"])  # (B, Q, q_dim)
    queries = linear(hidden_states, **params["query"])  # (B, Q, q_dim) -> (B, Q, qk)
    if inputs is not None:  # cross-attention
        inputs = layer_norm(inputs, **params["layernorm2"])  # (B, K, kv_dim)
        keys = linear(inputs, **params["key"])  # (B, K, kv_dim) -> (B, K, qk)
        values = linear(inputs, **params["value"])  # (B, K, kv_dim) -> (B, K, v)
        attention_mask = inputs_mask  # the cross-attention's only mask
    else:  # self-attention: keys and values from the same layer-normed latents
        keys = linear(hidden_states, **params["key"])  # (B, Q, q_dim) -> (B, Q, qk)
        values = linear(hidden_states, **params["value"])  # (B, Q, q_dim) -> (B, Q, v)
    context, probs = scaled_dot_product_attention(
        split_heads(queries, num_heads),  # (B, Q, qk) -> (B, H, Q, qk/H)
        split_heads(keys, num_heads),  # (B, K, qk) -> (B, H, K, qk/H)
        split_heads(values, num_heads),  # (B, K, v) -> (B, H, K, v/H)
        bias=attention_mask,
        head_mask=head_mask,
    )
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
) -> tuple[np.ndarray, np.ndarray]:
    """HF ``PerceiverAttention.forward``: self-attention, output projection, optional query residual.

    The residual adds the *raw* query input ``hidden_states`` (before ``layernorm1``).
    Returns the attention output (B, Q, out) and the probabilities (B, H, Q, K).
    """
    context, probs = perceiver_self_attention(
        params["self"], hidden_states, num_heads, attention_mask=attention_mask,
        head_mask=head_mask, inputs=inputs, inputs_mask=inputs_mask,
    )
    attention_output = linear(context, **params["output"]["dense"])  # (B, Q, v) -> (B, Q, out)
    if use_query_residual:
        attention_output = attention_output + hidden_states  # (B, Q, q_dim), out == q_dim here
    return attention_output, probs
