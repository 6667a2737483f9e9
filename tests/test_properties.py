"""Property-based tests: what each mask guarantees, checked on generated configs, weights, inputs and masks.

Each test states one invariant in its docstring, in one plain sentence (``docs/`` quotes them). All go
through the public API: ``PerceiverModel`` and, where a property lives inside one layer,
``perceiver_layer`` with the model's own parameters.

Two kinds of equality are used, and each test says which:

* **bit for bit** (``np.array_equal``) where the invariant is exact in float32. A masked score is
  ``score + finfo(float32).min``, which rounds to exactly that minimum; its ``exp`` after the max shift
  underflows to exactly 0, and adding 0 or multiplying by 0 changes no float. Likewise a mask of ones adds
  exactly 0 or multiplies by exactly 1. These tests compare two runs with arrays of the *same* shapes, so
  every sum is taken in the same order.
* **to float32 rounding** (:func:`assert_close`, 1e-5 of the output's scale) where the invariant holds in
  exact arithmetic but the two runs add numbers in a different order: permuting inputs or latents, padding
  (longer softmax sums and matmuls are split differently), a batch of another size, or a float64 reference.

Run longer with ``HYPOTHESIS_PROFILE=dev python -m pytest tests/test_properties.py`` (see conftest.py).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npperceiver as npp
from strategies import batched_cases, generic_arrays, head_masks, inputs_BMC, keep_dtypes, keep_masks, seeds

RTOL = 1e-5  # float32 rounding, relative to the output's scale


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> None:
    """Equal up to float32 rounding: within ``rtol`` of each value and ``rtol`` of the array's largest value."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def dims(model: npp.PerceiverModel) -> tuple[int, int, int, int, int]:
    """(N, D, S, NB, Hs) of a model's config."""
    c = model.config
    return c.num_latents, c.d_latents, c.num_self_attends_per_block, c.num_blocks, c.num_self_attention_heads


def head_mask_rows(head_mask: Optional[np.ndarray], L: int, H: int) -> np.ndarray:
    """``head_mask`` as (L, H): a 1-D mask is the same for every layer, None keeps every head."""
    if head_mask is None:
        return np.ones((L, H), np.float32)
    return np.broadcast_to(head_mask, (L, H))


def with_params(model: npp.PerceiverModel, **changes: np.ndarray) -> npp.PerceiverModel:
    """A new model with some state-dict entries replaced (by HF key name)."""
    state = dict(model.state_dict())
    state.update(changes)
    return npp.PerceiverModel.from_state_dict(model.config, state)


def optional(strategy):
    """``strategy`` or None (the mask is not passed at all)."""
    return st.none() | strategy


# ============================================================================ 1. masked inputs
@given(case=batched_cases(min_inputs=2), data=st.data())
def test_masked_inputs_are_invisible(case, data):
    """Changing the values of inputs whose attention_mask is 0 changes neither the output nor the cross-attention,
    bit for bit, as long as each row keeps at least one input."""
    model, x = case
    B, M, C = x.shape
    keep = data.draw(keep_masks(B, M, min_kept=1), label="attention_mask")
    new_values = data.draw(inputs_BMC(B, M, C, bound=1e4), label="new values")
    x2 = np.where(keep.astype(bool)[:, :, None], x, new_values)  # only masked inputs change
    a = model(x, attention_mask=keep, output_attentions=True)
    b = model(x2, attention_mask=keep, output_attentions=True)
    assert np.array_equal(a.last_hidden_state, b.last_hidden_state)
    assert np.array_equal(a.cross_attentions[0], b.cross_attentions[0])


