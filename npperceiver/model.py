"""PerceiverModel: the user-facing encoder -- config + parameters, called like HF's ``PerceiverModel``.

Mirrors HF ``PerceiverModel.forward`` without an input preprocessor or decoder (``modeling_perceiver.py``,
transformers 4.57.6, lines 603-856): check the inputs, turn the masks into what the encoder adds and
multiplies, broadcast the latent array, run the encoder.

Mask names at this level (see ``masks.py`` for what each does):

* ``attention_mask`` (B, M) -- over the **inputs**, as in HF; becomes the encoder's ``inputs_mask``;
* ``latent_mask`` (B, N) -- over the latents; becomes the encoder's ``attention_mask``. npperceiver's
  addition: HF's ``PerceiverModel`` always passes ``attention_mask=None`` to its encoder;
* ``head_mask`` (Hs,) or (L, Hs) -- transformers 4.x semantics (removed in 5.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from .config import PerceiverConfig
from .encoder import EncoderOutput, latent_array, perceiver_encoder
from .masks import check_keep_mask, get_head_mask, invert_attention_mask
from .weights import flatten, init_params, param_shapes, params_from_state_dict


@dataclass
class PerceiverModelOutput(EncoderOutput):
    """HF ``PerceiverModelOutput`` without ``logits`` (there is no decoder): ``last_hidden_state`` (B, N, D),
    and when asked for, ``hidden_states``, ``attentions`` (B, Hs, N, N) each, ``cross_attentions`` (B, Hc, N, M)."""


class PerceiverModel:
    """The Perceiver encoder with its weights (HF ``PerceiverModel`` with no preprocessor or decoder).

    Build it with :meth:`init` (random, HF-style) or :meth:`from_state_dict` (HF weights), then call it.
    ``params`` is a nested dict of float32 arrays laid out like HF's module tree (see ``weights.py``).
    """

    def __init__(self, config: PerceiverConfig, params: dict) -> None:
        if not isinstance(config, PerceiverConfig):
            raise ValueError(f"config must be a PerceiverConfig, got {type(config).__name__}")
        self.config = config
        self.params = params

    # ------------------------------------------------------------------ construction
    @classmethod
    def init(cls, config: PerceiverConfig, seed: int = 0) -> "PerceiverModel":
        """A model with HF-style random weights drawn from ``np.random.default_rng(seed)``."""
        return cls(config, init_params(config, np.random.default_rng(seed)))

    @classmethod
    def from_state_dict(
        cls, config: PerceiverConfig, state_dict: Mapping[str, Any], strict: bool = True
    ) -> "PerceiverModel":
        """Load HF weights: keys as in ``PerceiverModel.state_dict()``, with or without ``perceiver.``.

        Values are anything ``np.asarray`` accepts (numpy arrays; torch tensors after ``.detach()``).
        Missing, unexpected (unless ``strict=False``) or wrongly shaped tensors raise a ``ValueError``
        listing every one of them.
        """
        return cls(config, params_from_state_dict(config, state_dict, strict=strict))

    def state_dict(self) -> dict[str, np.ndarray]:
        """HF key names -> the model's arrays (not copies), in HF order."""
        flat = dict(flatten(self.params))
        return {k: flat[k] for k in param_shapes(self.config)}

    # ------------------------------------------------------------------ forward
    def __call__(
        self,
        inputs: Any,
        attention_mask: Optional[Any] = None,
        head_mask: Optional[Any] = None,
        latent_mask: Optional[Any] = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        cross_attention_chunk_size: Optional[int] = None,
    ) -> PerceiverModelOutput:
        """Encode ``inputs`` (B, M, d_model) into latents (B, N, D) -- HF ``PerceiverModel.forward``.

        Parameters
        ----------
        inputs : shape (B, M, C) with C = ``d_model``; converted to float32.
        attention_mask : shape (B, M), 1 keeps an input, 0 drops it (cross-attention only).
        head_mask : shape (Hs,) or (L, Hs); multiplies self-attention probabilities. HF QUIRK: layer i of
            *every* block reads row i, so rows S..L-1 change nothing.
        latent_mask : shape (B, N), 1 keeps a latent as a key in every self-attention layer.
        output_attentions, output_hidden_states : also return the probabilities / intermediate latents.
        cross_attention_chunk_size : None (the default: one pass, as HF) or a positive int: the
            cross-attention then streams over the inputs that many at a time with an online softmax, so
            its extra memory stays flat as M grows instead of holding the (B, Hc, N, M) scores. Same
            result to float32 rounding, masks included. Ignored with ``output_attentions=True``, which
            needs the full cross-attention probabilities. Pays off for long inputs (a few thousand and
            up; see docs/performance.md); 1024 to 2048 is a good value.
        """
        cfg = self.config
        inputs = _check_inputs(inputs, cfg.d_model)  # (B, M, C) float32
        B, M, _ = inputs.shape
        N = cfg.num_latents
        _check_chunk_size(cross_attention_chunk_size)

        # attention_mask over the inputs -> additive inputs_mask (B, 1, 1, M) for the cross-attention.
        # (HF makes an all-ones mask when none is given; adding its zeros changes nothing, so we skip
        # it -- and likewise skip a given mask that keeps every input, as transformers 5 does.)
        inputs_mask = None
        if attention_mask is not None:
            keep = check_keep_mask(attention_mask, "attention_mask", (B, M), "(B, M)")
            if not keep.all():
                inputs_mask = invert_attention_mask(keep)  # (B, M) -> (B, 1, 1, M)

        # latent_mask over the latents -> the encoder's additive attention_mask (B, 1, 1, N).
        latent_bias = None
        if latent_mask is not None:
            keep = check_keep_mask(latent_mask, "latent_mask", (B, N), "(B, N)")
            if not keep.all():
                latent_bias = invert_attention_mask(keep)  # (B, N) -> (B, 1, 1, N)

        head_mask = get_head_mask(head_mask, cfg.num_self_attention_heads, cfg.num_self_attention_layers)
        if head_mask is not None and np.all(head_mask == 1):
            head_mask = None  # multiplying by ones changes no number

        latents = latent_array(self.params["embeddings"]["latents"], B)  # (N, D) -> (B, N, D)
        out = perceiver_encoder(
            self.params["encoder"], cfg, latents, attention_mask=latent_bias, head_mask=head_mask,
            inputs=inputs, inputs_mask=inputs_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            cross_attention_chunk_size=cross_attention_chunk_size,
        )
        return PerceiverModelOutput(out.last_hidden_state, out.hidden_states, out.attentions, out.cross_attentions)


def _check_chunk_size(chunk_size: Any) -> None:
    """``cross_attention_chunk_size`` must be None or a positive int."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
        raise ValueError(f"cross_attention_chunk_size must be None or a positive integer, got {chunk_size!r}")


def _check_inputs(inputs: Any, d_model: int) -> np.ndarray:
    """Inputs must be a real (B, M, d_model) array with B, M >= 1; returned as float32."""
    arr = np.asarray(inputs)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"inputs must be a real-valued array, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"inputs must have shape (B, M, C) = (batch, inputs, d_model={d_model}), got {arr.shape}")
    if arr.shape[-1] != d_model:
        raise ValueError(
            f"inputs' last dimension must equal config.d_model ({d_model}), got {arr.shape[-1]} "
            f"(inputs shape {arr.shape})"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"inputs must have at least one batch row and one input, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)
