"""Stateless primitives: linear, layer norm, softmax and the MLP activations, in float32.

Each mirrors the torch function HF calls, to float32 rounding:

* :func:`linear` -- ``torch.nn.Linear`` (weight stored ``(out, in)``, as torch stores it);
* :func:`layer_norm` -- ``torch.nn.LayerNorm`` with torch's default ``eps=1e-5`` (biased variance);
* :func:`softmax` -- ``torch.nn.Softmax(dim=-1)``, max-shifted so large scores cannot overflow;
* :func:`gelu` -- ``torch.nn.functional.gelu``, the *exact* ``0.5 x (1 + erf(x / sqrt 2))``, which HF's
  ``hidden_act="gelu"`` selects. NumPy has no ``erf``, so :func:`erf` evaluates a float32 rational
  approximation (the one Eigen and XLA use), accurate to a few float32 ulps.

Every forward has its backward right after it (``linear`` / ``linear_backward``, ...), in the style of
llm.c's forward/backward pairs: the backward takes the gradient of the output and what the forward saw,
and returns the gradients of the forward's inputs and parameters, with the math in its docstring. Each
matches torch autograd's formula for the same operation (``docs/training.md``).

Every function keeps the dtype of its input: constants are Python scalars or float32, so nothing is
silently promoted to float64 (and float64 in gives float64 out, which the gradient checks use).

Speed: the heavy lifting is matrix multiplication, done by BLAS. The elementwise work around it runs on
one core in NumPy, one pass over memory per operation, so the functions here make as few passes and as
few new arrays as they can: they work *in place* on arrays they created themselves, and the activations
and :func:`softmax` take an ``out=`` argument so a caller can hand over an array it no longer needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


def linear_backward(
    d_out: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Backward of :func:`linear`: ``dx = d_out @ W;  dW = d_out^T x,  db = d_out``, both summed over every row.

    d_out: shape (..., out); x: the forward's input (..., in); weight (out, in). ``bias`` is accepted and
    unused (the gradient does not depend on it), so the call mirrors the forward's ``**params``.
    Returns dx (..., in) and the parameters' gradients keyed like them: ``{"weight": (out, in), "bias": (out,)}``.
    """
    d_rows = d_out.reshape(-1, d_out.shape[-1])  # (..., out) -> (rows, out)
    dx = d_rows.dot(weight)  # (rows, out) @ (out, in) -> (rows, in)
    dweight = d_rows.T.dot(x.reshape(-1, x.shape[-1]))  # (out, rows) @ (rows, in) -> (out, in): summed over rows
    dbias = d_rows.sum(axis=0)  # (rows, out) -> (out,)
    return dx.reshape(x.shape), {"weight": dweight, "bias": dbias}


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
    with np.errstate(over="ignore", invalid="ignore"):  # huge rows are handled below; NaN rows stay NaN
        centered = x - row_sum(x) / dim  # (..., dim) - (..., 1): the one new full-size array
        centered -= row_sum(centered) / dim  # (..., dim) - (..., 1): one refinement of the float32 mean, so a
        #   constant row centres to exactly 0 and gives exactly ``bias``, as torch's (Welford) LayerNorm does
        sum_sq = np.einsum("...i,...i->...", centered, centered)[..., None]  # (..., dim) -> (..., 1), no temporary
    centered /= np.sqrt(sum_sq / dim + eps)  # (..., dim) / (..., 1): divide by the standard deviation
    centered *= weight  # (..., dim) * (dim,)
    centered += bias  # (..., dim) + (dim,)
    overflowed = ~np.isfinite(sum_sq[..., 0])  # (...): rows beyond ~1e19 in size overflow float32's sum of squares
    if overflowed.any():
        rows = overflowed & np.isfinite(x).all(axis=-1)  # (...): finite rows; a NaN or inf row stays NaN, as in torch
        centered[rows] = _layer_norm_rescaled(x[rows], weight, bias, eps)  # (K, dim)
    return centered


