"""The stateless primitives against the standard library's math, value by value."""

import math

import numpy as np

from npperceiver.functional import erf, gelu, softmax

# A grid over the range where GELU's two forms differ most, plus the tails and exact zero.
POINTS = np.concatenate([np.linspace(-6.0, 6.0, 481), [-30.0, -10.0, 0.0, 10.0, 30.0]]).astype(np.float32)


def test_erf_matches_math_erf():
    """erf agrees with math.erf to float32 accuracy everywhere, tails included."""
    expected = np.array([math.erf(float(t)) for t in POINTS])
    np.testing.assert_allclose(erf(POINTS), expected, rtol=0, atol=5e-7)  # a few float32 ulps


def test_gelu_is_the_exact_erf_form():
    """gelu is HF's "gelu", 0.5 x (1 + erf(x / sqrt 2)), not the tanh approximation (which is off by up to 5e-4)."""
    expected = np.array([0.5 * float(t) * (1.0 + math.erf(float(t) / math.sqrt(2.0))) for t in POINTS])
    out = gelu(POINTS)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=2e-6)  # torch itself is 1.1e-6 off


def test_softmax_of_huge_scores_is_finite():
    """Softmax stays finite for scores far beyond exp's float32 range, and an all-minimum row is uniform."""
    scores = np.array([[1e4, 0.0, -1e4], [np.finfo(np.float32).min] * 3], np.float32)
    p = softmax(scores)
    assert np.all(np.isfinite(p))
    np.testing.assert_array_equal(p[0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(p[1], np.full(3, np.float32(1) / np.float32(3)))


def test_layer_norm_of_a_constant_row_is_exactly_the_bias():
    """A constant row has zero variance: torch's LayerNorm returns exactly ``bias``; so must ours (a float32
    mean that misses the constant by one ulp would be amplified by 1/sqrt(eps) = 316)."""
    from npperceiver.functional import layer_norm

    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((2, 1280)).astype(np.float32)
    rows = np.array([[0.1], [3.7], [-12.3456], [1e-3]], np.float32) * np.ones((1, 1280), np.float32)
    assert np.array_equal(layer_norm(rows, weight, bias), np.broadcast_to(bias, rows.shape))