# ============================================================================ 2. padding
@given(case=batched_cases(), data=st.data())
def test_padding_invariance(case, data):
    """Appending any number of inputs with attention_mask 0 leaves the output unchanged, to float32 rounding, and
    those inputs get exactly zero attention."""
    # Not bit for bit: the softmax sums and the probs @ values matmuls become longer, and numpy and BLAS
    # group the additions of a longer sum differently (the added terms themselves are exact zeros).
    model, x = case
    B, M, C = x.shape
    keep = data.draw(optional(keep_masks(B, M, min_kept=1)), label="attention_mask")
    P = data.draw(st.integers(1, 8), label="padding length")
    padding = data.draw(inputs_BMC(B, P, C, bound=1e4), label="padding values")
    kept = np.ones((B, M), np.float32) if keep is None else keep.astype(np.float32)
    a = model(x, attention_mask=keep, output_attentions=True)
    b = model(np.concatenate([x, padding], axis=1), attention_mask=np.concatenate([kept, np.zeros((B, P))], axis=1),
              output_attentions=True)
    assert_close(b.last_hidden_state, a.last_hidden_state)
    assert_close(b.cross_attentions[0][..., :M], a.cross_attentions[0])
    assert np.all(b.cross_attentions[0][..., M:] == 0)


# ============================================================================ 3. input permutation
@given(case=batched_cases(), data=st.data())
def test_input_permutation_invariance(case, data):
    """Permuting the inputs together with their attention_mask leaves the output unchanged and permutes the
    cross-attention probabilities along, to float32 rounding."""
    model, x = case
    B, M, C = x.shape
    N, _, S, NB, Hs = dims(model)
    perm = np.array(data.draw(st.permutations(range(M)), label="permutation"))
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")  # fully masked rows allowed
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    a = model(x, attention_mask=keep, latent_mask=latent_mask, output_attentions=True)
    b = model(x[:, perm], attention_mask=None if keep is None else keep[:, perm], latent_mask=latent_mask,
              output_attentions=True)
    assert_close(b.last_hidden_state, a.last_hidden_state)
    assert_close(b.cross_attentions[0], a.cross_attentions[0][..., perm])


# ============================================================================ 4. latent permutation
@given(case=batched_cases(), data=st.data())
def test_latent_permutation_equivariance(case, data):
    """Permuting the latent array and the latent mask together permutes the output latents, and every self- and
    cross-attention map, the same way, to float32 rounding."""
    model, x = case
    B, M, C = x.shape
    N, _, S, NB, Hs = dims(model)
    perm = np.array(data.draw(st.permutations(range(N)), label="permutation"))
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs)), label="head_mask")
    permuted = with_params(model, **{"embeddings.latents": model.state_dict()["embeddings.latents"][perm]})
    a = model(x, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask, output_attentions=True)
    b = permuted(x, attention_mask=keep, latent_mask=None if latent_mask is None else latent_mask[:, perm],
                 head_mask=head_mask, output_attentions=True)
    assert_close(b.last_hidden_state, a.last_hidden_state[:, perm])
    assert_close(b.cross_attentions[0], a.cross_attentions[0][:, :, perm])
    for pa, pb in zip(a.attentions, b.attentions):  # (B, Hs, N, N): queries and keys both permute
        assert_close(pb, pa[:, :, perm][:, :, :, perm])


# ============================================================================ 5. latent mask
@given(case=batched_cases(min_latents=2), data=st.data())
def test_masked_latent_cannot_influence_others(case, data):
    """In a self-attention layer, changing the state of a latent whose latent mask is 0 leaves every other latent's
    output unchanged, bit for bit, as long as the row keeps at least one latent."""
    model, _ = case
    N, D, S, NB, Hs = dims(model)
    B = data.draw(st.integers(1, 3), label="B")
    layer = model.params["encoder"]["self_attends"][data.draw(st.integers(0, S - 1), label="layer")]
    hidden = data.draw(inputs_BMC(B, N, D), label="latent states")  # (B, N, D)
    keep = data.draw(keep_masks(B, N, min_kept=1), label="latent keep mask").astype(bool)
    changed = data.draw(hnp.arrays(np.bool_, (B, N)), label="latents to change") & ~keep  # masked ones only
    new_values = data.draw(inputs_BMC(B, N, D, bound=1e4), label="new states")
    hidden2 = np.where(changed[:, :, None], new_values, hidden)
    bias = npp.invert_attention_mask(keep)  # (B, N) -> (B, 1, 1, N)
    kwargs = dict(num_heads=Hs, hidden_act=model.config.hidden_act, attention_mask=bias)
    a, pa = npp.perceiver_layer(layer, hidden, **kwargs)
    b, pb = npp.perceiver_layer(layer, hidden2, **kwargs)
    assert np.array_equal(a[~changed], b[~changed])  # a changed latent's own output may change (its query did)
    assert np.array_equal(pa.transpose(0, 2, 1, 3)[~changed], pb.transpose(0, 2, 1, 3)[~changed])


