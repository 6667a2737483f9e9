"""Stateless primitives: linear, layer norm, softmax and the MLP activations, in float32.

Each mirrors the torch function HF calls, to float32 rounding:

* :func:`linear` -- ``torch.nn.Linear`` (weight stored ``(out, in)``, as torch stores it);
* :func:`layer_norm` -- ``torch.nn.LayerNorm`` with torch's default ``eps=1e-5`` (biased variance);
* :func:`softmax` -- ``torch.nn.Softmax(dim=-1)``, max-shifted so large scores cannot overflow;
* :func:`gelu` -- ``torch.nn.functional.gelu``, the *exact* ``0.5 x (1 + erf(x / sqrt 2))``, which HF's
  ``hidden_act="gelu"`` selects. NumPy has no ``erf``, so :func:`erf` evaluates a float32 rational
  approximation (the one Eigen and XLA use), accurate to a few float32 ulps.

Every function keeps the dtype of its input: constants are Python scalars or float32, so nothing is
silently promoted to float64.

Speed: the heavy lifting is matrix multiplication, done by BLAS. The elementwise work around it runs on
one core in NumPy, one pass over memory per operation, so the functions here make as few passes and as
few new arrays as they can: they work *in place* on arrays they created themselves, and the activations
and :func:`softmax` take an ``out=`` argument so a caller can hand over an array it no longer needs.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

#: torch.nn.LayerNorm's default epsilon; HF's ``config.layer_norm_eps`` is never passed to it.
LAYER_NORM_EPS = 1e-5


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``torch.nn.Linear``: ``x @ weight.T + bias``.

    x: shape (..., in); weight: shape (out, in); bias: shape (out,) -> shape (..., out).
    """
    out = x.reshape(-1, x.shape[-1]).dot(weight.T)  # (rows, in) @ (in, out) -> (rows, out): one GEMM
    #                     (ndarray.dot: the same BLAS call as @, with less dispatch work on small arrays)
    out += bias  # (rows, out) + (out,)
    return out.reshape(*x.shape[:-1], weight.shape[0])  # (rows, out) -> (..., out)


def row_sum(x: np.ndarray) -> np.ndarray:
    """Sum over the last axis, kept as a length-1 axis: (..., K) -> (..., 1).

    ``np.einsum`` rather than ``x.sum(axis=-1)``: for rows of a few hundred to a few thousand floats its
    loop is about three times faster, and float32 accurate (relative error ~1e-7 for K in the thousands).
    """
    return np.einsum("...k->...", x)[..., None]  # (..., K) -> (...) -> (..., 1)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = LAYER_NORM_EPS) -> np.ndarray:
    """``torch.nn.LayerNorm(dim)`` over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    x: shape (..., dim); weight, bias: shape (dim,). The variance is the biased one (divide by dim).
    One new array of x's shape; the scaling, weight and bias are applied to it in place.
    """
    dim = x.shape[-1]
    centered = x - row_sum(x) / dim  # (..., dim) - (..., 1): the one new full-size array
    centered -= row_sum(centered) / dim  # (..., dim) - (..., 1): one refinement of the float32 mean, so a
    #   constant row centres to exactly 0 and gives exactly ``bias``, as torch's (Welford) LayerNorm does
    sum_sq = np.einsum("...i,...i->...", centered, centered)[..., None]  # (..., dim) -> (..., 1), no temporary
    centered /= np.sqrt(sum_sq / dim + eps)  # (..., dim) / (..., 1): divide by the standard deviation
    centered *= weight  # (..., dim) * (dim,)
    centered += bias  # (..., dim) + (dim,)
    return centered


