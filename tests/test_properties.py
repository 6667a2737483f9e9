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
  (longer softmax sums and matmuls are split differently), a batch of another size, the streamed
  cross-attention, or a float64 reference.

Every "X does not touch Y" comes with its positive twin ("... and X does change Z"), so a mask that is
ignored everywhere cannot pass. And every test records with ``hypothesis.event`` whether an example could
have failed at all ("non-vacuous") or why not; ``python -m pytest tests/test_properties.py
--hypothesis-show-statistics`` prints the figures, together with the kinds of configs, masks and chunk
sizes drawn. ``python -m tests.mutate`` plants plausible bugs in the model and checks that these tests alone
catch every one of them.

Run longer with ``HYPOTHESIS_PROFILE=dev python -m pytest tests/test_properties.py`` (see conftest.py).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from hypothesis import event, given, note, target
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npperceiver as npp
from strategies import (
    STREAMING_KINDS, batched_cases, chunk_kind, chunk_sizes, config_kinds, generic_arrays, head_mask_kind,
    head_masks, inputs_BMC, keep_dtypes, keep_masks, optional, row_kinds, seeds,
)

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


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays differ anywhere (the positive twin of a bit-for-bit equality)."""
    return not np.array_equal(a, b)


def vacuity(non_vacuous: bool, why_not: str = "") -> None:
    """Record whether this example could have caught a broken invariant, for --hypothesis-show-statistics."""
    event("non-vacuous" if non_vacuous else f"vacuous: {why_not}")


def describe(model: npp.PerceiverModel, **masks) -> None:
    """Record the kinds of config and masks drawn, for --hypothesis-show-statistics."""
    for kind in config_kinds(model.config):
        event(kind)
    for name, mask in masks.items():
        event(f"{name}: {head_mask_kind(mask) if name == 'head_mask' else row_kinds(mask)}")


def swap_if_identity(perm: np.ndarray) -> np.ndarray:
    """``perm``, or, if it is the identity, the permutation swapping its first two entries."""
    if len(perm) >= 2 and np.all(perm == np.arange(len(perm))):
        perm = perm.copy()
        perm[[0, 1]] = perm[[1, 0]]
    return perm


# ============================================================================ 1. masked inputs
@given(case=batched_cases(min_inputs=2, min_d_model=3), data=st.data())
def test_masked_inputs_are_invisible(case, data):
    """Changing the values of inputs whose attention_mask is 0 changes neither the output nor the cross-attention,
    bit for bit, streamed or not, as long as each row keeps at least one input, while the same change made visible
    (no mask) does change the output."""
    model, x = case
    B, M, C = x.shape
    keep = data.draw(keep_masks(B, M, min_kept=1, partial_row=True), label="attention_mask")
    chunk = data.draw(optional(chunk_sizes(M)), label="cross_attention_chunk_size")
    # Generic new values, never constant along C nor proportional to the old ones: LayerNorm can see them.
    new_values = data.draw(generic_arrays((B, M, C), scale=100.0, stream=1), label="new values")
    x2 = np.where(keep.astype(bool)[:, :, None], x, new_values)  # only masked inputs change
    describe(model, attention_mask=keep)
    event(f"chunk: {chunk_kind(chunk, M)}")
    a = model(x, attention_mask=keep, cross_attention_chunk_size=chunk)
    b = model(x2, attention_mask=keep, cross_attention_chunk_size=chunk)
    assert np.array_equal(a.last_hidden_state, b.last_hidden_state)
    pa = model(x, attention_mask=keep, output_attentions=True)
    pb = model(x2, attention_mask=keep, output_attentions=True)
    assert np.array_equal(pa.last_hidden_state, pb.last_hidden_state)
    assert np.array_equal(pa.cross_attentions[0], pb.cross_attentions[0])
    # The positive twin: without the mask, the model sees the change.
    seen_a, seen_b = (model(v, cross_attention_chunk_size=chunk).last_hidden_state for v in (x, x2))
    target(float(np.abs(seen_a - seen_b).max()), label="change seen without the mask")
    assert differ(seen_a, seen_b)
    vacuity(True)  # the positive twin above asserts it


# ============================================================================ 2. padding
@given(case=batched_cases(min_d_model=3), data=st.data())
def test_padding_invariance(case, data):
    """Appending any number of inputs with attention_mask 0 leaves the output unchanged, to float32 rounding, streamed
    or not, and those inputs get exactly zero attention, while the same inputs unmasked change the output."""
    # Not bit for bit: the softmax sums and the probs @ values matmuls become longer, and numpy and BLAS
    # group the additions of a longer sum differently (the added terms themselves are exact zeros).
    model, x = case
    B, M, C = x.shape
    keep = data.draw(optional(keep_masks(B, M, min_kept=1)), label="attention_mask")
    P = data.draw(st.integers(1, 8), label="padding length")
    padding = data.draw(generic_arrays((B, P, C), scale=100.0, stream=1), label="padding values")
    chunk = data.draw(optional(chunk_sizes(M + P)), label="cross_attention_chunk_size")
    describe(model, attention_mask=keep)
    event(f"chunk: {chunk_kind(chunk, M + P)}")
    kept = np.ones((B, M), np.float32) if keep is None else keep.astype(np.float32)
    padded = np.concatenate([x, padding], axis=1)
    a = model(x, attention_mask=keep, output_attentions=True)
    b = model(padded, attention_mask=np.concatenate([kept, np.zeros((B, P))], axis=1), output_attentions=True)
    assert_close(b.last_hidden_state, a.last_hidden_state)
    assert_close(b.cross_attentions[0][..., :M], a.cross_attentions[0])
    assert np.all(b.cross_attentions[0][..., M:] == 0)
    streamed = model(padded, attention_mask=np.concatenate([kept, np.zeros((B, P))], axis=1),
                     cross_attention_chunk_size=chunk)
    assert_close(streamed.last_hidden_state, a.last_hidden_state)
    # The positive twin: kept, the same padding changes the output.
    unmasked = model(padded, attention_mask=np.concatenate([kept, np.ones((B, P))], axis=1))
    assert differ(unmasked.last_hidden_state, a.last_hidden_state)
    vacuity(True)  # the positive twin above asserts it


# ============================================================================ 3. input permutation
@given(case=batched_cases(min_inputs=2, generic=True), data=st.data())
def test_input_permutation_invariance(case, data):
    """Permuting the inputs together with their attention_mask leaves the output unchanged and permutes the
    cross-attention probabilities along, to float32 rounding."""
    model, x = case
    B, M, C = x.shape
    N, _, S, NB, Hs = dims(model)
    perm = swap_if_identity(np.array(data.draw(st.permutations(range(M)), label="permutation")))
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")  # fully masked rows allowed
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    describe(model, attention_mask=keep, latent_mask=latent_mask)
    a = model(x, attention_mask=keep, latent_mask=latent_mask, output_attentions=True)
    b = model(x[:, perm], attention_mask=None if keep is None else keep[:, perm], latent_mask=latent_mask,
              output_attentions=True)
    assert_close(b.last_hidden_state, a.last_hidden_state)
    assert_close(b.cross_attentions[0], a.cross_attentions[0][..., perm])
    vacuity(differ(x[:, perm], x), "the permutation moves no distinct input")


# ============================================================================ 4. latent permutation
@given(case=batched_cases(min_latents=2), data=st.data())
def test_latent_permutation_equivariance(case, data):
    """Permuting the latent array and the latent mask together permutes the output latents, every hidden state, and
    every self- and cross-attention map, the same way, to float32 rounding."""
    model, x = case
    B, M, C = x.shape
    N, _, S, NB, Hs = dims(model)
    perm = swap_if_identity(np.array(data.draw(st.permutations(range(N)), label="permutation")))
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs, read_rows=S)), label="head_mask")
    describe(model, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    latents = model.state_dict()["embeddings.latents"]
    permuted = with_params(model, **{"embeddings.latents": latents[perm]})
    flags = dict(output_attentions=True, output_hidden_states=True)
    a = model(x, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask, **flags)
    b = permuted(x, attention_mask=keep, latent_mask=None if latent_mask is None else latent_mask[:, perm],
                 head_mask=head_mask, **flags)
    assert_close(b.last_hidden_state, a.last_hidden_state[:, perm])
    assert_close(b.cross_attentions[0], a.cross_attentions[0][:, :, perm])
    assert len(a.attentions) == len(b.attentions) == NB * S and len(a.hidden_states) == len(b.hidden_states)
    for pa, pb in zip(a.attentions, b.attentions):  # (B, Hs, N, N): queries and keys both permute
        assert_close(pb, pa[:, :, perm][:, :, :, perm])
    for ha, hb in zip(a.hidden_states, b.hidden_states):
        assert_close(hb, ha[:, perm])
    vacuity(differ(latents[perm], latents), "the permutation moves no distinct latent")


# ============================================================================ 5. latent mask
@given(case=batched_cases(min_latents=2), data=st.data())
def test_masked_latent_cannot_influence_others(case, data):
    """In a self-attention layer, changing the state of a latent whose latent mask is 0 leaves every other latent's
    output unchanged, bit for bit, as long as the row keeps at least one latent, while without the mask the same
    change reaches the others."""
    model, _ = case
    N, D, S, NB, Hs = dims(model)
    B = data.draw(st.integers(1, 3), label="B")
    layer = model.params["encoder"]["self_attends"][data.draw(st.integers(0, S - 1), label="layer")]
    hidden = data.draw(generic_arrays((B, N, D)), label="latent states")  # (B, N, D)
    keep = data.draw(keep_masks(B, N, min_kept=1, partial_row=True), label="latent keep mask").astype(bool)
    changed = data.draw(hnp.arrays(np.bool_, (B, N)), label="latents to change") & ~keep  # masked ones only
    b0, n0 = np.argwhere(~keep)[data.draw(st.integers(0, int((~keep).sum()) - 1), label="one masked latent")]
    changed[b0, n0] = True  # at least one masked latent changes
    new_values = data.draw(generic_arrays((B, N, D), scale=100.0, stream=1), label="new states")  # visible to LayerNorm
    hidden2 = np.where(changed[:, :, None], new_values, hidden)
    describe(model, latent_mask=keep)
    bias = npp.invert_attention_mask(keep)  # (B, N) -> (B, 1, 1, N)
    kwargs = dict(num_heads=Hs, hidden_act=model.config.hidden_act)
    a, pa = npp.perceiver_layer(layer, hidden, attention_mask=bias, **kwargs)
    b, pb = npp.perceiver_layer(layer, hidden2, attention_mask=bias, **kwargs)
    assert np.array_equal(a[~changed], b[~changed])  # a changed latent's own output may change (its query did)
    assert np.array_equal(pa.transpose(0, 2, 1, 3)[~changed], pb.transpose(0, 2, 1, 3)[~changed])
    # The positive twin: unmasked, the changed latents are read by the others.
    c, _ = npp.perceiver_layer(layer, hidden, **kwargs)
    d, _ = npp.perceiver_layer(layer, hidden2, **kwargs)
    assert differ(c[~changed], d[~changed])
    vacuity(True)  # the positive twin above asserts it


@given(case=batched_cases(min_latents=2, min_inputs=2, min_d_model=3, generic=True), data=st.data())
def test_masked_latent_never_reaches_other_latents(case, data):
    """Through the whole encoder, a latent masked in every batch row still reads the inputs but is read by no other
    latent: changing its initial value leaves every other latent's output unchanged, bit for bit, while keeping it
    unmasked lets the change reach them."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    j = data.draw(st.integers(0, N - 1), label="masked latent")
    others = np.delete(np.arange(N), j)
    latent_mask = np.zeros((B, N), np.float32)  # latent j masked in every row; at least one other latent kept
    latent_mask[:, others] = data.draw(keep_masks(B, N - 1, min_kept=1), label="other latents' mask")
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs, read_rows=S)), label="head_mask")
    new_latent = data.draw(generic_arrays((D,), stream=1), label="new latent")  # LayerNorm sees the change
    describe(model, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    latents = model.state_dict()["embeddings.latents"].copy()
    latents[j] = new_latent
    changed = with_params(model, **{"embeddings.latents": latents})
    masks = dict(attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask, output_hidden_states=True)
    a, b = model(x, **masks), changed(x, **masks)
    assert np.array_equal(a.last_hidden_state[:, others], b.last_hidden_state[:, others])
    # The positive twin: with latent j kept, the change reaches the others -- wherever it clearly survives the
    # cross-attention (it may not: without the query residual, a row whose attention is uniform forgets its
    # query) and some head of some layer lets it through.
    latent_mask[:, j] = 1
    masks["latent_mask"] = latent_mask
    a2, b2 = model(x, **masks), changed(x, **masks)
    state = a2.hidden_states[0][:, j]  # (B, D): latent j after the cross-attention
    scale = np.maximum(np.abs(state).max(axis=-1), np.finfo(np.float32).tiny)  # (B,)
    after_cross = np.abs(state - b2.hidden_states[0][:, j]).max(axis=-1) / scale  # (B,)
    target(float(after_cross.max()), label="relative change of the latent after the cross-attention")
    rows = head_mask_rows(head_mask, NB * S, Hs)[:S]
    reachable = after_cross > 1e-3 if rows.any() else np.zeros(B, bool)
    for row in np.flatnonzero(reachable):
        assert differ(a2.last_hidden_state[row, others], b2.last_hidden_state[row, others]), row
    vacuity(reachable.any(), "the changed latent is forgotten by the cross-attention or silenced")


@given(case=batched_cases(min_latents=2), data=st.data())
def test_latent_mask_does_not_touch_cross_attention(case, data):
    """The latent mask acts in self-attention only: the cross-attention's probabilities and output are the same,
    bit for bit, with or without it, streamed or not, while the self-attention probabilities change."""
    model, x = case
    B, M, C = x.shape
    N = model.config.num_latents
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(keep_masks(B, N, partial_row=True), label="latent_mask")
    chunk = data.draw(optional(chunk_sizes(M)), label="cross_attention_chunk_size")
    describe(model, attention_mask=keep, latent_mask=latent_mask)
    event(f"chunk: {chunk_kind(chunk, M)}")
    a = model(x, attention_mask=keep, output_attentions=True, output_hidden_states=True)
    b = model(x, attention_mask=keep, latent_mask=latent_mask, output_attentions=True, output_hidden_states=True)
    assert np.array_equal(a.cross_attentions[0], b.cross_attentions[0])
    assert np.array_equal(a.hidden_states[0], b.hidden_states[0])  # the cross-attention layer's output
    sa, sb = (model(x, attention_mask=keep, latent_mask=lm, output_hidden_states=True, cross_attention_chunk_size=chunk)
              for lm in (None, latent_mask))
    assert np.array_equal(sa.hidden_states[0], sb.hidden_states[0])
    # The positive twin: the first self-attention layer sees the mask.
    assert differ(a.attentions[0], b.attentions[0])
    vacuity(True)  # the positive twin above asserts it


@given(case=batched_cases(min_latents=2), data=st.data())
def test_all_ones_latent_mask_equals_no_latent_mask(case, data):
    """A latent mask of all ones gives exactly the same outputs, bit for bit, as no latent mask, also where it is
    really added (in a layer), while a mask with a zero does change the layer."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    ones = np.ones((B, N), data.draw(keep_dtypes(), label="dtype"))
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs)), label="head_mask")
    describe(model, attention_mask=keep, head_mask=head_mask)
    a = model(x, attention_mask=keep, head_mask=head_mask, output_attentions=True)
    b = model(x, attention_mask=keep, head_mask=head_mask, latent_mask=ones, output_attentions=True)
    assert np.array_equal(a.last_hidden_state, b.last_hidden_state)
    assert len(a.attentions) == len(b.attentions) == NB * S
    assert all(np.array_equal(pa, pb) for pa, pb in zip(a.attentions, b.attentions))
    # The model skips an all-ones mask; a layer adds it (as zeros): still the same, bit for bit.
    layer = model.params["encoder"]["self_attends"][data.draw(st.integers(0, S - 1), label="layer")]
    hidden = data.draw(generic_arrays((B, N, D)), label="latent states")
    kwargs = dict(num_heads=Hs, hidden_act=model.config.hidden_act)
    plain, plain_probs = npp.perceiver_layer(layer, hidden, **kwargs)
    added, added_probs = npp.perceiver_layer(layer, hidden, attention_mask=npp.invert_attention_mask(ones), **kwargs)
    assert np.array_equal(plain, added) and np.array_equal(plain_probs, added_probs)
    # The positive twin: dropping one latent of one row changes that row.
    row, n = data.draw(st.integers(0, B - 1), label="row"), data.draw(st.integers(0, N - 1), label="dropped latent")
    one_zero = np.ones((B, N), np.float32)
    one_zero[row, n] = 0
    _, dropped = npp.perceiver_layer(layer, hidden, attention_mask=npp.invert_attention_mask(one_zero), **kwargs)
    assert differ(dropped[row], plain_probs[row])
    vacuity(True)  # the positive twin above asserts it


# ============================================================================ 6. head mask
@given(case=batched_cases(), data=st.data())
def test_zeroed_head_contributes_nothing(case, data):
    """A zero in head_mask[i, h] makes head h's attention probabilities in self-attention layer i of every block
    exactly zero, and that head's value projection then cannot change the output, bit for bit, though it does
    without the head mask."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    head_mask = data.draw(head_masks(NB * S, Hs, zeros=True, read_rows=S), label="head_mask")
    rows = head_mask_rows(head_mask, NB * S, Hs)
    silenced = [(i, h) for i in range(S) for h in range(Hs) if rows[i, h] == 0]  # rows >= S are never read
    note(f"silenced (layer, head): {silenced}")
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    describe(model, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
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
    changed_model = with_params(model, **changes)
    changed = changed_model(x, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    assert np.array_equal(out.last_hidden_state, changed.last_hidden_state)
    # The positive twin: without the head mask, the new value weights change the output.
    plain, plain_changed = (m(x, attention_mask=keep, latent_mask=latent_mask) for m in (model, changed_model))
    assert differ(plain.last_hidden_state, plain_changed.last_hidden_state)
    vacuity(bool(silenced), "no head silenced in a layer that is read")


@given(case=batched_cases(), data=st.data())
def test_head_mask_does_not_touch_cross_attention(case, data):
    """The head mask acts in self-attention only: the cross-attention's probabilities and output are the same, bit
    for bit, with or without it, streamed or not, while the self-attention probabilities change."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    head_mask = data.draw(head_masks(NB * S, Hs, read_rows=S), label="head_mask")
    chunk = data.draw(optional(chunk_sizes(M)), label="cross_attention_chunk_size")
    describe(model, head_mask=head_mask)
    event(f"chunk: {chunk_kind(chunk, M)}")
    a = model(x, output_attentions=True, output_hidden_states=True)
    b = model(x, head_mask=head_mask, output_attentions=True, output_hidden_states=True)
    assert np.array_equal(a.cross_attentions[0], b.cross_attentions[0])
    assert np.array_equal(a.hidden_states[0], b.hidden_states[0])
    sa, sb = (model(x, head_mask=hm, output_hidden_states=True, cross_attention_chunk_size=chunk)
              for hm in (None, head_mask))
    assert np.array_equal(sa.hidden_states[0], sb.hidden_states[0])
    # The positive twin: some self-attention layer sees the head mask.
    assert any(differ(pa, pb) for pa, pb in zip(a.attentions, b.attentions))
    vacuity(True)  # the positive twin above asserts it


@given(case=batched_cases(), data=st.data())
def test_all_ones_head_mask_equals_no_head_mask(case, data):
    """A head mask of all ones, of shape (Hs,) or (L, Hs), gives exactly the same outputs, bit for bit, as no head
    mask, also where it is really multiplied (in a layer), while a near-ones mask scales its head's probabilities."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    L = NB * S
    two_d = data.draw(st.booleans(), label="2-D")
    shape = (L, Hs) if two_d else (Hs,)
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    describe(model, attention_mask=keep, latent_mask=latent_mask)
    masks = dict(attention_mask=keep, latent_mask=latent_mask, output_attentions=True)
    a = model(x, **masks)
    b = model(x, head_mask=np.ones(shape), **masks)
    assert np.array_equal(a.last_hidden_state, b.last_hidden_state)
    assert len(a.attentions) == len(b.attentions) == L
    assert all(np.array_equal(pa, pb) for pa, pb in zip(a.attentions, b.attentions))
    # The model skips an all-ones mask; a layer multiplies by it: still the same, bit for bit.
    i = data.draw(st.integers(0, S - 1), label="layer")
    layer = model.params["encoder"]["self_attends"][i]
    hidden = data.draw(generic_arrays((B, N, D)), label="latent states")
    kwargs = dict(num_heads=Hs, hidden_act=model.config.hidden_act)
    plain, plain_probs = npp.perceiver_layer(layer, hidden, **kwargs)
    ones = np.ones((1, Hs, 1, 1), np.float32)  # one row of get_head_mask's (L, 1, Hs, 1, 1)
    multiplied, multiplied_probs = npp.perceiver_layer(layer, hidden, head_mask=ones, **kwargs)
    assert np.array_equal(plain, multiplied) and np.array_equal(plain_probs, multiplied_probs)
    # The positive twin: a near-ones mask (one weight 1 - 2**-6) reaches the model, scales exactly its head's
    # probabilities in the first layer it reads, and changes the output.
    h = data.draw(st.integers(0, Hs - 1), label="head")
    near = np.ones(shape, np.float32)
    near[(i, h) if two_d else h] = 1 - 2**-6
    first = i if two_d else 0  # the first layer this weight reaches: its inputs are unchanged
    c = model(x, head_mask=near, **masks)
    assert np.array_equal(c.attentions[first][:, h], a.attentions[first][:, h] * np.float32(1 - 2**-6))
    assert differ(c.last_hidden_state, a.last_hidden_state)
    vacuity(True)  # the positive twin above asserts it


@given(case=batched_cases(min_blocks=2), data=st.data())
def test_head_mask_indexing_quirk(case, data):
    """HF quirk: self-attention layer i of every block reads head_mask[i], so rows num_self_attends_per_block and
    beyond change nothing, bit for bit, while rows before them do."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    L = NB * S
    head_mask = data.draw(head_masks(L, Hs, two_d=True, read_rows=S), label="head_mask")
    other_rows = data.draw(head_masks(L - S, Hs, two_d=True), label="new rows S..L-1")
    if np.array_equal(other_rows, head_mask[S:]):
        other_rows[0, 0] = 0.5 if other_rows[0, 0] != 0.5 else 1.0
    head_mask2 = np.concatenate([head_mask[:S], other_rows])
    describe(model, head_mask=head_mask)
    a = model(x, head_mask=head_mask, output_attentions=True)
    b = model(x, head_mask=head_mask2, output_attentions=True)
    assert np.array_equal(a.last_hidden_state, b.last_hidden_state)
    assert len(a.attentions) == len(b.attentions) == L
    assert all(np.array_equal(pa, pb) for pa, pb in zip(a.attentions, b.attentions))
    # The positive twin: changing a row that is read changes the output.
    i, h = data.draw(st.integers(0, S - 1), label="read row"), data.draw(st.integers(0, Hs - 1), label="head")
    head_mask3 = head_mask.copy()
    head_mask3[i, h] = 0.5 if head_mask[i, h] != 0.5 else 1.0
    assert differ(model(x, head_mask=head_mask3).last_hidden_state, a.last_hidden_state)
    vacuity(True)  # the positive twin above asserts it


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


@given(case=batched_cases(min_inputs=2), data=st.data())
def test_attention_probabilities_are_distributions(case, data):
    """Every attention row is non-negative and sums to 1 over the keys (to its head-mask value in self-attention),
    masked keys get exactly 0, and a row whose keys are all masked is uniform, never NaN."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    keep = data.draw(keep_masks(B, M, partial_row=True), label="attention_mask")  # fully masked rows too
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs, read_rows=S)), label="head_mask")
    describe(model, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    out = model(x, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask, output_attentions=True)
    assert len(out.cross_attentions) == 1 and len(out.attentions) == NB * S
    check_distributions(out.cross_attentions[0], keep, np.ones(model.config.num_cross_attention_heads))
    rows = head_mask_rows(head_mask, NB * S, Hs)
    for layer, probs in enumerate(out.attentions):
        check_distributions(probs, latent_mask, rows[layer % S])  # HF quirk: row i within the block
    vacuity(True)  # some row of attention_mask drops a key, by construction


# ============================================================================ 8. batch independence
@given(case=batched_cases(min_batch=2, min_d_model=3), data=st.data())
def test_batch_rows_are_independent(case, data):
    """A batch row's output depends only on that row's inputs and masks: other rows and their masks cannot change
    it, running the row alone gives the same result, and changing the row's own inputs does change it."""
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
    if np.array_equal(x_other, x):  # hypothesis likes to draw the same array twice
        x_other[(row + 1) % B] += 1
    describe(model, attention_mask=keep, latent_mask=lat, head_mask=head_mask)
    a = model(x, attention_mask=keep, latent_mask=lat, head_mask=head_mask).last_hidden_state
    b = model(x_other, attention_mask=keep_other, latent_mask=lat_other, head_mask=head_mask).last_hidden_state
    alone = model(x[row:row + 1], attention_mask=keep[row:row + 1], latent_mask=lat[row:row + 1],
                  head_mask=head_mask).last_hidden_state
    assert np.array_equal(a[row], b[row])
    assert_close(alone[0], a[row])
    # The positive twin: the row's own (visible) inputs do matter.
    x_mine = x.copy()
    x_mine[row] = data.draw(generic_arrays((M, C), scale=10.0, stream=1), label="new inputs of the row")
    assert differ(model(x_mine, attention_mask=keep, latent_mask=lat, head_mask=head_mask).last_hidden_state[row],
                  a[row])
    vacuity(True)  # the other rows' inputs differ, by construction


# ============================================================================ 9. shapes and finiteness
@given(case=batched_cases(bound=1e6, sharpness=st.sampled_from([1.0, 10.0, 100.0])), data=st.data())
def test_output_shape_and_finiteness(case, data):
    """For any number of inputs the output has shape (B, N, D) and dtype float32, and it is finite for finite
    inputs, even large ones with very peaked attention, streamed or not."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    chunk = data.draw(optional(chunk_sizes(M)), label="cross_attention_chunk_size")
    describe(model, attention_mask=keep, latent_mask=latent_mask)
    out = model(x, attention_mask=keep, latent_mask=latent_mask, output_attentions=True, output_hidden_states=True)
    streamed = model(x, attention_mask=keep, latent_mask=latent_mask, cross_attention_chunk_size=chunk)
    assert out.last_hidden_state.shape == streamed.last_hidden_state.shape == (B, N, D)
    assert out.cross_attentions[0].shape == (B, model.config.num_cross_attention_heads, N, M)
    assert all(p.shape == (B, Hs, N, N) for p in out.attentions)
    for array in (out.last_hidden_state, streamed.last_hidden_state, *out.hidden_states, *out.attentions,
                  *out.cross_attentions):
        assert array.dtype == np.float32
        assert np.all(np.isfinite(array))
    vacuity(True)  # finiteness is claimed for every example


# ============================================================================ 10. the streamed cross-attention
@given(case=batched_cases(min_inputs=2, generic=True), data=st.data())
def test_streamed_cross_attention_matches_one_pass(case, data):
    """With any cross_attention_chunk_size and every kind of mask, the streamed cross-attention gives the one-pass
    output and hidden states to float32 rounding, and with output_attentions=True the chunk size is not used."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    chunk = data.draw(chunk_sizes(M, STREAMING_KINDS), label="cross_attention_chunk_size")  # the model streams
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")  # fully masked rows and chunks too
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs, read_rows=S)), label="head_mask")
    describe(model, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    chunks = -(-M // chunk)
    event(f"chunk: {chunk_kind(chunk, M)}")
    event(f"chunks: {min(chunks, 3)}{'+' if chunks >= 3 else ''}")
    masks = dict(attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask, output_hidden_states=True)
    one_pass = model(x, output_attentions=True, **masks)
    streamed = model(x, cross_attention_chunk_size=chunk, **masks)
    assert_close(streamed.last_hidden_state, one_pass.last_hidden_state)
    assert len(streamed.hidden_states) == len(one_pass.hidden_states) == NB * (S + 1)
    for hs, ho in zip(streamed.hidden_states, one_pass.hidden_states):
        assert_close(hs, ho)
    unused = model(x, output_attentions=True, cross_attention_chunk_size=chunk, **masks)
    assert np.array_equal(unused.last_hidden_state, one_pass.last_hidden_state)
    assert len(unused.cross_attentions) == 1
    assert np.array_equal(unused.cross_attentions[0], one_pass.cross_attentions[0])
    vacuity(chunks >= 2, "one chunk holds every input")  # never, by construction


@given(case=batched_cases(), data=st.data())
def test_output_flags_change_no_number(case, data):
    """output_attentions and output_hidden_states change no number of the output, bit for bit, and the last hidden
    state listed is the output itself."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    keep = data.draw(optional(keep_masks(B, M)), label="attention_mask")
    latent_mask = data.draw(optional(keep_masks(B, N)), label="latent_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs, read_rows=S)), label="head_mask")
    describe(model, attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    masks = dict(attention_mask=keep, latent_mask=latent_mask, head_mask=head_mask)
    plain = model(x, **masks)
    assert plain.hidden_states is None and plain.attentions is None and plain.cross_attentions is None
    for attentions, hidden in ((True, False), (False, True), (True, True)):
        out = model(x, output_attentions=attentions, output_hidden_states=hidden, **masks)
        assert np.array_equal(out.last_hidden_state, plain.last_hidden_state)
        if hidden:
            assert np.array_equal(out.hidden_states[-1], plain.last_hidden_state)
    vacuity(True)  # the flags are compared on every example


# ============================================================================ 11. naive reference
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
SCALES = st.sampled_from([1.0, 1e-3, 3.0])  # input scales for the naive comparisons


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
    """The whole encoder, one batch row at a time, from naive_layer, in HF's order: returns the output (B, N, D),
    the cross-attention (B, Hc, N, M), the L self-attention maps (B, Hs, N, N) and the num_blocks * (S + 1) hidden
    states (B, N, D) -- the input of every self-attention layer, then each block's output."""
    cfg, enc = model.config, model.params["encoder"]
    N, D, S, NB, Hs = dims(model)
    act = NAIVE_ACT[cfg.hidden_act]
    rows = head_mask_rows(head_mask, NB * S, Hs)
    outs, cross, selfs, hiddens = [], [], [], []
    for b in range(x.shape[0]):
        h = np.asarray(model.params["embeddings"]["latents"], np.float64)
        h, p = naive_layer(enc["cross_attention"], h, cfg.num_cross_attention_heads, act, cfg.use_query_residual,
                           inputs=np.asarray(x[b], np.float64), keep=None if keep is None else keep[b])
        cross.append(p)
        ps, hs = [], []
        for _ in range(NB):
            for i, layer in enumerate(enc["self_attends"]):
                hs.append(h)
                h, p = naive_layer(layer, h, Hs, act, True, keep=None if latent_keep is None else latent_keep[b],
                                   head_weights=rows[i])  # row i within the block, in every block
                ps.append(p)
            hs.append(h)
        outs.append(h)
        selfs.append(ps)
        hiddens.append(hs)
    by_layer = [np.array([s[l] for s in selfs]) for l in range(NB * S)]
    by_state = [np.array([s[l] for s in hiddens]) for l in range(NB * (S + 1))]
    return np.array(outs), np.array(cross), by_layer, by_state


@given(case=batched_cases(min_latents=2), data=st.data())
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
    weights = data.draw(optional(head_masks(1, Hs, two_d=False)), label="head weights")
    i = data.draw(st.integers(0, S - 1), label="self-attention layer")
    enc = model.params["encoder"]
    describe(model, attention_mask=keep, latent_mask=latent_keep, head_mask=weights)

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
    vacuity(N >= 2, "one latent: self-attention is trivial")


@given(case=batched_cases(min_latents=2), data=st.data())
def test_encoder_matches_naive_reference(case, data):
    """The whole model, masks included, gives the same output and the same hidden states, self-attention maps and
    cross-attention map, in the same number and order, to float32 rounding, as a naive float64 encoder built from
    per-head, per-query loops."""
    model, x = case
    B, M, C = x.shape
    N, D, S, NB, Hs = dims(model)
    # Generic values (see generic_arrays), sometimes so small that LayerNorm's eps matters.
    x = data.draw(SCALES.flatmap(lambda s: generic_arrays((B, M, C), s)), label="inputs")
    keep = data.draw(optional(keep_masks(B, M, dtype=np.bool_)), label="attention_mask")
    latent_keep = data.draw(optional(keep_masks(B, N, dtype=np.bool_)), label="latent_mask")
    head_mask = data.draw(optional(head_masks(NB * S, Hs, read_rows=S)), label="head_mask")
    describe(model, attention_mask=keep, latent_mask=latent_keep, head_mask=head_mask)
    out = model(x, attention_mask=keep, latent_mask=latent_keep, head_mask=head_mask, output_attentions=True,
                output_hidden_states=True)
    last, cross, selfs, hiddens = naive_encoder(model, x, keep, latent_keep, head_mask)
    assert_close(out.last_hidden_state, last)
    assert len(out.cross_attentions) == 1
    assert_close(out.cross_attentions[0], cross)
    assert len(out.attentions) == len(selfs) == NB * S
    for ours, ref in zip(out.attentions, selfs):
        assert_close(ours, ref)
    assert len(out.hidden_states) == len(hiddens) == NB * (S + 1)
    for ours, ref in zip(out.hidden_states, hiddens):
        assert_close(ours, ref)
    vacuity(N >= 2, "one latent: self-attention is trivial")
