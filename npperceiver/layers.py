"""One Perceiver layer: attention, then a layer-normed MLP, each with a residual.

Mirrors HF ``PerceiverMLP`` and ``PerceiverLayer`` (``modeling_perceiver.py``, transformers 4.57.6)::

    a, p = PerceiverAttention(hidden, masks...)      # attention -> output projection (+ query residual)
    y    = dense2(act(dense1(LayerNorm(a)))) + a     # feed_forward_chunk: MLP on LayerNorm(a); residual

HF's ``apply_chunking_to_forward`` splits the MLP over positions when ``chunk_size_feed_forward > 0``;
the MLP works per position, so chunking changes no number and is not reproduced.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .attention import Params, perceiver_attention
from .functional import ACT2FN, layer_norm, linear


def perceiver_mlp(params: Params, hidden_states: np.ndarray, hidden_act: str = "gelu") -> np.ndarray:
    """HF ``PerceiverMLP.forward``: (B, T, D) -> (B, T, wf*D) -> act -> (B, T, D)."""
    hidden = linear(hidden_states, **params["dense1"])  # (B, T, D) -> (B, T, wf*D)
    hidden = ACT2FN[hidden_act](hidden, out=hidden)  # exact-erf GELU for "gelu"; in place, hidden is ours
    return linear(hidden, **params["dense2"])  # (B, T, wf*D) -> (B, T, D)


def feed_forward(params: Params, attention_output: np.ndarray, hidden_act: str = "gelu") -> np.ndarray:
    """HF ``PerceiverLayer.feed_forward_chunk``: ``mlp(layernorm(attention_output))``, (B, T, D) -> (B, T, D).

    ``PerceiverLayer.forward`` adds the residual ``attention_output`` afterwards."""
    layer_output = layer_norm(attention_output, **params["layernorm"])  # (B, T, D)
    return perceiver_mlp(params["mlp"], layer_output, hidden_act)  # (B, T, D)


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
) -> tuple[np.ndarray, np.ndarray]:
    """HF ``PerceiverLayer.forward``: a pre-LN transformer layer over the latents.

    hidden_states: shape (B, N, D). Cross-attention when ``inputs`` (B, M, C) is given.
    Returns the layer output (B, N, D) and the attention probabilities (B, H, N, M or N).
    """
    attention_output, probs = perceiver_attention(
        params["attention"], hidden_states, num_heads, use_query_residual=use_query_residual,
        attention_mask=attention_mask, head_mask=head_mask, inputs=inputs, inputs_mask=inputs_mask,
    )  # (B, N, D), (B, H, N, K)
    layer_output = feed_forward(params, attention_output, hidden_act)  # (B, N, D)
    layer_output += attention_output  # residual around the MLP, in place on the MLP's new output
    return layer_output, probs