@given(case=batched_cases(min_latents=2), data=st.data())
def test_masked_latent_never_reaches_other_latents(case, data):
    """Through the whole encoder, a latent masked in every batch row still reads the inputs but is read by no other
    latent: changing its initial value leaves every other latent's output unchanged, bit for bit."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    j = data.draw(st.integers(0, N - 1), label="masked latent")
    others = np.delete(np.arange(N), j)
    latent_mask = np.zeros((B, N), np.float32)  # latent j masked in every row; at least one other latent kept
    latent_mask[:, others] = data.draw(keep_masks(B, N - 1, min_kept=1), label="other latents' mask")
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs)), label="head_mask")
    new_latent = data.draw(hnp.arrays(np.float32, (D,), elements=st.floats(-10, 10, width=32)), label="new latent")
    latents = model.state_dict()["embeddings.latents"].copy()
    latents[j] = new_latent
    changed = with_params(model, **{"embeddings.latents": latents})
    a = model(x, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    b = changed(x, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    assert np.array_equal(a.last_hidden_state[:, others], b.last_hidden_state[:, others])


@given(case=batched_cases(), data=st.data())
def test_latent_mask_does_not_touch_cross_attention(case, data):
    """The latent mask acts in self-attention only: the cross-attention's probabilities and output are the same,
    bit for bit, with or without it."""
    model, x = case
    B, M, C = x.shape
    N = model.config.num_latents
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(keep_masks(B, N), label="latent_mask")
    a = model(x, attention_mask=keep, output_attentions=True, output_hidden_states=True)
    b = model(x, attention_mask=keep, latent_mask=latent_mask, output_attentions=True, output_hidden_states=True)
    assert np.array_equal(a.cross_attentions[0], b.cross_attentions[0])
    assert np.array_equal(a.hidden_states[0], b.hidden_states[0])  # the cross-attention layer's output


@given(case=batched_cases(), data=st.data())
def test_all_ones_latent_mask_equals_no_latent_mask(case, data):
    """A latent mask of all ones gives exactly the same outputs, bit for bit, as no latent mask."""
    model, x = case
    B, M, C = x.shape
    N, _, S, NB, Hs = dims(model)
    ones = np.ones((B, N), data.draw(keep_dtypes(), label="dtype"))
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs)), label="head_mask")
    a = model(x, attention_mask=keep, head_mask=head_mask, output_attentions=True)
    b = model(x, attention_mask=keep, head_mask=head_mask, latent_mask=ones, output_attentions=True)
    assert np.array_equal(a.last_hidden_state, b.last_hidden_state)
    assert all(np.array_equal(pa, pb) for pa, pb in zip(a.attentions, b.attentions))


# ============================================================================ 6. head mask
@given(case=batched_cases(), data=st.data())
def test_zeroed_head_contributes_nothing(case, data):
    """A zero in head_mask[i, h] makes head h's attention probabilities in self-attention layer i of every block
    exactly zero, and that head's value projection then cannot change the output, bit for bit."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    head_mask = data.draw(head_masks(NB * S, Hs), label="head_mask")
    rows = head_mask_rows(head_mask, NB * S, Hs)
    silenced = [(i, h) for i in range(S) for h in range(Hs) if rows[i, h] == 0]  # rows >= S are never read
    note(f"silenced (layer, head): {silenced}")
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    out = model(x, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask, output_attentions=True)
    for block in range(NB):
        for i, h in silenced:
            assert np.all(out.attentions[block * S + i][:, h] == 0), (block, i, h)
    # Replace the value weights and biases of every silenced head by large random ones.
    rng = np.random.default_rng(data.draw(seeds(), label="seed of the new value weights"))
    dv = model.config.self_attention.v_head_dim
    state = model.state_dict()
    changes = {}
    for i, h in silenced:
        for name in ("weight", "bias"):
            key = f"encoder.self_attends.{i}.attention.self.value.{name}"
            value = changes.get(key, state[key]).copy()
            value[h * dv:(h + 1) * dv] = 10 * rng.standard_normal(value[h * dv:(h + 1) * dv].shape)
            changes[key] = value
    changed = with_params(model, **changes)(x, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    assert np.array_equal(out.last_hidden_state, changed.last_hidden_state)


@given(case=batched_cases(), data=st.data())
def test_head_mask_does_not_touch_cross_attention(case, data):
    """The head mask acts in self-attention only: the cross-attention's probabilities and output are the same, bit
    for bit, with or without it."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    head_mask = data.draw(head_masks(NB * S, Hs), label="head_mask")
    a = model(x, output_attentions=True, output_hidden_states=True)
    b = model(x, head_mask=head_mask, output_attentions=True, output_hidden_states=True)
    assert np.array_equal(a.cross_attentions[0], b.cross_attentions[0])
    assert np.array_equal(a.hidden_states[0], b.hidden_states[0])


@given(case=batched_cases(), data=st.data())
def test_all_ones_head_mask_equals_no_head_mask(case, data):
    """A head mask of all ones, of shape (Hs,) or (L, Hs), gives exactly the same outputs, bit for bit, as no head
    mask."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    shape = data.draw(st.sampled_from([(Hs,), (NB * S, Hs)]), label="head_mask shape")
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    a = model(x, attention_mask=keep, latent_mask=latent_mask, output_attentions=True)
    b = model(x, attention_mask=keep, latent_mask=latent_mask, head_mask=np.ones(shape), output_attentions=True)
    assert np.array_equal(a.last_hidden_state, b.last_hidden_state)
    assert all(np.array_equal(pa, pb) for pa, pb in zip(a.attentions, b.attentions))


@given(case=batched_cases(min_blocks=2), data=st.data())
def test_head_mask_indexing_quirk(case, data):
    """HF quirk: self-attention layer i of every block reads head_mask[i], so rows num_self_attends_per_block and
    beyond change nothing, bit for bit."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    L = NB * S
    head_mask = data.draw(head_masks(L, Hs, two_d=True), label="head_mask")
    other_rows = data.draw(head_masks(L - S, Hs, two_d=True), label="new rows S..L-1")
    head_mask2 = np.concatenate([head_mask[:S], other_rows])
    a = model(x, head_mask=head_mask, output_attentions=True)
    b = model(x, head_mask=head_mask2, output_attentions=True)
    assert np.array_equal(a.last_hidden_state, b.last_hidden_state)
    assert all(np.array_equal(pa, pb) for pa, pb in zip(a.attentions, b.attentions))


# ============================================================================ 7. probabilities
def check_distributions(probs: np.ndarray, keep: Optional[np.ndarray], weights: np.ndarray) -> None:
    """probs (B, H, Q, K): non-negative rows summing to weights[h], exact zeros on masked keys, uniform
    (all entries equal, to weights[h] / K) when every key of a row is masked."""
    B, H, Q, K = probs.shape
    assert np.all(np.isfinite(probs)) and np.all(probs >= 0)
    expected_sums = np.broadcast_to(weights[None, :, None], (B, H, Q))
    np.testing.assert_allclose(probs.sum(axis=-1, dtype=np.float64), expected_sums, rtol=RTOL, atol=RTOL)
    keep = np.ones((B, K), bool) if keep is None else keep.astype(bool)
    for b in range(B):
        if keep[b].any():
            assert np.all(probs[b][..., ~keep[b]] == 0), f"batch row {b}: a masked key got attention"
        else:  # HF: every score is float32's minimum, so the softmax is uniform over all K keys
            assert np.all(probs[b] == probs[b][..., :1]), f"batch row {b}: fully masked, not uniform"
            np.testing.assert_allclose(probs[b][..., 0], np.broadcast_to(weights[:, None] / K, (H, Q)), rtol=RTOL)


@given(case=batched_cases(), data=st.data())
def test_attention_probabilities_are_distributions(case, data):
    """Every attention row is non-negative and sums to 1 over the keys (to its head-mask value in self-attention),
    masked keys get exactly 0, and a row whose keys are all masked is uniform, never NaN."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")  # fully masked rows allowed
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs)), label="head_mask")
    out = model(x, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask, output_attentions=True)
    check_distributions(out.cross_attentions[0], keep, np.ones(model.config.num_cross_attention_heads))
    rows = head_mask_rows(head_mask, NB * S, Hs)
    for layer, probs in enumerate(out.attentions):
        check_distributions(probs, latent_mask, rows[layer % S])  # HF quirk: row i within the block


