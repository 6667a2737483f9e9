"""Hypothesis strategies and helpers for the gradient tests (``test_backward.py``).

Small shapes (N <= 5, D <= 12, C <= 8, M <= 6, B <= 3, up to 2 blocks of up to 2 layers) so that a
finite-difference check of a whole model -- two forward passes per parameter tensor -- takes well under a
second. Weights are random *and* large enough for attention to be far from uniform (unlike HF's 0.02 init,
under which every gradient would look alike).

* :func:`grad_configs` -- valid configs of every kind (qk/v set or not, both cross shapes, residual or not,
  every activation, several blocks).
* :func:`random_model` -- a float32 model with such weights from a seed.
* :func:`keep_mask` / :func:`head_mask` -- masks with the cases that matter: partially masked rows, an
  all-masked row, silenced and fractional heads.
* :func:`directional_check` -- central differences along a random direction in each named array.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import numpy as np
from hypothesis import strategies as st

import npperceiver as npp
from npperceiver.config import SUPPORTED_ACTIVATIONS


@st.composite
def grad_configs(draw, max_blocks: int = 2, max_self_attends: int = 2) -> npp.PerceiverConfig:
    """A small config HF can build and run (see ``PerceiverConfig``'s rules)."""
    Hs = draw(st.sampled_from([1, 2, 3]), label="Hs")
    Hc = draw(st.sampled_from([1, 2]), label="Hc")
    both = math.lcm(Hs, Hc)
    # D >= 4 and C >= 3: a layer norm over two entries is nearly singular where they are close (its
    # derivative blows up), which defeats finite differences without testing anything more.
    D = both * draw(st.integers(-(-4 // both), 12 // both), label="D / lcm(Hs, Hc)")
    widths = draw(st.sampled_from(["unset", "v = D", "qk set, v = D"]), label="widths")
    qk = v = None
    if widths == "v = D":
        v = D
    elif widths == "qk set, v = D":
        qk, v = both * draw(st.integers(1, 8 // both)), D
    shape = draw(st.sampled_from(["kv", "q"]), label="cross_attention_shape_for_attention")
    C = Hc * draw(st.integers(-(-3 // Hc), 8 // Hc)) if qk is None and shape == "kv" else draw(st.integers(3, 8))
    return npp.PerceiverConfig(
        num_latents=draw(st.integers(2, 5), label="N"), d_latents=D, d_model=C,
        num_blocks=draw(st.integers(1, max_blocks), label="num_blocks"),
        num_self_attends_per_block=draw(st.integers(1, max_self_attends), label="S"),
        num_self_attention_heads=Hs, num_cross_attention_heads=Hc, qk_channels=qk, v_channels=v,
        cross_attention_shape_for_attention=shape,
        self_attention_widening_factor=draw(st.integers(1, 2)), cross_attention_widening_factor=draw(st.integers(1, 2)),
        use_query_residual=draw(st.booleans(), label="use_query_residual"),
        hidden_act=draw(st.sampled_from(SUPPORTED_ACTIVATIONS), label="hidden_act"),
    )


def random_state(shapes: Mapping[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """float32 values for every key: layernorm weights ~ 1 + N(0, 0.3), biases ~ N(0, 0.3), Linear weights
    ~ N(0, 1.5 / fan_in) (scores of a few units), anything else (latents, embeddings) ~ N(0, 1)."""
    state = {}
    for key, shape in shapes.items():
        if ".layernorm" in key:
            value = (1.0 if key.endswith("weight") else 0.0) + 0.3 * rng.standard_normal(shape)
        elif key.endswith("bias"):
            value = 0.3 * rng.standard_normal(shape)
        elif len(shape) == 2 and key.endswith(".weight") and "embeddings" not in key:
            value = rng.standard_normal(shape) * math.sqrt(1.5 / shape[1])
        else:
            value = rng.standard_normal(shape)
        state[key] = value.astype(np.float32)
    return state


def random_model(config: npp.PerceiverConfig, seed: int) -> npp.PerceiverModel:
    state = random_state(npp.param_shapes(config), np.random.default_rng(seed))
    return npp.PerceiverModel.from_state_dict(config, state)


def random_mlm(config: npp.PerceiverConfig, seed: int) -> npp.PerceiverForMaskedLM:
    state = random_state(npp.mlm_param_shapes(config), np.random.default_rng(seed))
    return npp.PerceiverForMaskedLM.from_state_dict(config, state)


def keep_mask(rng: np.random.Generator, B: int, T: int, all_masked_row: Optional[int] = None) -> np.ndarray:
    """(B, T) int 0/1. Row 0 keeps everything; every other row keeps at least one and drops at least one
    position (when T >= 2); ``all_masked_row`` drops a whole row."""
    keep = np.ones((B, T), np.int64)
    for b in range(1, B):
        keep[b] = rng.random(T) < 0.6
        if T >= 2:
            kept, dropped = rng.permutation(T)[:2]
            keep[b, kept], keep[b, dropped] = 1, 0
    if all_masked_row is not None:
        keep[all_masked_row] = 0
    return keep


def head_mask(rng: np.random.Generator, config: npp.PerceiverConfig, two_d: bool) -> np.ndarray:
    """(Hs,) or (L, Hs): multipliers in {0, 0.5, 1, 1.5}, with at least one 0 in the rows that are read."""
    H, L, S = config.num_self_attention_heads, config.num_self_attention_layers, config.num_self_attends_per_block
    values = np.array([0.0, 0.5, 1.0, 1.5], np.float32)
    mask = values[rng.integers(0, 4, (L, H) if two_d else (H,))]
    mask.flat[rng.integers(0, S * H if two_d else H)] = 0.0
    return mask


def directional_check(
    f: Callable[[dict[str, np.ndarray]], float],
    point: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    rtol: float,
    atol: float = 1e-9,
    h: float = 1e-5,
    rtol_terms: float = 0.0,
) -> float:
    """For each named array x in ``point`` (float64): a random unit-scale direction u, and
    ``(f(x + h u) - f(x - h u)) / 2h`` against ``<grads[name], u>``. Raises naming the first array that
    disagrees by more than ``rtol * max(|fd|, |<g, u>|) + rtol_terms * sum |g u| + atol + noise`` (the second
    term for errors per entry that a cancelling sum would magnify, e.g. GELU's; ``noise = 10 eps |f| / h`` is
    the finite difference's own rounding); returns the worst relative disagreement.
    """
    worst = 0.0
    for name, x in point.items():
        u = rng.standard_normal(x.shape)
        values = []
        for sign in (1, -1):
            moved = dict(point)
            moved[name] = x + sign * h * u
            values.append(f(moved))
        fd = (values[0] - values[1]) / (2 * h)
        analytic = float(np.sum(np.asarray(grads[name], np.float64) * u))
        err = abs(fd - analytic)
        scale = max(abs(fd), abs(analytic))
        noise = 10 * np.finfo(np.float64).eps * max(abs(v) for v in values) / h
        terms = float(np.sum(np.abs(np.asarray(grads[name], np.float64) * u)))
        if not err <= rtol * scale + rtol_terms * terms + atol + noise:
            raise AssertionError(f"{name}: finite difference {fd:.10g}, backward {analytic:.10g} (|diff| {err:.3g})")
        worst = max(worst, err / scale if scale else 0.0)
    return worst
