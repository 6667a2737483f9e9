"""Hypothesis strategies for npperceiver's property tests: configs, random models, inputs and masks.

Names carry the shape letters of the rest of the project (B batch, M inputs, C ``d_model``, N latents,
L self-attention layers applied, H heads). Sizes stay small -- N <= 6, D <= 16, C <= 12, M <= 8, B <= 3,
at most 2 blocks of at most 2 self-attention layers -- so a test runs in milliseconds.

* :func:`configs` -- every kind of config HF accepts: head counts dividing the widths, ``qk_channels`` /
  ``v_channels`` set or unset (the four combinations whose self-attention value width is ``d_latents``),
  both ``cross_attention_shape_for_attention`` values, ``use_query_residual`` both ways, widening factors,
  all activations.
* :func:`models` -- a :class:`npperceiver.PerceiverModel` whose weights are random *and* large enough for
  attention to be far from uniform, with non-trivial layernorm weights and biases. Weights come from a
  seeded ``np.random.Generator``; hypothesis draws the seed.
* :func:`inputs_BMC` -- bounded float32 inputs.
* :func:`keep_masks` -- 0/1 keep-masks (bool, int or float, as the API accepts), optionally with at least
  one kept position per row.
* :func:`head_masks` -- ``head_mask`` of shape (Hs,) or (L, Hs) with at least one zero.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npperceiver as npp
from npperceiver.config import SUPPORTED_ACTIVATIONS

MAX_LATENTS = 6  # N
MAX_D_LATENTS = 16  # D
MAX_D_MODEL = 12  # C
MAX_INPUTS = 8  # M
MAX_BATCH = 3  # B


# ---------------------------------------------------------------------------- configs
@st.composite
def configs(
    draw,
    min_latents: int = 1,
    min_blocks: int = 1,
    max_blocks: int = 2,
    max_self_attends: int = 2,
) -> npp.PerceiverConfig:
    """A valid :class:`npperceiver.PerceiverConfig` (one HF would build *and* run).

    The widths are drawn so that every rule of HF holds: both head counts divide ``d_latents``; every
    resolved query/key and value width divides by its head count; the self-attention value width is
    ``d_latents`` (HF crashes in ``forward`` otherwise).
    """
    Hs = draw(st.sampled_from([1, 2, 3, 4]), label="num_self_attention_heads")
    Hc = draw(st.sampled_from([1, 2, 3, 4]), label="num_cross_attention_heads")
    both = math.lcm(Hs, Hc)  # D must divide by both head counts
    D = both * draw(st.integers(1, MAX_D_LATENTS // both))
    # The four (qk_channels, v_channels) combinations that resolve the self-attention value width to D.
    widths = draw(st.sampled_from(["both unset", "v = D", "qk set, v = D", "qk = D"]))
    qk = v = None
    if widths == "v = D":
        v = D
    elif widths == "qk set, v = D":
        qk = both * draw(st.integers(1, MAX_D_LATENTS // both))  # shared by cross and self: divides by both
        v = D
    elif widths == "qk = D":
        qk = D
    shape_for_attention = draw(st.sampled_from(["kv", "q"]))
    if qk is None and shape_for_attention == "kv":
        # The cross-attention's qk (and, with v unset, its v) width is then d_model: it must split over Hc.
        C = Hc * draw(st.integers(1, MAX_D_MODEL // Hc))
    else:
        C = draw(st.integers(1, MAX_D_MODEL))
    return npp.PerceiverConfig(
        num_latents=draw(st.integers(min_latents, MAX_LATENTS)),
        d_latents=D,
        d_model=C,
        num_blocks=draw(st.integers(min_blocks, max_blocks)),
        num_self_attends_per_block=draw(st.integers(1, max_self_attends)),
        num_self_attention_heads=Hs,
        num_cross_attention_heads=Hc,
        qk_channels=qk,
        v_channels=v,
        cross_attention_shape_for_attention=shape_for_attention,
        self_attention_widening_factor=draw(st.integers(1, 2)),
        cross_attention_widening_factor=draw(st.integers(1, 2)),
        use_query_residual=draw(st.booleans()),
        # HF's default "gelu" about half the time, otherwise any supported activation.
        hidden_act=draw(st.one_of(st.just("gelu"), st.sampled_from(SUPPORTED_ACTIVATIONS))),
    )


# ---------------------------------------------------------------------------- models
def random_model(config: npp.PerceiverConfig, seed: int, sharpness: float = 1.0) -> npp.PerceiverModel:
    """A model with random weights drawn from ``np.random.default_rng(seed)``, loaded by HF key names.

    Unlike HF's initialisation (std 0.02, layernorms 1 and 0, which makes attention almost uniform and
    hides mask bugs), the latents are N(0, 1), Linear weights N(0, 2 / fan_in) so that attention scores
    are O(1), biases N(0, 0.25), layernorm weights N(1, 0.25) and biases N(0, 0.25). ``sharpness``
    multiplies every query and key weight: scores then grow like ``sharpness**2`` (large values test the
    softmax's stability).
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in npp.param_shapes(config).items():
        if key == "embeddings.latents":
            value = rng.standard_normal(shape)
        elif ".layernorm" in key:
            value = (1.0 if key.endswith("weight") else 0.0) + 0.5 * rng.standard_normal(shape)
        elif key.endswith("bias"):
            value = 0.5 * rng.standard_normal(shape)
        else:  # Linear weight (out, in)
            value = rng.standard_normal(shape) * math.sqrt(2.0 / shape[1])
            if key.endswith(("query.weight", "key.weight")):
                value = value * sharpness
        state[key] = value.astype(np.float32)
    return npp.PerceiverModel.from_state_dict(config, state)


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``np.random.default_rng``."""
    return st.integers(0, 2**32 - 1)


def models(config: npp.PerceiverConfig, sharpness: st.SearchStrategy[float] = st.just(1.0)):
    """Strategy: :func:`random_model` for ``config`` with a drawn seed."""
    return st.builds(random_model, st.just(config), seeds(), sharpness)


# ---------------------------------------------------------------------------- inputs and masks
def inputs_BMC(B: int, M: int, C: int, bound: float = 10.0) -> st.SearchStrategy[np.ndarray]:
    """float32 inputs of shape (B, M, C) with every value in [-bound, bound]."""
    return hnp.arrays(np.float32, (B, M, C), elements=st.floats(-bound, bound, width=32))


def generic_arrays(shape: tuple[int, ...], scale: float = 3.0) -> st.SearchStrategy[np.ndarray]:
    """float32 normal(0, scale) arrays of ``shape`` from a drawn seed: generic values, no ties.

    For comparisons with a float64 reference. :func:`inputs_BMC` favours repeated values, and a
    (nearly) constant vector is where LayerNorm is ill-conditioned: the float32 rounding of its mean is
    divided by ``sqrt(var + eps)``, i.e. amplified up to ``1/sqrt(1e-5)`` ~ 316 times, in HF as here.
    """
    return seeds().map(lambda seed: (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32))


def keep_dtypes() -> st.SearchStrategy[type]:
    """The dtypes a 0/1 keep-mask may come in."""
    return st.sampled_from([np.bool_, np.int64, np.float32])


@st.composite
def keep_masks(draw, B: int, K: int, min_kept: int = 0, dtype: Optional[type] = None) -> np.ndarray:
    """A (B, K) keep-mask of 0s and 1s (1 = keep) in a bool, int or float dtype.

    ``min_kept=1`` guarantees at least one kept position in every row; with ``min_kept=0`` rows may be
    entirely masked (the case whose softmax is uniform in HF).
    """
    mask = draw(hnp.arrays(np.bool_, (B, K)))
    if min_kept:
        for b in range(B):  # force positions to 1 until the row keeps min_kept of them
            while mask[b].sum() < min(min_kept, K):
                mask[b, draw(st.integers(0, K - 1))] = True
    dtype = dtype if dtype is not None else draw(keep_dtypes())
    return mask.astype(dtype)


@st.composite
def head_masks(draw, L: int, H: int, two_d: Optional[bool] = None) -> np.ndarray:
    """A float32 ``head_mask`` of shape (H,) or (L, H), with at least one zero.

    Entries are mostly 0 and 1 (silence / keep) and sometimes other multipliers in [0, 2], which HF also
    accepts (probabilities stay non-negative).
    """
    if two_d is None:
        two_d = draw(st.booleans())
    shape = (L, H) if two_d else (H,)
    values = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 2.0, width=32))
    mask = draw(hnp.arrays(np.float32, shape, elements=values))
    mask[np.unravel_index(draw(st.integers(0, mask.size - 1)), shape)] = 0.0
    return mask


@st.composite
def batched_cases(
    draw,
    min_batch: int = 1,
    min_inputs: int = 1,
    min_latents: int = 1,
    min_blocks: int = 1,
    bound: float = 10.0,
    sharpness: st.SearchStrategy[float] = st.just(1.0),
):
    """(model, inputs (B, M, C)) for a drawn config, batch size and number of inputs."""
    config = draw(configs(min_latents=min_latents, min_blocks=min_blocks), label="config")
    model = draw(models(config, sharpness), label="model")
    B = draw(st.integers(min_batch, MAX_BATCH), label="B")
    M = draw(st.integers(min_inputs, MAX_INPUTS), label="M")
    x = draw(inputs_BMC(B, M, config.d_model, bound), label="inputs")
    return model, x
