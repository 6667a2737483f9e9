"""One Perceiver layer: attention, then a layer-normed MLP, each with a residual.

Mirrors HF ``PerceiverMLP`` and ``PerceiverLayer`` (``modeling_perceiver.py``, transformers 4.57.6)::

    a, p = PerceiverAttention(hidden, masks...)      # attention -> output projection (+ query residual)
    y    = dense2(act(dense1(LayerNorm(a)))) + a     # feed_forward_chunk: MLP on LayerNorm(a); residual

HF's ``apply_chunking_to_forward`` splits the MLP over positions when ``chunk_size_feed_forward > 0``;
the MLP works per position, so chunking changes no number and is not reproduced.

Each forward has its backward right after it; a forward given a ``cache`` dict records what its backward
needs (see ``attention.py``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .attention import Cache, Params, child, perceiver_attention, perceiver_attention_backward
from .functional import ACT2FN, ACT2GRAD, Dropout, layer_norm, layer_norm_backward, linear, linear_backward


def perceiver_mlp(
    params: Params, hidden_states: np.ndarray, hidden_act: str = "gelu", cache: Optional[Cache] = None
) -> np.ndarray:
    """HF ``PerceiverMLP.forward``: (B, T, D) -> (B, T, wf*D) -> act -> (B, T, D)."""
    hidden = linear(hidden_states, **params["dense1"])  # (B, T, D) -> (B, T, wf*D)
    activated = ACT2FN[hidden_act](hidden, out=hidden if cache is None else None)  # exact-erf GELU for "gelu";
    #   in place when nothing is recorded (hidden is ours), else a new array: the backward needs both
    if cache is not None:
        cache.update(hidden_states=hidden_states, hidden=hidden, activated=activated, hidden_act=hidden_act)
    return linear(activated, **params["dense2"])  # (B, T, wf*D) -> (B, T, D)


def perceiver_mlp_backward(d_out: np.ndarray, params: Params, cache: Cache) -> tuple[np.ndarray, Params]:
    """Backward of :func:`perceiver_mlp`: ``dense2``'s, the activation's (at the pre-activation), ``dense1``'s.

    d_out: (B, T, D). Returns d_hidden_states (B, T, D) and ``{"dense1": ..., "dense2": ...}``.
    """
    grads = {}
    d_activated, grads["dense2"] = linear_backward(d_out, cache["activated"], **params["dense2"])  # (B, T, wf*D)
    d_hidden = ACT2GRAD[cache["hidden_act"]](d_activated, cache["hidden"])  # (B, T, wf*D)
    d_hidden_states, grads["dense1"] = linear_backward(d_hidden, cache["hidden_states"], **params["dense1"])
    return d_hidden_states, grads


def feed_forward(
    params: Params, attention_output: np.ndarray, hidden_act: str = "gelu", cache: Optional[Cache] = None
) -> np.ndarray:
    """HF ``PerceiverLayer.feed_forward_chunk``: ``mlp(layernorm(attention_output))``, (B, T, D) -> (B, T, D).

    ``PerceiverLayer.forward`` adds the residual ``attention_output`` afterwards."""
    layer_output = layer_norm(attention_output, **params["layernorm"])  # (B, T, D)
    if cache is not None:
        cache["attention_output"] = attention_output
    return perceiver_mlp(params["mlp"], layer_output, hidden_act, cache=child(cache, "mlp"))  # (B, T, D)


def feed_forward_backward(d_out: np.ndarray, params: Params, cache: Cache) -> tuple[np.ndarray, Params]:
    """Backward of :func:`feed_forward`: the MLP's, then ``layernorm``'s.

    d_out: (B, T, D). Returns d_attention_output (B, T, D) (without the residual's share) and
    ``{"layernorm": ..., "mlp": ...}``.
    """
    grads = {}
    d_normed, grads["mlp"] = perceiver_mlp_backward(d_out, params["mlp"], cache.pop("mlp"))  # (B, T, D)
    d_attention_output, grads["layernorm"] = layer_norm_backward(
        d_normed, cache["attention_output"], **params["layernorm"])  # (B, T, D)
    return d_attention_output, grads


def perceiver_layer(
    params: Params,
    hidden_states: np.ndarray,
    num_heads: int,
    use_query_residual: bool = True,
    hidden_act: str = "gelu",
    attention_mask: Optional[np.ndarray] = None,
    head_mask: Optional[np.ndarray] = None,
    inputs: Optional[np.ndarray] = None,
    inputs_mask: Optional[np.ndarray] = None,
    dropout: Optional[Dropout] = None,
    cache: Optional[Cache] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """HF ``PerceiverLayer.forward``: a pre-LN transformer layer over the latents.

    hidden_states: shape (B, N, D). Cross-attention when ``inputs`` (B, M, C) is given.
    ``dropout``: training-mode dropout on the attention probabilities (None, the default, is HF's ``eval()``).
    ``cache``: a dict to record what :func:`perceiver_layer_backward` needs (None: record nothing).
    Returns the layer output (B, N, D) and the attention probabilities (B, H, N, M or N).
    """
    attention_output, probs = perceiver_attention(
        params["attention"], hidden_states, num_heads, use_query_residual=use_query_residual,
        attention_mask=attention_mask, head_mask=head_mask, inputs=inputs, inputs_mask=inputs_mask,
        dropout=dropout, cache=child(cache, "attention"),
    )  # (B, N, D), (B, H, N, K)
    layer_output = feed_forward(params, attention_output, hidden_act, cache=child(cache, "feed_forward"))  # (B, N, D)
    layer_output += attention_output  # residual around the MLP, in place on the MLP's new output
    return layer_output, probs


def perceiver_layer_backward(
    d_layer_output: np.ndarray, params: Params, cache: Cache
) -> tuple[np.ndarray, Optional[np.ndarray], Params]:
    """Backward of :func:`perceiver_layer`: the MLP branch's, plus the residual's (``d_a = d_y + d_mlp_in``),
    then the attention's.

    d_layer_output: (B, N, D). Returns d_hidden_states (B, N, D), d_inputs (B, M, C) for a cross-attention
    (None for a self-attention) and the parameter gradients laid out like ``params``.
    """
    d_attention_output, grads = feed_forward_backward(d_layer_output, params, cache.pop("feed_forward"))  # (B, N, D)
    d_attention_output += d_layer_output  # the residual around the MLP
    d_hidden_states, d_inputs, grads["attention"] = perceiver_attention_backward(
        d_attention_output, params["attention"], cache.pop("attention"))  # records used up, as torch frees them
    return d_hidden_states, d_inputs, grads