# ============================================================================ 8. batch independence
@given(case=batched_cases(min_batch=2), data=st.data())
def test_batch_rows_are_independent(case, data):
    """A batch row's output depends only on that row's inputs and masks: other rows and their masks cannot change
    it, and running the row alone gives the same result."""
    # Bit for bit when the other rows are replaced (same shapes, same order of operations); to float32
    # rounding against the row run alone (a batch of another size may be split differently by BLAS).
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    row = data.draw(st.integers(0, B - 1), label="row")
    x_other = data.draw(inputs_BMC(B, M, C), label="other rows")
    keep, keep_other = (data.draw(keep_masks(B, M, dtype=np.float32), label=f"attention_mask {k}") for k in "ab")
    lat, lat_other = (data.draw(keep_masks(B, N, dtype=np.float32), label=f"latent_mask {k}") for k in "ab")
    head_mask = data.draw(optional(head_masks(NB * S, Hs)), label="head_mask")
    for other, mine in ((x_other, x), (keep_other, keep), (lat_other, lat)):
        other[row] = mine[row]
    a = model(x, attention_mask=keep, latent_mask=lat, head_mask=head_mask).last_hidden_state
    b = model(x_other, attention_mask=keep_other, latent_mask=lat_other, head_mask=head_mask).last_hidden_state
    alone = model(x[row:row + 1], attention_mask=keep[row:row + 1], latent_mask=lat[row:row + 1],
                  head_mask=head_mask).last_hidden_state
    assert np.array_equal(a[row], b[row])
    assert_close(alone[0], a[row])


