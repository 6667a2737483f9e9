"""The torch twin of ``npperceiver.seq2seq``, built from HF transformers' own Perceiver modules.

The same model, parameter for parameter: ``TorchSeq2Seq(config).state_dict()`` has exactly the keys and
shapes of ``npperceiver.seq2seq.seq2seq_param_shapes(config)``, so weights copy both ways. The encoder *is*
HF's ``PerceiverModel`` with a ``PerceiverTextPreprocessor`` (as inside ``PerceiverForMaskedLM``); every
decoder attention is HF's ``PerceiverAttention`` and every attention + MLP HF's ``PerceiverLayer``. Only
the arrangement of the decoder is written here, independently of the NumPy code.

Used by the parity tests (``tests/test_seq2seq.py``) and by the recipe search
(``benchmarks/translate_recipe.py``), which trains it with ``torch.optim.AdamW``. Attention dropout is off
(``attention_probs_dropout_prob=0``) unless asked for: the NumPy forward pass has none.

Imported only after ``pytest.importorskip("torch")`` and ``("transformers")``.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import torch
from torch import nn
from transformers import PerceiverConfig as HFConfig
from transformers.models.perceiver.modeling_perceiver import (
    PerceiverAttention, PerceiverLayer, PerceiverModel, PerceiverTextPreprocessor, PerceiverTrainablePositionEncoding,
)

from npperceiver.seq2seq import Seq2SeqConfig
from npperceiver.tasks import BOS_ID, EOS_ID
from npperceiver.tokenizer import PAD_ID


def hf_config(config: Seq2SeqConfig, dropout: float = 0.0) -> HFConfig:
    """The encoder's config as HF's; attention dropout off unless asked for (HF applies it in every attention)."""
    return HFConfig(**{**config.encoder.to_dict(), "attention_probs_dropout_prob": dropout})


def _cross_layer(hf: HFConfig, config: Seq2SeqConfig) -> PerceiverLayer:
    dims = config.decoder_cross_attention
    return PerceiverLayer(
        hf, is_cross_attention=True, qk_channels=dims.qk_channels, v_channels=dims.v_channels,
        num_heads=dims.num_heads, q_dim=dims.q_dim, kv_dim=dims.kv_dim, widening_factor=dims.widening_factor,
        use_query_residual=dims.use_query_residual,
    )


class DecoderLayer(nn.Module):
    """One autoregressive decoder layer: causal self-attention, then cross-attention to the latents + MLP."""

    def __init__(self, hf: HFConfig, config: Seq2SeqConfig) -> None:
        super().__init__()
        dims = config.decoder_self_attention
        self.self_attention = PerceiverAttention(
            hf, is_cross_attention=False, qk_channels=dims.qk_channels, v_channels=dims.v_channels,
            num_heads=dims.num_heads, q_dim=dims.q_dim, kv_dim=dims.kv_dim, use_query_residual=True,
        )
        self.cross_attention = _cross_layer(hf, config)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        x = self.self_attention(x, attention_mask=causal)[0]  # x + SelfAttention(LN(x)), causal
        return self.cross_attention(x, inputs=latents)[0]  # x + CrossAttention(LN(x), LN(z)) + MLP


class AutoregressiveDecoder(nn.Module):
    def __init__(self, hf: HFConfig, config: Seq2SeqConfig) -> None:
        super().__init__()
        V, T, E = config.target_vocab_size, config.max_target_length, config.d_decoder
        self.embeddings = nn.Embedding(V, E)
        self.position_embeddings = nn.Embedding(T, E)
        self.layers = nn.ModuleList([DecoderLayer(hf, config) for _ in range(config.num_decoder_layers)])
        self.layernorm = nn.LayerNorm(E)
        self.lm_head = nn.Linear(E, V)

    def forward(self, latents: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        T = decoder_input_ids.shape[1]
        x = self.embeddings(decoder_input_ids) + self.position_embeddings.weight[:T]  # (B, T, E)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # (T, T)
        causal = torch.zeros(T, T).masked_fill(future, torch.finfo(torch.float32).min)[None, None]  # (1, 1, T, T)
        for layer in self.layers:
            x = layer(x, latents, causal)
        return self.lm_head(self.layernorm(x))  # (B, T, V)


class QueriesDecoder(nn.Module):
    def __init__(self, hf: HFConfig, config: Seq2SeqConfig) -> None:
        super().__init__()
        V, T, E = config.target_vocab_size, config.max_target_length, config.d_decoder
        self.output_position_encodings = PerceiverTrainablePositionEncoding(T, E)
        self.decoding_cross_attention = _cross_layer(hf, config)
        self.layernorm = nn.LayerNorm(E)
        self.lm_head = nn.Linear(E, V)

    def forward(self, latents: torch.Tensor, decoder_input_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        query = self.output_position_encodings(latents.shape[0])  # (B, T, E)
        x = self.decoding_cross_attention(query, inputs=latents)[0]  # (B, T, E)
        return self.lm_head(self.layernorm(x))  # (B, T, V)


class TorchSeq2Seq(nn.Module):
    """``npperceiver.seq2seq.PerceiverSeq2Seq`` in torch: the same keys, shapes and forward pass."""

    def __init__(self, config: Seq2SeqConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        hf = hf_config(config, dropout)
        self.perceiver = PerceiverModel(hf, input_preprocessor=PerceiverTextPreprocessor(hf))
        decoder = AutoregressiveDecoder if config.decoder == "autoregressive" else QueriesDecoder
        self.decoder = decoder(hf, config)

    def load_numpy(self, state_dict: Mapping[str, np.ndarray]) -> "TorchSeq2Seq":
        """Copy weights keyed like ``PerceiverSeq2Seq.state_dict()`` (strict: every key, exact shapes)."""
        self.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state_dict.items()})
        return self

    def numpy_state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.state_dict().items()}

    def encode(self, source_ids: torch.Tensor, source_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.perceiver(inputs=source_ids, attention_mask=source_mask).last_hidden_state  # (B, N, D)

    def forward(self, source_ids: torch.Tensor, source_mask: Optional[torch.Tensor] = None,
                decoder_input_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, T', V)."""
        return self.decoder(self.encode(source_ids, source_mask), decoder_input_ids)

    @torch.no_grad()
    def generate(self, source_ids: torch.Tensor, source_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Greedy decoding, as ``PerceiverSeq2Seq.generate``: (B, T) ids, never [PAD] or [BOS] before the first
        [EOS], [PAD] after it."""
        latents = self.encode(source_ids, source_mask)
        B, T = latents.shape[0], self.config.max_target_length
        never = torch.zeros(self.config.target_vocab_size)
        never[[PAD_ID, BOS_ID]] = float("-inf")
        if self.config.decoder == "queries":
            out = (self.decoder(latents) + never).argmax(-1)
        else:
            out = torch.full((B, T), PAD_ID, dtype=torch.long)
            prefix = torch.full((B, 1), BOS_ID, dtype=torch.long)
            for t in range(T):
                out[:, t] = (self.decoder(latents, prefix)[:, t] + never).argmax(-1)
                prefix = torch.cat([prefix, out[:, t:t + 1]], dim=1)
                if (out[:, : t + 1] == EOS_ID).any(dim=1).all():
                    break
        eos = out == EOS_ID
        after = (eos.cumsum(1) - eos.long()) > 0
        return out.masked_fill(after, PAD_ID)


def shift_right(target_ids: torch.Tensor) -> torch.Tensor:
    """``[BOS]`` then the target without its last position."""
    bos = torch.full((target_ids.shape[0], 1), BOS_ID, dtype=target_ids.dtype)
    return torch.cat([bos, target_ids[:, :-1]], dim=1)


def loss_of(model: TorchSeq2Seq, source_ids, source_mask, target_ids) -> torch.Tensor:
    """The training loss: cross-entropy over target positions, [PAD] ignored (as ``seq2seq_loss``)."""
    decoder_input = shift_right(target_ids) if model.config.decoder == "autoregressive" else None
    logits = model(source_ids, source_mask, decoder_input)  # (B, T, V)
    labels = target_ids.masked_fill(target_ids == PAD_ID, -100)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
