"""Properties of the optimizer's and the gradients' arithmetic that hold for every setting -- invariants a
hand derivation gets wrong in ways finite differences of the model cannot see (the optimizer has no
derivative to check against) or see only on some draws.

* AdamW: for a *constant* gradient the bias corrections make the moments' estimates exactly ``m / (1 - b1^t)
  = g`` and ``v / (1 - b2^t) = g^2`` at every step, so every step is ``p <- p (1 - lr wd) - lr g / (|g| + eps)``
  -- whatever lr, betas, eps, weight decay and step count; a zero gradient only decays.
* clip_grad_norm: the returned norm is the L2 norm of every entry taken as one vector; above ``max_norm``
  every gradient is scaled by the same factor, to that norm; below it nothing changes.

The model's gradients are checked by finite differences and the masks' and sums' invariants in
``test_backward.py`` and ``test_streamed_backward.py``.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import npperceiver as npp


class _Params:
    """The smallest model AdamW accepts: ``state_dict()`` returns its own arrays."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.arrays


SHAPES = {"w": (3, 4), "b": (4,), "scalar": (1,)}


@st.composite
def gradients(draw, allow_zero: bool = True) -> dict[str, np.ndarray]:
    """float64 gradients of :data:`SHAPES`, entries of very different sizes and signs, some exactly 0."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    grads = {}
    for name, shape in SHAPES.items():
        g = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3, shape)
        if allow_zero:
            g[rng.random(shape) < 0.2] = 0.0
        grads[name] = g
    return grads


@settings(max_examples=60)
@given(
    grads=gradients(), steps=st.integers(1, 6), lr=st.floats(1e-4, 0.5), beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999), eps=st.sampled_from([1e-8, 1e-4, 1e-2, 0.3]), weight_decay=st.floats(0.0, 0.5),
)
def test_adamw_step_for_a_constant_gradient(grads, steps, lr, beta1, beta2, eps, weight_decay):
    """Bias-corrected moments of a constant gradient g are g and g^2 exactly, so each step is
    ``p (1 - lr wd) - lr g / (|g| + eps)``: the decay decoupled from the gradient and scaled by lr, the step
    bounded by lr whatever the gradient's size, and a zero gradient leaving the decay alone."""
    rng = np.random.default_rng(0)
    params = {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}
    expected = {name: p.copy() for name, p in params.items()}
    opt = npp.AdamW(_Params(params), lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    for _ in range(steps):
        opt.step(grads)
        for name, g in grads.items():
            expected[name] = expected[name] * (1 - lr * weight_decay) - lr * g / (np.abs(g) + eps)
    for name, p in params.items():
        np.testing.assert_allclose(p, expected[name], rtol=1e-9, atol=1e-9 * lr, err_msg=name)


@settings(max_examples=60)
@given(grads=gradients(), max_norm=st.floats(1e-3, 1e3), float32=st.booleans())
def test_clip_grad_norm_scales_to_the_global_norm(grads, max_norm, float32):
    """The returned norm is that of every entry as one vector; above ``max_norm`` all gradients are scaled
    by the one factor ``max_norm / (norm + 1e-6)`` (so their global norm becomes max_norm); at or below it
    they are untouched."""
    if float32:
        grads = {k: v.astype(np.float32) for k, v in grads.items()}
    before = {k: v.copy() for k, v in grads.items()}
    norm = float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in before.values())))
    total = npp.clip_grad_norm(grads, max_norm)
    rtol = 1e-5 if float32 else 1e-12
    assert abs(float(total) - norm) <= rtol * norm + 1e-30
    if float(total) > max_norm * (1 + 1e-6):  # clearly above the bound: scaled, every tensor alike
        factor = max_norm / (norm + 1e-6)
        for k, v in grads.items():
            np.testing.assert_allclose(v, before[k] * factor, rtol=4 * rtol, atol=1e-30, err_msg=k)
        after = float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in grads.values())))
        assert abs(after - max_norm * norm / (norm + 1e-6)) <= 4 * rtol * max_norm
    elif float(total) < max_norm * (1 - 1e-6):  # clearly below: nothing changes
        assert all(np.array_equal(v, before[k]) for k, v in grads.items())