def exp_shifted(x: np.ndarray, axis: int = -1, out: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """The numerator of a softmax: ``exp(x - max(x))`` along ``axis``, and that maximum.

    Every entry lies in (0, 1] and each row's largest is exactly 1, so nothing overflows and no row sums
    to 0. With HF's additive mask, a row whose scores are *all* ``finfo(float32).min`` shifts to zeros
    and comes out as ones (uniform after normalisation), exactly as torch's softmax does.
    ``out`` (x's shape, may be ``x`` itself) receives the result; otherwise a new array is made.
    """
    x_max = np.fmax.reduce(x, axis=axis, keepdims=True)  # (..., 1): x.max(axis), faster; a NaN row stays NaN
    e = np.subtract(x, x_max, out=out)  # same shape as x, every entry <= 0
    np.exp(e, out=e)  # in place: (0, 1]
    return e, x_max


def softmax(x: np.ndarray, axis: int = -1, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Softmax along ``axis``, shifted by the maximum so ``exp`` never overflows (``torch.nn.Softmax``).

    ``out=x`` overwrites the scores with the probabilities, which saves a full-size array.
    """
    e, _ = exp_shifted(x, axis=axis, out=out)  # same shape as x
    e /= e.sum(axis=axis, keepdims=True)  # (..., K) / (..., 1): rows sum to 1
    return e


def _f32(value: float) -> np.ndarray:
    """A float32 constant as a 0-d array (see below)."""
    return np.array(value, dtype=np.float32)


_HALF, _ONE, _FOUR, _MINUS_FOUR = _f32(0.5), _f32(1.0), _f32(4.0), _f32(-4.0)

# Rational approximation of erf on [-4, 4] (odd numerator of degree 13, even denominator of degree 8),
# the float32 kernel of Eigen's `generic_fast_erf_float` and XLA's `ErfImpl32`. Outside [-4, 4],
# erf(x) rounds to +-1 in float32, so the input is clamped there. Coefficients from the highest power down.
# Constants used in elementwise work are 0-d float32 arrays: NumPy takes its array-operand fast path for
# them, while a Python or NumPy scalar is converted on every call (a third of GELU's time on small arrays).
_ERF_ALPHA = tuple(_f32(c) for c in (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02))
_ERF_BETA = tuple(_f32(c) for c in (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02))


def _polynomial(t: np.ndarray, coefficients: tuple) -> np.ndarray:
    """Horner's rule, ``(((c0 t + c1) t + c2) t + ...)``: one new array, two in-place passes per degree."""
    result = t * coefficients[0]
    result += coefficients[1]
    for c in coefficients[2:]:
        result *= t
        result += c
    return result


def _clamped_rational(x: np.ndarray, numerator_coefficients: tuple, out: Optional[np.ndarray]) -> np.ndarray:
    """``z P(z^2) / Q(z^2)`` with z = x clamped to [-4, 4]: erf's rational form, written into ``out``."""
    z = x.clip(_MINUS_FOUR, _FOUR, out=out)  # erf(+-4) == +-1 to float32 precision; one pass
    z2 = z * z
    numerator = _polynomial(z2, numerator_coefficients)  # P(z^2), degree 6 in z^2
    denominator = _polynomial(z2, _ERF_BETA)  # Q(z^2), degree 4 in z^2
    z *= numerator
    z /= denominator
    return z


def erf(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """The error function, vectorised, in the dtype of ``x`` (float32 accuracy).

    ``x P(x^2) / Q(x^2)`` on the clamped input; ``out`` (may be ``x``) receives the result.
    """
    return _clamped_rational(x, _ERF_ALPHA, out)


_SQRT_HALF = _f32(1.0 / math.sqrt(2.0))
_HALF_ERF_ALPHA = tuple(_f32(c * _HALF) for c in _ERF_ALPHA)  # P/2, so z P/2 / Q = erf/2: exact (a power of two)


def gelu(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact GELU, ``torch.nn.functional.gelu`` (HF ``hidden_act="gelu"``): ``0.5 x (1 + erf(x/sqrt 2))``.

    Computed as ``x * (0.5 + erf(x/sqrt 2)/2)``, with the halving folded into erf's coefficients: the same
    float32 numbers, one pass fewer. ``out`` (may be ``x``, e.g. an MLP's hidden layer that is used only
    once) receives the result.
    """
    cdf = x * _SQRT_HALF  # the one new array; everything below works on it in place
    _clamped_rational(cdf, _HALF_ERF_ALPHA, out=cdf)  # erf(x / sqrt 2) / 2
    cdf += _HALF  # the normal CDF
    return np.multiply(x, cdf, out=cdf if out is None else out)


_SQRT_2_OVER_PI, _GELU_TANH_CUBIC = _f32(math.sqrt(2.0 / math.pi)), _f32(0.044715)


def gelu_tanh(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Tanh-approximated GELU (HF ``"gelu_new"`` / ``"gelu_pytorch_tanh"``):
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    t = x * _GELU_TANH_CUBIC  # the one new array
    t *= x
    t *= x
    t += x
    t *= _SQRT_2_OVER_PI
    np.tanh(t, out=t)
    t += _ONE
    result = np.multiply(x, t, out=t if out is None else out)
    result *= _HALF
    return result


def relu(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``max(x, 0)`` (HF ``"relu"``)."""
    return np.maximum(x, 0, out=out)


def silu(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``x * sigmoid(x)`` = ``x / (1 + exp(-x))`` (HF ``"silu"`` / ``"swish"``)."""
    e = np.negative(x)  # the one new array
    np.exp(e, out=e)
    e += _ONE
    return np.divide(x, e, out=e if out is None else out)


#: HF ``hidden_act`` name -> function (a subset of ``transformers.activations.ACT2FN``).
ACT2FN: dict[str, Callable[..., np.ndarray]] = {  # each takes (x, out=None)
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": relu,
    "silu": silu,
    "swish": silu,
}