def _layer_norm_rescaled(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """:func:`layer_norm` of rows too large for float32's sum of squares (values beyond about 1e19).

    A layer norm does not change when its row is scaled (eps aside), so each row is divided by its largest
    absolute value first, and eps by that value squared. x: shape (K, dim), finite. DIVERGENCE from HF:
    torch gives wrong values for such rows, then NaN (see docs/hf-parity.md); this gives the exact result.
    """
    scale = np.abs(x).max(axis=-1, keepdims=True)  # (K, 1), > 0 (the row overflowed)
    y = x / scale  # (K, dim), every |value| <= 1
    centered = y - row_sum(y) / y.shape[-1]  # (K, dim) - (K, 1)
    variance = row_sum(centered * centered) / y.shape[-1]  # (K, dim) -> (K, 1)
    scaled_eps = (np.float32(math.sqrt(eps)) / scale) ** 2  # (K, 1): eps / scale**2, without overflowing
    return centered / np.sqrt(variance + scaled_eps) * weight + bias  # (K, dim)


def layer_norm_backward(
    d_out: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray] = None,
    eps: float = LAYER_NORM_EPS,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Backward of :func:`layer_norm`, with ``xhat = (x - mean) * rstd`` and ``rstd = 1 / sqrt(var + eps)``:

    ``dxhat = d_out * weight;  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))``;
    ``dweight = sum(d_out * xhat),  dbias = sum(d_out)`` over every row (torch's formula).

    d_out, x: shape (..., dim); x is the forward's input -- ``xhat`` and ``rstd`` are recomputed from it as
    the forward computes them (a few elementwise passes, cheaper than keeping them). weight: (dim,);
    ``bias`` is accepted and unused, so the call mirrors the forward's ``**params``.
    Returns dx (..., dim) and ``{"weight": (dim,), "bias": (dim,)}``.
    """
    dim = x.shape[-1]
    scale = _huge_row_scale(x)  # (..., 1) or None: rows beyond ~1e19 are normalised scaled down, as in the forward
    if scale is not None:  # layer norm does not change when a row is scaled (with eps / scale**2), and
        x = x / scale  # rstd(x) = rstd(x / scale) / scale: dx is divided by the scale at the end
        eps = (np.float32(math.sqrt(eps)) / scale) ** 2  # (..., 1)
    centered = x - row_sum(x) / dim  # (..., dim): as in the forward, with the same refinement of the mean
    centered -= row_sum(centered) / dim
    rstd = 1 / np.sqrt(np.einsum("...i,...i->...", centered, centered)[..., None] / dim + eps)  # (..., 1)
    x_hat = np.multiply(centered, rstd, out=centered)  # (..., dim), normalised
    d_rows = d_out.reshape(-1, dim)  # (rows, dim)
    dweight = np.einsum("ri,ri->i", d_rows, x_hat.reshape(-1, dim))  # (dim,): sum over rows of d_out * xhat
    dbias = d_rows.sum(axis=0)  # (dim,)
    d_x_hat = d_out * weight  # (..., dim) * (dim,)
    mean_d = row_sum(d_x_hat) / dim  # (..., 1)
    mean_d_x_hat = np.einsum("...i,...i->...", d_x_hat, x_hat)[..., None] / dim  # (..., 1)
    dx = np.subtract(d_x_hat, mean_d, out=d_x_hat)  # (..., dim)
    x_hat *= mean_d_x_hat  # in place: x_hat (our own array) is not needed any more
    dx -= x_hat
    dx *= rstd
    if scale is not None:
        dx /= scale
    return dx, {"weight": dweight, "bias": dbias}


def _huge_row_scale(x: np.ndarray) -> Optional[np.ndarray]:
    """For :func:`layer_norm_backward`: None when every row's float32 sum of squares is finite (the usual case),
    else (..., 1) holding each such finite row's largest absolute value, and 1 for every other row."""
    with np.errstate(over="ignore", invalid="ignore"):
        overflowed = ~np.isfinite(np.einsum("...i,...i->...", x, x))  # (...): one read-only pass
    if not overflowed.any():  # the usual case: no pass over x for its finiteness
        return None
    huge = overflowed & np.isfinite(x).all(axis=-1)  # (...): finite rows whose sum of squares overflowed
    if not huge.any():
        return None
    return np.where(huge, np.abs(x).max(axis=-1), np.ones((), x.dtype))[..., None].astype(x.dtype)  # (..., 1)


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


def softmax_backward(
    d_probs: np.ndarray, probs: np.ndarray, axis: int = -1, out: Optional[np.ndarray] = None
) -> np.ndarray:
    """Backward of :func:`softmax`, from its output p: ``dx = p * (dp - sum(dp * p))`` along ``axis``.

    An entry with p exactly 0 -- a key dropped by an additive mask -- gets exactly 0 gradient.
    d_probs, probs: the same shape (..., K). Returns dx (..., K); ``out=d_probs`` overwrites the incoming
    gradient (a caller's own array) instead of making a new one.
    """
    dp, p = np.moveaxis(d_probs, axis, -1), np.moveaxis(probs, axis, -1)  # views, the softmax axis last
    total = (dp[..., None, :] @ p[..., :, None])[..., 0]  # (..., 1 x K) @ (..., K x 1) -> (..., 1): sum(dp * p),
    #   one dot product per row -- no full-size temporary, and BLAS's accumulation (the gradients' parity
    #   with torch needs it: the key bias's gradient is a sum of these rows, zero but for rounding)
    dx = np.subtract(d_probs, np.moveaxis(total, -1, axis), out=out)  # (..., K): dp - sum(dp * p)
    dx *= probs  # p (dp - sum(dp p)): torch's formula, in its order
    return dx


@dataclass(frozen=True)
class Dropout:
    """``torch.nn.Dropout(p)`` in training mode: each entry is zeroed with probability ``p`` and the survivors
    are scaled by ``1 / (1 - p)``, the random draws coming from ``rng``. HF applies it to the attention
    probabilities only (``attention_probs_dropout_prob``). ``None`` in its place means evaluation mode
    (HF's ``model.eval()``): no dropout.
    """

    p: float
    rng: np.random.Generator

    def noise(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The multiplier ``keep / (1 - p)``: 0 or ``1 / (1 - p)`` per entry, as torch builds it
        (``bernoulli(1 - p)``, then divided by ``1 - p``)."""
        keep = self.rng.random(shape, dtype=np.float32) >= self.p  # True with probability 1 - p
        noise = keep.astype(dtype)
        noise /= np.asarray(1 - self.p, dtype=dtype)  # 0 or 1 / (1 - p), in the array's dtype
        return noise


def dropout(x: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Apply a :meth:`Dropout.noise` multiplier: ``x * noise`` (a new array)."""
    return x * noise


def dropout_backward(d_out: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Backward of :func:`dropout`: ``dx = d_out * noise`` -- a dropped entry passes no gradient."""
    return d_out * noise


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


_INV_SQRT_2PI = _f32(1.0 / math.sqrt(2.0 * math.pi))


def gelu_backward(d_out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Backward of :func:`gelu`: ``dx = d_out * (Phi(x) + x phi(x))`` with ``Phi(x) = (1 + erf(x/sqrt 2)) / 2``
    (the same erf as the forward) and ``phi(x) = exp(-x^2/2) / sqrt(2 pi)`` (torch's ``GeluBackward``).

    x: the forward's input (the MLP's pre-activation), same shape as d_out.
    """
    cdf = x * _SQRT_HALF  # the one new array, as in gelu
    _clamped_rational(cdf, _HALF_ERF_ALPHA, out=cdf)  # erf(x / sqrt 2) / 2
    cdf += _HALF  # Phi(x)
    pdf = x * x
    pdf *= -_HALF
    np.exp(pdf, out=pdf)
    pdf *= _INV_SQRT_2PI  # phi(x)
    pdf *= x
    cdf += pdf  # Phi(x) + x phi(x): GELU's derivative
    cdf *= d_out
    return cdf


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


_THREE_CUBIC = _f32(3 * 0.044715)


def gelu_tanh_backward(d_out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Backward of :func:`gelu_tanh`, with ``u = sqrt(2/pi) (x + 0.044715 x^3)`` and ``t = tanh(u)``:
    ``dx = d_out * ((1 + t) / 2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2))``."""
    x_sq = x * x
    u = x_sq * _GELU_TANH_CUBIC
    u += _ONE
    u *= x
    u *= _SQRT_2_OVER_PI
    t = np.tanh(u, out=u)  # (..., ) tanh(u), in place
    slope = x_sq * _THREE_CUBIC
    slope += _ONE
    slope *= _SQRT_2_OVER_PI  # du/dx
    slope *= _ONE - t * t  # (1 - t^2) du/dx
    slope *= x
    slope += _ONE + t  # x (1 - t^2) du/dx + (1 + t)
    slope *= _HALF
    slope *= d_out
    return slope


def relu(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``max(x, 0)`` (HF ``"relu"``)."""
    return np.maximum(x, 0, out=out)


def relu_backward(d_out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Backward of :func:`relu`: ``dx = d_out * (x > 0)`` (0 at x = 0, as torch)."""
    return np.where(x > 0, d_out, np.zeros((), d_out.dtype))


def silu(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``x * sigmoid(x)`` = ``x / (1 + exp(-x))`` (HF ``"silu"`` / ``"swish"``)."""
    e = np.negative(x)  # the one new array
    np.exp(e, out=e)
    e += _ONE
    return np.divide(x, e, out=e if out is None else out)


def silu_backward(d_out: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Backward of :func:`silu`, with ``s = sigmoid(x)``: ``dx = d_out * s (1 + x (1 - s))`` (torch's formula)."""
    s = np.negative(x)
    np.exp(s, out=s)
    s += _ONE
    np.reciprocal(s, out=s)  # sigmoid(x)
    slope = _ONE - s
    slope *= x
    slope += _ONE
    slope *= s
    slope *= d_out
    return slope


#: HF ``hidden_act`` name -> function (a subset of ``transformers.activations.ACT2FN``).
ACT2FN: dict[str, Callable[..., np.ndarray]] = {  # each takes (x, out=None)
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": relu,
    "silu": silu,
    "swish": silu,
}

#: HF ``hidden_act`` name -> the backward of its function: ``(d_out, x) -> dx``, x the forward's input.
ACT2GRAD: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "gelu": gelu_backward,
    "gelu_new": gelu_tanh_backward,
    "gelu_pytorch_tanh": gelu_tanh_backward,
    "relu": relu_backward,
    "silu": silu_backward,
    "swish": silu_backward,
}
