"""Shape inference: the widths every encoder layer resolves from the config, without computing anything.

This module is the single source of truth for sizes. The model (``attention.py``, ``weights.py``), the
config validation (``config.py``), ``npperceiver explain`` and the diagrams in ``viz/`` all read their
widths from here, so a drawing can never disagree with the forward pass.

The rules mirror HF ``PerceiverAttention.__init__`` and ``PerceiverSelfAttention.__init__``
(``modeling_perceiver.py``, transformers 4.57.6):

* cross-attention with ``qk_channels is None``: qk = ``d_model`` ("kv") or ``d_latents`` ("q");
* otherwise qk = ``qk_channels or d_latents``;
* in both cases v = ``v_channels or qk``;
* the output projection maps v -> ``d_latents`` (cross) or v -> v (self).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only, avoids an import cycle with config.py
    from .config import PerceiverConfig


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


def resolve_cross_attention(config: "PerceiverConfig") -> AttentionDims:
    """Widths of the encoder's cross-attention layer (HF ``PerceiverEncoder.cross_attention``)."""
    D, C = config.d_latents, config.d_model
    if config.qk_channels is None:
        qk = D if config.cross_attention_shape_for_attention == "q" else C
    else:
        qk = config.qk_channels
    v = config.v_channels if config.v_channels is not None else qk
    return AttentionDims(
        is_cross=True, num_heads=config.num_cross_attention_heads, q_dim=D, kv_dim=C,
        qk_channels=qk, v_channels=v, output_channels=D,
        widening_factor=config.cross_attention_widening_factor,
        use_query_residual=config.use_query_residual,
    )


def resolve_self_attention(config: "PerceiverConfig") -> AttentionDims:
    """Widths of each latent self-attention layer (HF ``PerceiverEncoder.self_attends[i]``).

    Self-attention layers always keep their query residual: HF never passes ``use_query_residual``
    to them, so its default ``True`` applies.
    """
    D = config.d_latents
    qk = config.qk_channels if config.qk_channels is not None else D
    v = config.v_channels if config.v_channels is not None else qk
    return AttentionDims(
        is_cross=False, num_heads=config.num_self_attention_heads, q_dim=D, kv_dim=D,
        qk_channels=qk, v_channels=v, output_channels=v,
        widening_factor=config.self_attention_widening_factor, use_query_residual=True,
    )
