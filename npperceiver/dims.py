"""The widths every Perceiver layer resolves from the config: query/key, value, output, MLP.

The single source of truth for sizes: the config checks them (``config.py``), the key map builds its
parameter shapes from them (``weights.py``), and the forward trace (``trace.py``), ``npperceiver explain``
and the diagrams read them, so a drawing can never disagree with the forward pass.

The rules mirror HF ``PerceiverAttention.__init__`` and ``PerceiverSelfAttention.__init__``
(``modeling_perceiver.py``, transformers 4.57.6):

* cross-attention with ``qk_channels is None``: qk = ``d_model`` ("kv") or ``d_latents`` ("q");
* otherwise qk = ``qk_channels or d_latents``;
* in both cases v = ``v_channels or qk``;
* the output projection maps v -> ``d_latents`` (cross) or v -> v (self).

:class:`AttentionDims` holds them for one layer. ``PerceiverConfig.cross_attention`` and
``.self_attention`` apply the rules above to a config (``config.py``, which sits above this module);
``text.decoder_attention_dims`` gives the MLM decoder's fixed widths.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionDims:
    """Resolved sizes of one ``PerceiverLayer`` (its attention, output projection and MLP)."""

    is_cross: bool  # cross-attention (queries from latents, keys/values from inputs) or self-attention
    num_heads: int  # H
    q_dim: int  # width of the query-side input (always d_latents in the encoder)
    kv_dim: int  # width of the key/value-side input (d_model for cross, d_latents for self)
    qk_channels: int  # width of queries and keys, all heads together
    v_channels: int  # width of values, all heads together
    output_channels: int  # output projection width: q_dim (cross) or v_channels (self)
    widening_factor: int  # MLP hidden width = widening_factor * q_dim
    use_query_residual: bool  # add the raw (pre-layernorm) query input after the output projection

    @property
    def qk_head_dim(self) -> int:
        """Query/key channels per head; the scores are scaled by ``1/sqrt(qk_head_dim)``."""
        return self.qk_channels // self.num_heads

    @property
    def v_head_dim(self) -> int:
        """Value channels per head."""
        return self.v_channels // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the layer's MLP."""
        return self.widening_factor * self.q_dim
