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
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: torch.nn.LayerNorm's default epsilon; HF's ``config.layer_norm_eps`` is never passed to it.
LAYER_NORM_EPS = 1e-5


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``torch.nn.Linear``: ``x @ weight.T + bias``.

    x: shape (..., in); weight: shape (out, in); bias: shape (out,) -> shape (..., out).
    """
    out = x.reshape(-1, x.shape[-1]) @ weight.T  # (rows, in) @ (in, out) -> (rows, out): one GEMM
    out += bias  # (rows, out) + (out,)
    return out.reshape(*x.shape[:-1], weight.shape[0])  # (rows, out) -> (..., out)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = LAYER_NORM_EPS) -> np.ndarray:
    """``torch.nn.LayerNorm(dim)`` over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    x: shape (..., dim); weight, bias: shape (dim,). The variance is the biased one (divide by dim).
    """
    mean = x.mean(axis=-1, keepdims=True)  # (..., 1)
    centered = x - mean  # (..., dim)
    var = np.mean(centered * centered, axis=-1, keepdims=True)  # (..., 1)
    return centered / np.sqrt(var + eps) * weight + bias  # (..., dim)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the maximum so ``exp`` never overflows.

    With HF's additive mask every masked score is ``finfo(float32).min``; a row whose scores are *all*
    that value shifts to all zeros and comes out uniform, exactly as torch's softmax does.
    """
    e = np.exp(x - x.max(axis=axis, keepdims=True))  # same shape as x, every entry in (0, 1]
    return e / e.sum(axis=axis, keepdims=True)


# Rational approximation of erf on [-4, 4] (odd numerator of degree 13, even denominator of degree 8),
# the float32 kernel of Eigen's `generic_fast_erf_float` and XLA's `ErfImpl32`. Outside [-4, 4],
# erf(x) rounds to +-1 in float32, so the input is clamped there.
_ERF_ALPHA = np.array([-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                       -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                       -1.60960333262415e-02], dtype=np.float32)
_ERF_BETA = np.array([-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                      -7.37332916720468e-03, -1.42647390514189e-02], dtype=np.float32)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, vectorised, in the dtype of ``x`` (float32 accuracy)."""
    x = np.clip(x, -4.0, 4.0)  # erf(+-4) == +-1 to float32 precision
    x2 = x * x
    p = np.full_like(x, _ERF_ALPHA[0])
    for a in _ERF_ALPHA[1:]:  # Horner's rule on x^2: 7 fused passes, not a loop over elements
        p = p * x2 + a
    q = np.full_like(x, _ERF_BETA[0])
    for b in _ERF_BETA[1:]:
        q = q * x2 + b
    return x * p / q


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``torch.nn.functional.gelu`` (HF ``hidden_act="gelu"``): ``0.5 x (1 + erf(x/sqrt 2))``."""
    return 0.5 * x * (1.0 + erf(x * np.float32(1.0 / np.sqrt(2.0))))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """Tanh-approximated GELU (HF ``"gelu_new"`` / ``"gelu_pytorch_tanh"``)."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    return 0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)`` (HF ``"relu"``)."""
    return np.maximum(x, 0)


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)`` (HF ``"silu"`` / ``"swish"``)."""
    return x / (1.0 + np.exp(-x))


#: HF ``hidden_act`` name -> function (a subset of ``transformers.activations.ACT2FN``).
ACT2FN: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": relu,
    "silu": silu,
    "swish": silu,
}
