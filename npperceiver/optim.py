"""AdamW, with the arithmetic of ``torch.optim.AdamW``, and a learning-rate schedule (linear warmup, cosine decay).

Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019); Kingma & Ba, "Adam" (2015). Mirrors
``torch.optim.AdamW(model.parameters(), lr, betas, eps, weight_decay)`` as torch 2.13 runs it on the CPU
(``torch/optim/adam.py``, ``_single_tensor_adam`` with ``decoupled_weight_decay=True``; the ``foreach``
kernels are not used for CPU tensors). For every parameter ``p`` with gradient ``g``, at step ``t = 1, 2, ...``::

    p   = p * (1 - lr * weight_decay)            decoupled weight decay, on every parameter
    m   = m + (1 - beta1) * (g - m)              first moment (torch's lerp)
    v   = v * beta2 + (1 - beta2) * g * g        second moment
    p   = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Where torch computes in double and where in float32 is reproduced: the scalars (``1 - lr * weight_decay``,
the bias corrections, the step size) are Python floats -- doubles -- and each is rounded to float32 once,
when torch multiplies it into a float32 tensor; every elementwise operation is float32, in torch's order
(``addcdiv`` computes ``p + (value * m) / denom``, ``addcmul`` ``v + (value * g) * g``).

Not bit for bit: torch's compiled CPU kernels fuse some multiply-adds into one rounding (``lerp``, and
``addcmul`` where the compiler contracts it) and take square roots with a vectorised routine that is not
correctly rounded (up to 0.75 ulp on AVX-512, measured); NumPy rounds each operation correctly. So each
step can differ from torch's by an ulp or so per entry (``docs/training.md`` gives the measured drift).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

_LERP_SMALL = 0.5  # torch's lerp: ``start + w (end - start)`` for |w| < 0.5, else ``end - (1 - w)(end - start)``


class AdamW:
    """``torch.optim.AdamW`` for an npperceiver model: ``AdamW(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0.01)``, then ``step(grads)`` after each backward.

    ``model`` is a ``PerceiverModel`` or ``PerceiverForMaskedLM`` (anything with ``state_dict()`` returning
    its own arrays); ``step`` updates those arrays in place, so calling the model afterwards uses the new
    weights. ``grads`` is keyed like ``model.state_dict()`` (what ``vjp`` and ``loss_and_grads`` return).
    ``lr`` may be changed between steps (``opt.lr = warmup_cosine_lr(...)``), as torch's ``param_groups``.
    """

    def __init__(
        self,
        model: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        _check_hyperparameters(lr, betas, eps, weight_decay)
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), (float(betas[0]), float(betas[1])), float(eps), \
            float(weight_decay)
        self.params: dict[str, np.ndarray] = model.state_dict()  # the model's own arrays, updated in place
        for name, param in self.params.items():
            if not isinstance(param, np.ndarray) or not np.issubdtype(param.dtype, np.floating):
                raise ValueError(f"parameter {name} must be a floating-point numpy array, got {type(param).__name__}")
            if not param.flags.writeable:
                raise ValueError(f"parameter {name} is read-only; AdamW updates parameters in place")
        self.exp_avg = {name: np.zeros_like(p) for name, p in self.params.items()}  # m, torch's state["exp_avg"]
        self.exp_avg_sq = {name: np.zeros_like(p) for name, p in self.params.items()}  # v, state["exp_avg_sq"]
        self.step_count = 0  # t, torch's state["step"]
        self._buffers: "tuple[np.ndarray, np.ndarray] | None" = None  # work memory of step(), see _scratch

    def step(self, grads: Mapping[str, Any]) -> None:
        """One AdamW update of every parameter, in place (``optimizer.step()`` after ``loss.backward()``).

        Every gradient is checked first -- keys, shapes, finiteness -- so a bad one raises ``ValueError``
        (naming the parameter) before any parameter or moment changes.
        """
        grads = self._check_grads(grads)
        self.step_count += 1
        t = self.step_count
        lr, (beta1, beta2), eps, weight_decay = self.lr, self.betas, self.eps, self.weight_decay
        # Python floats (doubles), exactly as torch computes them (its step count is a float32 tensor, whose
        # value is an exact integer here).
        decay = 1 - lr * weight_decay
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5
        for name, param in self.params.items():
            grad, m, v = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            f = param.dtype.type  # torch rounds a Python scalar to the tensor's dtype before using it
            tmp, denom = self._scratch(param)  # two work arrays of param's shape, reused for every parameter
            param *= f(decay)  # p.mul_(1 - lr * weight_decay)
            _lerp_(m, grad, f(1 - beta1), tmp)  # exp_avg.lerp_(grad, 1 - beta1)
            v *= f(beta2)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            np.multiply(grad, f(1 - beta2), out=tmp)  # torch's kernel: v + ((1 - beta2) g) g
            tmp *= grad
            v += tmp
            np.sqrt(v, out=denom)  # (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            denom /= f(bias_correction2_sqrt)
            denom += f(eps)
            np.multiply(m, f(-step_size), out=tmp)  # p.addcdiv_(exp_avg, denom, value=-step_size): torch's
            tmp /= denom  # kernel computes p + (value * exp_avg) / denom, in that order
            param += tmp

    def _scratch(self, param: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two work arrays of ``param``'s shape and dtype: views of two buffers as large as the largest
        parameter, made once. (A new array per operation and parameter costs the step a third of its time on a
        large model: fresh memory is paged in on first touch.)"""
        if self._buffers is None or self._buffers[0].dtype != param.dtype:
            size = max(p.size for p in self.params.values())
            self._buffers = (np.empty(size, param.dtype), np.empty(size, param.dtype))
        return tuple(b[:param.size].reshape(param.shape) for b in self._buffers)

    def _check_grads(self, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(grads, Mapping):
            raise ValueError(f"grads must be a mapping of parameter names to arrays, got {type(grads).__name__}")
        missing = [k for k in self.params if k not in grads]
        unexpected = [k for k in grads if k not in self.params]
        if missing or unexpected:
            raise ValueError(
                "grads must have exactly the model's parameter names (model.state_dict()); "
                + "; ".join(part for part in (
                    f"missing {len(missing)}: {', '.join(missing)}" if missing else "",
                    f"unexpected {len(unexpected)}: {', '.join(unexpected)}" if unexpected else "") if part)
            )
        checked = {}
        for name, param in self.params.items():
            grad = np.asarray(grads[name])
            if grad.shape != param.shape:
                raise ValueError(f"gradient of {name} has shape {grad.shape}, the parameter {param.shape}")
            if not np.issubdtype(grad.dtype, np.floating):
                raise ValueError(f"gradient of {name} must be floating-point, got dtype {grad.dtype}")
            if not _all_finite(grad):
                bad = int(np.sum(~np.isfinite(grad)))
                raise ValueError(
                    f"gradient of {name} has {bad} non-finite value(s) (NaN or inf); no parameter was updated"
                )
            checked[name] = grad.astype(param.dtype, copy=False)
        return checked

    # ------------------------------------------------------------------ saving and resuming
    def state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's state as plain arrays, ready for ``save_weights``: ``step`` (a 0-d int64), and per
        parameter ``exp_avg.<name>`` and ``exp_avg_sq.<name>`` (copies). The hyper-parameters are not in it:
        they are the constructor's arguments (and ``lr`` whatever the schedule says)."""
        state = {"step": np.array(self.step_count, dtype=np.int64)}
        for name in self.params:
            state[f"exp_avg.{name}"] = self.exp_avg[name].copy()
            state[f"exp_avg_sq.{name}"] = self.exp_avg_sq[name].copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave (e.g. after ``load_weights``), for the same model's parameters.
        Missing, unexpected or wrongly shaped entries raise ``ValueError`` and change nothing."""
        if not isinstance(state, Mapping):
            raise ValueError(f"state must be a mapping of names to arrays, got {type(state).__name__}")
        expected = {"step": ()}
        for name, param in self.params.items():
            expected[f"exp_avg.{name}"] = param.shape
            expected[f"exp_avg_sq.{name}"] = param.shape
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k}: expected {shape}, got {np.shape(state[k])}" for k, shape in expected.items()
                 if k in state and np.shape(state[k]) != shape]
        problems = [f"missing {', '.join(missing)}" if missing else "",
                    f"unexpected {', '.join(unexpected)}" if unexpected else "",
                    f"wrongly shaped {'; '.join(wrong)}" if wrong else ""]
        if any(problems):
            raise ValueError("optimizer state does not match the model: " + " | ".join(p for p in problems if p))
        step = np.asarray(state["step"])
        if not np.issubdtype(step.dtype, np.integer) or int(step) < 0:
            raise ValueError(f"optimizer state 'step' must be a non-negative integer, got {step!r}")
        for name, param in self.params.items():
            self.exp_avg[name] = np.array(state[f"exp_avg.{name}"], dtype=param.dtype)
            self.exp_avg_sq[name] = np.array(state[f"exp_avg_sq.{name}"], dtype=param.dtype)
        self.step_count = int(step)


def _all_finite(x: np.ndarray) -> bool:
    """Whether every entry of ``x`` is finite. ``sum(x * x)`` (one BLAS dot product: a read-only pass, no
    temporary array) is finite whenever every entry is, and a NaN or inf entry makes it NaN or inf (its
    terms are never negative, so nothing cancels); only when it is not finite -- an inf, a NaN, or entries
    so large their squares overflow -- is every entry looked at."""
    flat = x.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing square is looked at below, not warned of
        square_sum = np.dot(flat, flat)
    return bool(np.isfinite(square_sum)) or bool(np.all(np.isfinite(flat)))


def _lerp_(start: np.ndarray, end: np.ndarray, weight: np.floating, work: "np.ndarray | None" = None) -> None:
    """torch's ``start.lerp_(end, weight)`` in place, with its two formulas (each exact at its end of the
    weight's range): ``start + w (end - start)`` for |w| < 0.5, else ``end - (1 - w)(end - start)``.
    ``work`` (start's shape) receives the difference instead of a new array."""
    diff = np.subtract(end, start, out=work)
    if abs(weight) < _LERP_SMALL:
        diff *= weight
        start += diff
    else:
        diff *= weight.dtype.type(1) - weight
        np.subtract(end, diff, out=start)


def _check_hyperparameters(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    """torch's checks (``Adam.__init__``), as ValueErrors naming the argument."""
    def number(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(value)

    if number("lr", lr) < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if number("eps", eps) < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if number("weight_decay", weight_decay) < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        if not 0 <= number(f"betas[{i}]", beta) < 1:
            raise ValueError(f"betas[{i}] must lie in [0, 1), got {beta}")


def global_norm(grads: Mapping[str, np.ndarray]) -> np.floating:
    """The L2 norm of every gradient taken as one vector, computed as torch's ``clip_grad_norm_`` does: the
    norm of the per-tensor norms, in the gradients' dtype (0.0 for no gradients)."""
    arrays = list(grads.values())
    if not arrays:
        return np.float32(0.0)
    dtype = arrays[0].dtype.type
    norms = np.array([np.linalg.norm(g.ravel()) for g in arrays], dtype=dtype)  # one norm per tensor, as torch
    return np.linalg.norm(norms)  # the norm of the norms = the norm of everything


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> np.floating:
    """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)`` on a dict of gradients, in place: if the global
    L2 norm (the norm of every gradient taken as one vector) exceeds ``max_norm``, scale every gradient by
    ``max_norm / (norm + 1e-6)``. Returns the norm before clipping (a non-finite one is left to
    :meth:`AdamW.step`, which rejects non-finite gradients)."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
        raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
    arrays = list(grads.values())
    if not arrays:
        return np.float32(0.0)
    dtype = arrays[0].dtype.type
    total = global_norm(grads)
    coefficient = dtype(max_norm) / (total + dtype(1e-6))  # torch: max_norm / (total_norm + 1e-6), clamped to 1
    if coefficient < 1:
        for g in arrays:
            g *= coefficient
    return total


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate at ``step`` (counted from 0): linear warmup from ``base_lr / warmup_steps`` to
    ``base_lr`` over ``warmup_steps`` steps, then a cosine decay to ``min_lr`` at ``total_steps``, and ``min_lr``
    after it::

        step < warmup_steps:   base_lr * (step + 1) / warmup_steps
        otherwise:             min_lr + (base_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                               progress = (step - warmup_steps) / (total_steps - warmup_steps), at most 1

    Set it before each update: ``opt.lr = warmup_cosine_lr(step, 1e-3, 100, 2000); opt.step(grads)``.
    """
    for name, value in (("step", step), ("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")
    if not (isinstance(base_lr, (int, float)) and isinstance(min_lr, (int, float)) and 0 <= min_lr <= base_lr):
        raise ValueError(f"need 0 <= min_lr <= base_lr, got min_lr={min_lr!r}, base_lr={base_lr!r}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps == warmup_steps:
        return float(min_lr)
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
