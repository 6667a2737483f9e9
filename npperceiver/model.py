"""PerceiverModel: the user-facing encoder -- config + parameters, called like HF's ``PerceiverModel``.

Mirrors HF ``PerceiverModel.forward`` without an input preprocessor or decoder (``modeling_perceiver.py``,
transformers 4.57.6, lines 603-856): check the inputs, turn the masks into what the encoder adds and
multiplies, broadcast the latent array, run the encoder.

Mask names at this level (see ``masks.py`` for what each does):

* ``attention_mask`` (B, M) -- over the **inputs**, as in HF; becomes the encoder's ``inputs_mask``;
* ``latent_mask`` (B, N) -- over the latents; becomes the encoder's ``attention_mask``. npperceiver's
  addition: HF's ``PerceiverModel`` always passes ``attention_mask=None`` to its encoder;
* ``head_mask`` (Hs,) or (L, Hs) -- transformers 4.x semantics (removed in 5.0).

Training: :meth:`PerceiverModel.vjp` gives the gradient of every parameter and of the inputs for a given
cotangent of ``last_hidden_state`` (the hand-written backward of ``encoder.py``, ``layers.py`` and
``attention.py``; ``docs/training.md``). The same in two steps: call the model with a ``cache`` dict, then
:meth:`PerceiverModel.backward` with that cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from .attention import Cache, child
from .config import PerceiverConfig
from .encoder import EncoderOutput, latent_array, latent_array_backward, perceiver_encoder, perceiver_encoder_backward
from .functional import Dropout
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

    @property
    def dtype(self) -> np.dtype:
        """The dtype the model computes in: float32, or float64 after ``astype(np.float64)``."""
        return self.params["embeddings"]["latents"].dtype

    def astype(self, dtype: Any) -> "PerceiverModel":
        """A copy of the model whose parameters -- and so whose computation, inputs included -- are in
        ``dtype``. ``astype(np.float64)`` is the explicit float64 mode the gradient checks use; the model
        itself is float32."""
        return type(self)(self.config, cast_params(self.params, dtype))

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
        *,
        dropout_rng: Optional[np.random.Generator] = None,
        cache: Optional[Cache] = None,
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
        dropout_rng : None (the default) runs the model as HF's ``eval()`` does: no dropout. A
            ``np.random.Generator`` switches on training-mode dropout of every attention's probabilities
            with ``config.attention_probs_dropout_prob``, drawn from it.
        cache : a dict to record what :meth:`backward` needs (training); None records nothing.
        """
        cfg = self.config
        inputs = _check_inputs(inputs, cfg.d_model, self.dtype)  # (B, M, C) in the model's dtype, float32
        _check_chunk_size(cross_attention_chunk_size)
        B, M, _ = inputs.shape
        inputs_mask, latent_bias, head_mask = self._masks(B, M, attention_mask, latent_mask, head_mask)
        if cache is not None:
            cache["batch_size"] = B
        latents = latent_array(self.params["embeddings"]["latents"], B)  # (N, D) -> (B, N, D)
        out = perceiver_encoder(
            self.params["encoder"], cfg, latents, attention_mask=latent_bias, head_mask=head_mask,
            inputs=inputs, inputs_mask=inputs_mask,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            cross_attention_chunk_size=cross_attention_chunk_size,
            dropout=attention_dropout(cfg, dropout_rng), cache=child(cache, "encoder"),
        )
        return PerceiverModelOutput(out.last_hidden_state, out.hidden_states, out.attentions, out.cross_attentions)

    def _masks(
        self, B: int, M: int, attention_mask: Optional[Any], latent_mask: Optional[Any], head_mask: Optional[Any]
    ) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
        """Check the three masks and turn them into what the encoder adds and multiplies."""
        cfg = self.config
        N = cfg.num_latents

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
        return inputs_mask, latent_bias, head_mask

    # ------------------------------------------------------------------ backward
    def backward(self, d_last_hidden_state: Any, cache: Cache) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The gradients, given the gradient of a call's ``last_hidden_state`` and the ``cache`` it recorded
        (the functions' order: ``*_backward(d_out, params, cache)``).

        Returns ``(grads, inputs_grad)``: ``grads`` keyed exactly like :meth:`state_dict`, ``inputs_grad``
        of the inputs' shape (B, M, C). ``d_last_hidden_state`` must have shape (B, N, D). The backward uses the
        cache up, layer by layer (as torch frees a graph's saved tensors): record a new one for each backward.
        """
        shape = (cache["batch_size"], self.config.num_latents, self.config.d_latents)  # (B, N, D)
        d_last = _check_cotangent(d_last_hidden_state, shape, "d_last_hidden_state", self.dtype)
        d_latents, d_inputs, encoder_grads = perceiver_encoder_backward(
            d_last, self.params["encoder"], cache["encoder"])  # (B, N, D), (B, M, C)
        grads = {"embeddings": {"latents": latent_array_backward(d_latents)}, "encoder": encoder_grads}
        return grads_state_dict(grads, param_shapes(self.config)), d_inputs

    def vjp(
        self,
        inputs: Any,
        cotangent: Any,
        attention_mask: Optional[Any] = None,
        head_mask: Optional[Any] = None,
        latent_mask: Optional[Any] = None,
        *,
        dropout_rng: Optional[np.random.Generator] = None,
        cross_attention_chunk_size: Optional[int] = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The vector-Jacobian product of ``last_hidden_state``: for ``y = model(inputs, ...).last_hidden_state``
        and ``cotangent`` = dL/dy of shape (B, N, D), the gradients dL/dparameter and dL/dinputs.

        What ``torch.autograd.grad(y, [*model.parameters(), inputs], cotangent)`` gives for HF's model in
        ``eval()`` mode. The masks take the same arguments, checks and meaning as in :meth:`__call__`.
        Returns ``(grads, inputs_grad)``: ``grads`` keyed exactly like :meth:`state_dict` (float32 arrays of
        the parameters' shapes), ``inputs_grad`` of the inputs' shape (B, M, C). ``dropout_rng`` as in
        :meth:`__call__` (None: no dropout, as HF's ``eval()``). ``cross_attention_chunk_size``: stream the
        cross-attention over the inputs in the forward *and* the backward (each chunk recomputed there), so
        the memory of long inputs stays flat; the same gradients to float32 rounding (not with dropout).
        """
        inputs = _check_inputs(inputs, self.config.d_model, self.dtype)  # (B, M, C)
        B = inputs.shape[0]
        cotangent = _check_cotangent(cotangent, (B, self.config.num_latents, self.config.d_latents), "cotangent",
                                     self.dtype)
        cache: Cache = {}
        self(inputs, attention_mask=attention_mask, head_mask=head_mask, latent_mask=latent_mask,
             cross_attention_chunk_size=cross_attention_chunk_size, dropout_rng=dropout_rng, cache=cache)
        return self.backward(cotangent, cache)


def grads_state_dict(grads: dict, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Nested gradients (laid out like the params) -> ``{state-dict key: gradient}`` in ``shapes``' order.

    Every key must be present with its parameter's shape (an internal invariant of the backward)."""
    flat = dict(flatten(grads))
    assert set(flat) == set(shapes), f"gradients and parameters differ: {sorted(set(flat) ^ set(shapes))}"
    for key, shape in shapes.items():
        assert flat[key].shape == tuple(shape), f"{key}: gradient {flat[key].shape}, parameter {shape}"
    return {key: flat[key] for key in shapes}


def cast_params(params: Any, dtype: Any) -> Any:
    """A copy of nested parameters (dicts and lists of arrays) in ``dtype``."""
    if isinstance(params, dict):
        return {k: cast_params(v, dtype) for k, v in params.items()}
    if isinstance(params, list):
        return [cast_params(v, dtype) for v in params]
    return np.array(params, dtype=dtype)


def attention_dropout(config: PerceiverConfig, rng: Optional[np.random.Generator]) -> Optional[Dropout]:
    """Training-mode dropout of the attention probabilities, ``p = config.attention_probs_dropout_prob`` drawn
    from ``rng``; None (evaluation, HF's ``eval()``) when ``rng`` is None or p is 0."""
    if rng is None:
        return None
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"dropout_rng must be a numpy Generator (np.random.default_rng(seed)) or None, got {type(rng).__name__}"
        )
    p = config.attention_probs_dropout_prob
    return Dropout(p, rng) if p > 0 else None


def _check_cotangent(value: Any, shape: tuple[int, ...], name: str, dtype: np.dtype) -> np.ndarray:
    """A gradient handed to a backward: real, finite, of the output's exact shape."""
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a real-valued array, got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(
            f"{name} must have the shape of last_hidden_state (B, N, D) = {tuple(shape)}, got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, found {int(np.sum(~np.isfinite(arr)))} NaN/inf value(s)")
    return arr.astype(dtype, copy=False)


def _check_chunk_size(chunk_size: Any) -> None:
    """``cross_attention_chunk_size`` must be None or a positive int."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
        raise ValueError(f"cross_attention_chunk_size must be None or a positive integer, got {chunk_size!r}")


def _check_inputs(inputs: Any, d_model: int, dtype: Any = np.float32) -> np.ndarray:
    """Inputs must be a real (B, M, d_model) array with B, M >= 1; returned as float32 (the model's dtype)."""
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
    return arr.astype(dtype, copy=False)
