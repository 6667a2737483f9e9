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
    probs   = dropout(probs)                   training only (``dropout=None`` is HF's ``eval()``)
    probs   = probs * head_mask                multiplicative, after the softmax
    context = probs @ value                    (B, H, Q, dv)

Shapes: B batch, Q queries (latents, N), K keys (inputs M for cross, latents N for self), H heads.
Parameters are plain dicts laid out like HF's modules (see ``weights.py``).

Every function has its backward right after it (``docs/training.md``). A forward given a ``cache`` dict
records there, by name, what its backward needs (its inputs and the intermediate arrays); without one
(inference) it records nothing and runs exactly as before. ``*_backward(d_out, params, cache)`` returns the
gradients of the forward's inputs and a dict of parameter gradients laid out like ``params``.

For long inputs, :func:`streaming_cross_attention` computes the same cross-attention over the inputs a
chunk at a time with an online softmax, so its memory stops growing with M (``docs/performance.md``); the
encoder chooses it when asked (``cross_attention_chunk_size``).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .functional import (
    Dropout, dropout_backward, exp_shifted, layer_norm, layer_norm_backward, linear, linear_backward, row_sum,
    softmax, softmax_backward,
)

Params = dict  # nested dict of float32 arrays, keyed like the HF module tree
Cache = dict  # what a forward records for its backward, by name (nested like the calls)


def child(cache: Optional[Cache], name: str) -> Optional[Cache]:
    """A new sub-cache ``cache[name]`` for a nested call to record into; None when not recording."""
    if cache is None:
        return None
    cache[name] = {}
    return cache[name]


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """HF ``transpose_for_scores``: (B, T, H*d) -> (B, H, T, d); head h owns channels [h*d, (h+1)*d)."""
    B, T, C = x.shape
    return x.reshape(B, T, num_heads, C // num_heads).transpose(0, 2, 1, 3)  # (B, T, H, d) -> (B, H, T, d)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_heads`: (B, H, T, d) -> (B, T, H*d)."""
    B, H, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * d)  # (B, H, T, d) -> (B, T, H, d) -> (B, T, H*d)


def split_heads_backward(d_out: np.ndarray) -> np.ndarray:
    """Backward of :func:`split_heads`: the gradient moves back with the entries, (B, H, T, d) -> (B, T, H*d)."""
    return merge_heads(d_out)


def merge_heads_backward(d_out: np.ndarray, num_heads: int) -> np.ndarray:
    """Backward of :func:`merge_heads`: (B, T, H*d) -> (B, H, T, d)."""
    return split_heads(d_out, num_heads)


def scaled_dot_product_attention(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    bias: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    dropout: Optional[Dropout] = None,
    cache: Optional[Cache] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The attention core of HF ``PerceiverSelfAttention.forward``, every head at once.

    ``softmax(query @ key^T / sqrt(dqk) + bias) * head_mask @ value``, in HF's order.

    query (B, H, Q, dqk), key (B, H, K, dqk), value (B, H, K, dv); ``bias`` additive, broadcastable to
    (B, H, Q, K) (0 keeps a key, float32's minimum drops it); ``head_mask`` multiplicative, broadcastable to
    (B, H, Q, K), applied *after* the softmax; ``dropout`` (training only) between the two, as in HF.
    Returns the context (B, H, Q, dv) and the attention probabilities (B, H, Q, K) after dropout and the
    head mask -- what HF returns as ``attentions``.
    """
    scores = query @ key.swapaxes(-1, -2)  # (B, H, Q, dqk) @ (B, H, dqk, K) -> (B, H, Q, K)
    scores /= np.float32(math.sqrt(query.shape[-1]))  # in place: scores is a new array
    if bias is not None:
        scores += bias  # (B, H, Q, K) + (B, 1, 1|Q, K): 0 keeps, float32 min drops
    probs = softmax(scores, out=scores)  # (B, H, Q, K), rows sum to 1; overwrites the scores it no longer needs
    noise = None if dropout is None else dropout.noise(probs.shape, probs.dtype)  # (B, H, Q, K): 0 or 1/(1-p)
    if cache is not None:
        cache.update(query=query, key=key, value=value, probs=probs, noise=noise, head_mask=head_mask)
    if noise is not None:
        probs = probs * noise  # (B, H, Q, K): HF's self.dropout, a no-op in eval()
    if head_mask is not None:
        probs = probs * head_mask  # (B, H, Q, K) * (1, H, 1, 1): rows now sum to the head's factor
    context = probs @ value  # (B, H, Q, K) @ (B, H, K, dv) -> (B, H, Q, dv)
    return context, probs


def scaled_dot_product_attention_backward(
    d_context: np.ndarray, cache: Cache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward of :func:`scaled_dot_product_attention`, with ``w = p * noise * head_mask`` the final weights:

    ``dv = w^T d_context;  dp = (d_context v^T) * head_mask * noise;  ds = softmax_backward(dp, p) / sqrt(dqk);
    dq = ds k;  dk = ds^T q`` -- per batch row and head. The bias is a constant: it gets no gradient.

    d_context: (B, H, Q, dv). Returns d_query (B, H, Q, dqk), d_key (B, H, K, dqk), d_value (B, H, K, dv).
    """
    query, key, value, probs = cache["query"], cache["key"], cache["value"], cache["probs"]
    noise, head_mask = cache["noise"], cache["head_mask"]
    weights = probs if noise is None else probs * noise  # (B, H, Q, K): the forward's final probabilities,
    if head_mask is not None:  # recomputed (one multiply each) rather than kept
        weights = weights * head_mask
    d_value = weights.swapaxes(-1, -2) @ d_context  # (B, H, K, Q) @ (B, H, Q, dv) -> (B, H, K, dv)
    d_probs = d_context @ value.swapaxes(-1, -2)  # (B, H, Q, dv) @ (B, H, dv, K) -> (B, H, Q, K)
    if head_mask is not None:
        d_probs *= head_mask  # (B, H, Q, K) * (1, H, 1, 1): a head zeroed by head_mask passes no gradient
        #                       back -- not to its scores, so not to its slice of q and k; and its weights w
        #                       are 0, so d_value is 0 for it too: its q/k/v weight slices get none here
    if noise is not None:
        d_probs = dropout_backward(d_probs, noise)  # a dropped probability passes no gradient
    d_scores = softmax_backward(d_probs, probs, out=d_probs)  # (B, H, Q, K). A key dropped by the bias has p = 0
    #   exactly, so its score gets exactly 0 gradient, and (w = 0) its value too: a masked input gets no
    #   gradient at all -- unless its whole row is masked (then p is uniform and every input gets some).
    d_scores /= np.float32(math.sqrt(query.shape[-1]))  # the forward's scaling
    d_query = d_scores @ key  # (B, H, Q, K) @ (B, H, K, dqk) -> (B, H, Q, dqk)
    d_key = d_scores.swapaxes(-1, -2) @ query  # (B, H, K, Q) @ (B, H, Q, dqk) -> (B, H, K, dqk)
    return d_query, d_key, d_value


def cross_attention_keys_values(
    params: Params, inputs: np.ndarray, num_heads: int, cache: Optional[Cache] = None
) -> tuple[np.ndarray, np.ndarray]:
    """The inputs' side of a cross-attention (in HF ``PerceiverSelfAttention.forward``): ``layernorm2``, then
    the key and value projections, split into heads.

    inputs: shape (B, K, kv_dim). Returns keys (B, H, K, qk/H) and values (B, H, K, v/H).
    """
    normed = layer_norm(inputs, **params["layernorm2"])  # (B, K, kv_dim)
    keys = split_heads(linear(normed, **params["key"]), num_heads)  # (B, K, kv_dim) -> (B, K, qk) -> (B, H, K, qk/H)
    values = split_heads(linear(normed, **params["value"]), num_heads)  # (B, K, kv_dim) -> (B, K, v) -> (B, H, K, v/H)
    if cache is not None:
        cache.update(inputs=inputs, normed=normed)
    return keys, values


def cross_attention_keys_values_backward(
    d_keys: np.ndarray, d_values: np.ndarray, params: Params, cache: Cache
) -> tuple[np.ndarray, Params]:
    """Backward of :func:`cross_attention_keys_values`: both projections read the same layer-normed inputs,
    so their input gradients add: ``d_normed = d_keys @ Wk + d_values @ Wv``, then ``layernorm2``'s backward.

    d_keys (B, H, K, qk/H), d_values (B, H, K, v/H). Returns d_inputs (B, K, kv_dim) and the gradients of
    ``layernorm2``, ``key`` and ``value``.
    """
    normed, grads = cache["normed"], {}
    d_normed, grads["key"] = linear_backward(split_heads_backward(d_keys), normed, **params["key"])  # (B, K, kv_dim)
    d_from_values, grads["value"] = linear_backward(split_heads_backward(d_values), normed, **params["value"])
    d_normed += d_from_values
    d_inputs, grads["layernorm2"] = layer_norm_backward(d_normed, cache["inputs"], **params["layernorm2"])
    return d_inputs, grads


def streaming_cross_attention(
    params: Params, hidden_states: np.ndarray, inputs: np.ndarray, num_heads: int,
    inputs_mask: Optional[np.ndarray] = None, chunk_size: int = 2048, cache: Optional[Cache] = None,
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
    head mask: the cross-attention never gets one; no dropout (the encoder uses the one-pass attention then).

    ``cache``: records what :func:`streaming_cross_attention_backward` needs -- the latents, the queries, each
    row's final max and sum, the context -- but nothing of size M except the inputs themselves, which the
    caller holds anyway: the backward recomputes each chunk's keys, values and probabilities.
    """
    normed = layer_norm(hidden_states, **params["layernorm1"])  # (B, Q, q_dim)
    queries = split_heads(linear(normed, **params["query"]), num_heads)  # (B, Q, qk) -> (B, H, Q, qk/H)
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
    if cache is not None:
        cache.update(streamed=True, is_cross=True, hidden_states=hidden_states, normed=normed, queries=queries,
                     inputs=inputs, inputs_mask=inputs_mask, chunk_size=chunk_size, row_max=running_max,
                     row_sum=running_sum, context=context)
    return merge_heads(context)  # (B, H, Q, v/H) -> (B, Q, v)


def streaming_cross_attention_backward(
    d_context: np.ndarray, params: Params, cache: Cache
) -> tuple[np.ndarray, np.ndarray, Params]:
    """Backward of :func:`streaming_cross_attention`, a chunk of inputs at a time, recomputing each chunk's keys,
    values and probabilities ``p = exp(s - row max) / row sum`` from the forward's final max and sum (the
    FlashAttention backward). With ``D = sum_k p_k dp_k = sum(d_context * context)`` per row:

    ``dv = p^T dc;  dp = dc v^T;  ds = p (dp - D) / sqrt(dqk);  dq += ds k;  dk = ds^T q``, then each chunk's
    keys and values go back through their projections and ``layernorm2`` to that chunk's inputs, and the
    weights' gradients add up over the chunks. Memory: one chunk's (B, H, Q, m) arrays, as in the forward.

    d_context: (B, Q, v). Returns d_hidden_states (B, Q, q_dim), d_inputs (B, M, kv_dim) and the gradients of
    ``params`` -- what :func:`perceiver_self_attention_backward` gives for the one-pass cross-attention.
    """
    queries, context, inputs, inputs_mask = cache["queries"], cache["context"], cache["inputs"], cache["inputs_mask"]
    row_max, row_sum_, chunk_size = cache["row_max"], cache["row_sum"], cache["chunk_size"]
    num_heads = queries.shape[1]
    scale = np.float32(math.sqrt(queries.shape[-1]))
    d_context = merge_heads_backward(d_context, num_heads)  # (B, Q, v) -> (B, H, Q, dv)
    delta = np.einsum("bhqd,bhqd->bhq", d_context, context)[..., None]  # (B, H, Q, 1): D = sum_k p_k dp_k
    d_queries = np.zeros_like(queries)  # (B, H, Q, dqk)
    d_inputs = np.empty_like(inputs)  # (B, M, kv_dim), filled chunk by chunk
    grads: Params = {}
    for start in range(0, inputs.shape[1], chunk_size):
        stop = start + chunk_size
        chunk_cache: Cache = {}
        keys, values = cross_attention_keys_values(params, inputs[:, start:stop], num_heads, cache=chunk_cache)
        probs = queries @ keys.swapaxes(-1, -2)  # (B, H, Q, m): the scores, recomputed as in the forward
        probs /= scale
        if inputs_mask is not None:
            probs += inputs_mask if inputs_mask.shape[-1] == 1 else inputs_mask[..., start:stop]
        probs -= row_max  # (B, H, Q, m) - (B, H, Q, 1)
        np.exp(probs, out=probs)
        probs /= row_sum_  # (B, H, Q, m): the forward's probabilities of this chunk
        d_values = probs.swapaxes(-1, -2) @ d_context  # (B, H, m, Q) @ (B, H, Q, dv) -> (B, H, m, dv)
        d_scores = d_context @ values.swapaxes(-1, -2)  # (B, H, Q, dv) @ (B, H, dv, m) -> (B, H, Q, m): dp
        d_scores -= delta  # dp - D
        d_scores *= probs  # ds = p (dp - D): a masked input (p = 0) gets exactly 0
        d_scores /= scale
        d_queries += d_scores @ keys  # (B, H, Q, m) @ (B, H, m, dqk) -> (B, H, Q, dqk), summed over chunks
        d_keys = d_scores.swapaxes(-1, -2) @ queries  # (B, H, m, Q) @ (B, H, Q, dqk) -> (B, H, m, dqk)
        d_inputs[:, start:stop], chunk_grads = cross_attention_keys_values_backward(d_keys, d_values, params,
                                                                                    chunk_cache)
        grads = chunk_grads if not grads else _add_grads(grads, chunk_grads)  # the weights: summed over chunks
    d_normed, grads["query"] = linear_backward(split_heads_backward(d_queries), cache["normed"], **params["query"])
    d_hidden_states, grads["layernorm1"] = layer_norm_backward(d_normed, cache["hidden_states"], **params["layernorm1"])
    return d_hidden_states, d_inputs, grads


def _add_grads(total: Params, grads: Params) -> Params:
    """``total += grads`` over two dicts of the same layout (``{"key": {"weight": ..., "bias": ...}, ...}``)."""
    for name, value in grads.items():
        if isinstance(value, dict):
            _add_grads(total[name], value)
        else:
            total[name] += value
    return total


def perceiver_self_attention(
    params: Params,
    hidden_states: np.ndarray,
    num_heads: int,
    attention_mask: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    inputs: Optional[np.ndarray] = None,
    inputs_mask: Optional[np.ndarray] = None,
    dropout: Optional[Dropout] = None,
    cache: Optional[Cache] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """HF ``PerceiverSelfAttention.forward``: layernorms, q/k/v projections, multi-head attention, merge.

    hidden_states: shape (B, Q, q_dim) -- the latents. inputs: shape (B, K, kv_dim) for cross-attention,
    or None for self-attention. HF QUIRK: a cross-attention ignores ``attention_mask`` and uses
    ``inputs_mask`` instead; a self-attention uses ``attention_mask``.
    Returns the merged context (B, Q, v) and the attention probabilities (B, H, Q, K).
    """
    normed = layer_norm(hidden_states, **params["layernorm1"])  # (B, Q, q_dim)
    query = split_heads(linear(normed, **params["query"]), num_heads)  # (B, Q, qk) -> (B, H, Q, qk/H)
    if inputs is None:  # self-attention: keys and values from the same layer-normed latents
        key = split_heads(linear(normed, **params["key"]), num_heads)  # (B, Q, qk) -> (B, H, Q, qk/H)
        value = split_heads(linear(normed, **params["value"]), num_heads)  # (B, Q, v) -> (B, H, Q, v/H)
        bias = attention_mask
    else:  # cross-attention: keys and values from the inputs; its only mask is inputs_mask
        key, value = cross_attention_keys_values(
            params, inputs, num_heads, cache=child(cache, "inputs"))  # (B, H, K, qk/H), (B, H, K, v/H)
        bias = inputs_mask
    context, probs = scaled_dot_product_attention(
        query, key, value, bias=bias, head_mask=head_mask, dropout=dropout, cache=child(cache, "attention"))
    if cache is not None:
        cache.update(hidden_states=hidden_states, normed=normed, is_cross=inputs is not None)
    return merge_heads(context), probs  # (B, H, Q, v/H) -> (B, Q, v); (B, H, Q, K)


def perceiver_self_attention_backward(
    d_context: np.ndarray, params: Params, cache: Cache
) -> tuple[np.ndarray, Optional[np.ndarray], Params]:
    """Backward of :func:`perceiver_self_attention`: the attention core's, then each projection's
    (``d_normed = d_q @ Wq`` (+ ``d_k @ Wk + d_v @ Wv`` in a self-attention, whose keys and values read the
    same layer-normed latents)), then ``layernorm1``'s; a cross-attention's keys and values send theirs to
    the inputs instead.

    d_context: (B, Q, v). Returns d_hidden_states (B, Q, q_dim), d_inputs (B, K, kv_dim) or None for a
    self-attention, and the parameter gradients laid out like ``params``.
    """
    if cache.get("streamed"):  # the encoder streamed this cross-attention over the inputs
        return streaming_cross_attention_backward(d_context, params, cache)
    normed, grads = cache["normed"], {}
    num_heads = cache["attention"]["query"].shape[1]
    d_query, d_key, d_value = scaled_dot_product_attention_backward(
        merge_heads_backward(d_context, num_heads), cache.pop("attention"))  # (B, H, Q, dqk), (B, H, K, d*) x2;
    #   the core's record (queries, keys, values, probabilities) is used up: freed before the projections
    d_normed, grads["query"] = linear_backward(split_heads_backward(d_query), normed, **params["query"])
    if cache["is_cross"]:
        d_inputs, input_grads = cross_attention_keys_values_backward(d_key, d_value, params, cache.pop("inputs"))
        grads.update(input_grads)
    else:  # the keys and values came from the same normed latents: their gradients add up there
        d_inputs = None
        d_from_key, grads["key"] = linear_backward(split_heads_backward(d_key), normed, **params["key"])
        d_from_value, grads["value"] = linear_backward(split_heads_backward(d_value), normed, **params["value"])
        d_normed += d_from_key
        d_normed += d_from_value
    d_hidden_states, grads["layernorm1"] = layer_norm_backward(d_normed, cache["hidden_states"], **params["layernorm1"])
    return d_hidden_states, d_inputs, grads


def perceiver_self_output(params: Params, context: np.ndarray, cache: Optional[Cache] = None) -> np.ndarray:
    """HF ``PerceiverSelfOutput.forward``: the output projection, (B, Q, v) -> (B, Q, out)."""
    if cache is not None:
        cache["context"] = context
    return linear(context, **params["dense"])  # (B, Q, v) @ (v, out) + (out,) -> (B, Q, out)


def perceiver_self_output_backward(d_out: np.ndarray, params: Params, cache: Cache) -> tuple[np.ndarray, Params]:
    """Backward of :func:`perceiver_self_output`: :func:`~npperceiver.functional.linear_backward` of ``dense``.
    d_out (B, Q, out) -> d_context (B, Q, v) and ``{"dense": ...}``."""
    d_context, dense = linear_backward(d_out, cache["context"], **params["dense"])
    return d_context, {"dense": dense}


def perceiver_attention(
    params: Params,
    hidden_states: np.ndarray,
    num_heads: int,
    use_query_residual: bool = True,
    attention_mask: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    inputs: Optional[np.ndarray] = None,
    inputs_mask: Optional[np.ndarray] = None,
    dropout: Optional[Dropout] = None,
    cache: Optional[Cache] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """HF ``PerceiverAttention.forward``: self-attention, output projection, optional query residual.

    The residual adds the *raw* query input ``hidden_states`` (before ``layernorm1``).
    Returns the attention output (B, Q, out) and the probabilities (B, H, Q, K).
    """
    context, probs = perceiver_self_attention(
        params["self"], hidden_states, num_heads, attention_mask=attention_mask, head_mask=head_mask,
        inputs=inputs, inputs_mask=inputs_mask, dropout=dropout, cache=child(cache, "self"),
    )  # (B, Q, v), (B, H, Q, K)
    attention_output = perceiver_self_output(params["output"], context, cache=child(cache, "output"))  # (B, Q, out)
    if use_query_residual:
        attention_output += hidden_states  # (B, Q, q_dim): out == q_dim here
    if cache is not None:
        cache["use_query_residual"] = use_query_residual
    return attention_output, probs


def perceiver_attention_backward(
    d_attention_output: np.ndarray, params: Params, cache: Cache
) -> tuple[np.ndarray, Optional[np.ndarray], Params]:
    """Backward of :func:`perceiver_attention`: the output projection's, the self-attention's, and the query
    residual's -- which hands ``d_attention_output`` unchanged to the raw query input.

    d_attention_output: (B, Q, out). Returns d_hidden_states (B, Q, q_dim), d_inputs (B, K, kv_dim) or None,
    and ``{"self": ..., "output": ...}``.
    """
    d_context, output_grads = perceiver_self_output_backward(d_attention_output, params["output"], cache.pop("output"))
    d_hidden_states, d_inputs, self_grads = perceiver_self_attention_backward(d_context, params["self"],
                                                                              cache.pop("self"))
    if cache["use_query_residual"]:
        d_hidden_states += d_attention_output  # (B, Q, q_dim): the residual's gradient
    return d_hidden_states, d_inputs, {"self": self_grads, "output": output_grads}