# ============================================================================ 9. shapes and finiteness
@given(case=batched_cases(bound=1e6, sharpness=st.sampled_from([1.0, 10.0, 100.0])), data=st.data())
def test_output_shape_and_finiteness(case, data):
    """For any number of inputs the output has shape (B, N, D) and dtype float32, and it is finite for finite
    inputs, even large ones with very peaked attention."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    out = model(x, attention_mask=keep, latent_mask=latent_mask, output_attentions=True, output_hidden_states=True)
    assert out.last_hidden_state.shape == (B, N, D)
    assert out.cross_attentions[0].shape == (B, model.config.num_cross_attention_heads, N, M)
    assert all(p.shape == (B, Hs, N, N) for p in out.attentions)
    for array in (out.last_hidden_state, *out.hidden_states, *out.attentions, *out.cross_attentions):
        assert array.dtype == np.float32
        assert np.all(np.isfinite(array))


# ============================================================================ 10. naive reference
# A deliberately naive PerceiverLayer in float64: Python loops over batch rows, heads, queries and keys,
# masks applied by *leaving masked keys out* (no additive trick), math.erf for GELU. Written from the
# HF semantics of modeling_perceiver.py (transformers 4.57.6), not from npperceiver's code.
NAIVE_ACT = {
    "gelu": lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))),
    "gelu_new": lambda v: 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3))),
    "relu": lambda v: max(v, 0.0),
    "silu": lambda v: v / (1.0 + math.exp(-v)) if v > -700 else 0.0,
}
NAIVE_ACT["gelu_pytorch_tanh"] = NAIVE_ACT["gelu_new"]
NAIVE_ACT["swish"] = NAIVE_ACT["silu"]
SCALES = st.sampled_from([1e-3, 1.0, 3.0])  # input scales for the naive comparisons


def naive_layer_norm(v, weight, bias):
    mean = sum(v) / len(v)
    var = sum((t - mean) ** 2 for t in v) / len(v)
    return np.array([(t - mean) / math.sqrt(var + 1e-5) for t in v]) * weight + bias


def naive_linear(v, p):
    return np.asarray(p["weight"], np.float64) @ v + p["bias"]


def naive_layer(params, hidden, num_heads, act, residual, inputs=None, keep=None, head_weights=None):
    """One PerceiverLayer for one batch row. hidden (Q, q_dim), inputs (K, kv_dim) or None (self-attention), keep
    (K,) bools or None, head_weights (H,) or None. Returns output (Q, q_dim) and probs (H, Q, K)."""
    att = params["attention"]["self"]
    normed = [naive_layer_norm(h, **att["layernorm1"]) for h in hidden]
    sources = normed if inputs is None else [naive_layer_norm(t, **att["layernorm2"]) for t in inputs]
    q = [naive_linear(h, att["query"]) for h in normed]
    k = [naive_linear(t, att["key"]) for t in sources]
    v = [naive_linear(t, att["value"]) for t in sources]
    Q, K, H = len(q), len(k), num_heads
    dqk, dv = len(q[0]) // H, len(v[0]) // H
    allowed = [j for j in range(K) if keep is None or keep[j]] or list(range(K))  # none kept: all, uniformly
    probs = np.zeros((H, Q, K))
    context = np.zeros((Q, H * dv))
    for h in range(H):
        for i in range(Q):
            if keep is not None and not any(keep):
                weights = {j: 1.0 / K for j in allowed}
            else:
                scores = {j: float(q[i][h * dqk:(h + 1) * dqk] @ k[j][h * dqk:(h + 1) * dqk]) / math.sqrt(dqk)
                          for j in allowed}
                top = max(scores.values())
                exps = {j: math.exp(s - top) for j, s in scores.items()}
                total = sum(exps.values())
                weights = {j: e / total for j, e in exps.items()}
            for j, w in weights.items():
                w = w * (1.0 if head_weights is None else float(head_weights[h]))
                probs[h, i, j] = w
                context[i, h * dv:(h + 1) * dv] += w * v[j][h * dv:(h + 1) * dv]
    out = [naive_linear(c, params["attention"]["output"]["dense"]) for c in context]
    if residual:
        out = [o + h for o, h in zip(out, hidden)]
    result = []
    for a in out:
        hid = naive_linear(naive_layer_norm(a, **params["layernorm"]), params["mlp"]["dense1"])
        result.append(naive_linear(np.array([act(t) for t in hid]), params["mlp"]["dense2"]) + a)
    return np.array(result), probs


def naive_encoder(model, x, keep, latent_keep, head_mask):
    """The whole encoder, one batch row at a time, from naive_layer."""
    cfg, enc = model.config, model.params["encoder"]
    N, D, S, NB, Hs = dims(model)
    act = NAIVE_ACT[cfg.hidden_act]
    rows = head_mask_rows(head_mask, NB * S, Hs)
    outs, cross, selfs = [], [], []
    for b in range(x.shape[0]):
        h = np.asarray(model.params["embeddings"]["latents"], np.float64)
        h, p = naive_layer(enc["cross_attention"], h, cfg.num_cross_attention_heads, act, cfg.use_query_residual,
                           inputs=np.asarray(x[b], np.float64), keep=None if keep is None else keep[b])
        cross.append(p)
        ps = []
        for _ in range(NB):
            for i, layer in enumerate(enc["self_attends"]):
                h, p = naive_layer(layer, h, Hs, act, True, keep=None if latent_keep is None else latent_keep[b],
                                   head_weights=rows[i])  # row i within the block, in every block
                ps.append(p)
        outs.append(h)
        selfs.append(ps)
    return np.array(outs), np.array(cross), [np.array([s[l] for s in selfs]) for l in range(NB * S)]


@given(case=batched_cases(), data=st.data())
def test_attention_layers_match_naive_loop(case, data):
    """Each layer's vectorised multi-head attention gives the same outputs and probabilities, to float32 rounding,
    as a naive loop over batch rows, heads, queries and keys in float64."""
    model, x = case
    B, M, C = x.shape
    cfg = model.config
    N, D, S, NB, Hs = dims(model)
    act = NAIVE_ACT[cfg.hidden_act]
    # Generic values (see generic_arrays), sometimes so small that LayerNorm's eps matters.
    x = data.draw(SCALES.flatmap(lambda s: generic_arrays((B, M, C), s)), label="inputs")
    latents = data.draw(SCALES.flatmap(lambda s: generic_arrays((B, N, D), s)), label="latent states")
    keep = data.draw(optional(keep_masks(B, M, dtype=np.bool_)), label="attention_mask")
    latent_keep = data.draw(optional(keep_masks(B, N, dtype=np.bool_)), label="latent keep mask")
    weights = data.draw(optional(hnp.arrays(np.float32, (Hs,), elements=st.floats(0, 2, width=32))),
                        label="head weights")
    i = data.draw(st.integers(0, S - 1), label="self-attention layer")
    enc = model.params["encoder"]

    out, probs = npp.perceiver_layer(
        enc["cross_attention"], latents, cfg.num_cross_attention_heads, use_query_residual=cfg.use_query_residual,
        hidden_act=cfg.hidden_act, inputs=x, inputs_mask=None if keep is None else npp.invert_attention_mask(keep))
    naive = [naive_layer(enc["cross_attention"], latents[b].astype(np.float64), cfg.num_cross_attention_heads, act,
                         cfg.use_query_residual, inputs=x[b].astype(np.float64),
                         keep=None if keep is None else keep[b]) for b in range(B)]
    assert_close(out, np.array([o for o, _ in naive]))
    assert_close(probs, np.array([p for _, p in naive]))

    out, probs = npp.perceiver_layer(
        enc["self_attends"][i], latents, Hs, hidden_act=cfg.hidden_act,
        attention_mask=None if latent_keep is None else npp.invert_attention_mask(latent_keep),
        head_mask=None if weights is None else weights[None, :, None, None])
    naive = [naive_layer(enc["self_attends"][i], latents[b].astype(np.float64), Hs, act, True,
                         keep=None if latent_keep is None else latent_keep[b], head_weights=weights)
             for b in range(B)]
    assert_close(out, np.array([o for o, _ in naive]))
    assert_close(probs, np.array([p for _, p in naive]))


@given(case=batched_cases(), data=st.data())
def test_encoder_matches_naive_reference(case, data):
    """The whole model, masks included, gives the same outputs and attention maps, to float32 rounding, as a naive
    float64 encoder built from per-head, per-query loops."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    # Generic values (see generic_arrays), sometimes so small that LayerNorm's eps matters.
    x = data.draw(SCALES.flatmap(lambda s: generic_arrays((B, M, C), s)), label="inputs")
    keep = data.draw(optional(keep_masks(B, M, dtype=np.bool_)), label="attention_mask")
    latent_keep = data.draw(optional(keep_masks(B, N, dtype=np.bool_)), label="latent_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs)), label="head_mask")
    out = model(x, attention_mask=keep, latent_mask=latent_keep, head_mask=head_mask, output_attentions=True)
    last, cross, selfs = naive_encoder(model, x, keep, latent_keep, head_mask)
    assert_close(out.last_hidden_state, last)
    assert_close(out.cross_attentions[0], cross)
    for ours, ref in zip(out.attentions, selfs):
        assert_close(ours, ref)
