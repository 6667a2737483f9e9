"""The streamed cross-attention's backward (``cross_attention_chunk_size`` with a cache, or ``vjp(...,
cross_attention_chunk_size=)``) gives the one-pass backward's gradients, for every config and input mask.

The one-pass backward is checked against finite differences and torch autograd elsewhere
(``test_backward.py``, ``test_grad_parity.py``); here the streamed one, which recomputes each chunk's keys,
values and probabilities from the forward's row max and sum, is compared with it: to float64 rounding in
float64, and to float32 rounding in float32 -- with chunks that divide M and chunks that do not, a
partially masked row and an all-masked row (uniform over every input, padding included, as HF).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import npperceiver as npp
from grad_strategies import grad_configs, keep_mask, random_model
from npperceiver.attention import streaming_cross_attention, streaming_cross_attention_backward

FEW = settings(max_examples=30)


@FEW
@given(config=grad_configs(), seed=st.integers(0, 2**32 - 1), M=st.integers(2, 9), chunk=st.integers(1, 4),
       masked=st.sampled_from(["none", "some", "all"]))
def test_streamed_backward_gives_the_one_pass_gradients(config, seed, M, chunk, masked):
    rng = np.random.default_rng(seed)
    model = random_model(config, seed).astype(np.float64)
    B = 2
    x = rng.standard_normal((B, M, config.d_model))
    cotangent = rng.standard_normal((B, config.num_latents, config.d_latents))
    mask = None if masked == "none" else keep_mask(rng, B, M, all_masked_row=1 if masked == "all" else None)
    chunk = min(chunk, M - 1)  # the encoder streams only when the inputs do not fit in one chunk
    one_pass, d_x = model.vjp(x, cotangent, attention_mask=mask)
    streamed, d_x_streamed = model.vjp(x, cotangent, attention_mask=mask, cross_attention_chunk_size=chunk)
    assert list(streamed) == list(one_pass)
    for name, g in one_pass.items():
        np.testing.assert_allclose(streamed[name], g, rtol=1e-9, atol=1e-11 * max(1.0, np.abs(g).max()),
                                   err_msg=name)
    np.testing.assert_allclose(d_x_streamed, d_x, rtol=1e-9, atol=1e-11 * max(1.0, np.abs(d_x).max()))
    if mask is not None and masked == "some":
        assert np.all(d_x_streamed[mask == 0] == 0)  # a padded input gets exactly 0, streamed too


@settings(max_examples=10)
@given(config=grad_configs(max_blocks=1, max_self_attends=1), seed=st.integers(0, 2**32 - 1))
def test_float32_streamed_gradients_agree_to_float32_rounding(config, seed):
    rng = np.random.default_rng(seed)
    model = random_model(config, seed)
    x = rng.standard_normal((2, 11, config.d_model)).astype(np.float32)
    cotangent = rng.standard_normal((2, config.num_latents, config.d_latents)).astype(np.float32)
    one_pass, d_x = model.vjp(x, cotangent)
    streamed, d_x_streamed = model.vjp(x, cotangent, cross_attention_chunk_size=4)
    for name, g in one_pass.items():
        assert streamed[name].dtype == np.float32
        assert np.abs(streamed[name] - g).max() <= 2e-5 * max(1.0, float(np.abs(g).max())), name
    assert np.abs(d_x_streamed - d_x).max() <= 2e-5 * max(1.0, float(np.abs(d_x).max()))


def test_streamed_backward_keeps_nothing_of_size_m_but_the_inputs():
    """What the forward records for the backward: the latents' side, each row's max and sum, and a reference
    to the inputs -- no keys, values, scores or probabilities (those are recomputed a chunk at a time)."""
    config = npp.load_preset("small")
    model = npp.PerceiverModel.init(config, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 500, config.d_model)).astype(np.float32)
    cache = {}
    model(x, cross_attention_chunk_size=64, cache=cache)
    recorded = cache["encoder"]["cross_attention"]["attention"]["self"]
    assert recorded["streamed"] and recorded["inputs"] is x
    M = x.shape[1]
    big = [k for k, v in recorded.items() if isinstance(v, np.ndarray) and M in v.shape and v is not x]
    assert big == []  # nothing else grows with M
    params = model.params["encoder"]["cross_attention"]["attention"]["self"]
    d_context = np.ones((1, config.num_latents, config.cross_attention.v_channels), np.float32)
    d_hidden, d_inputs, grads = streaming_cross_attention_backward(d_context, params, recorded)
    assert d_inputs.shape == x.shape and set(grads) == {"layernorm1", "layernorm2", "query", "key", "value"}
    direct = streaming_cross_attention(params, cache["encoder"]["cross_attention"]["attention"]["self"]["hidden_states"],
                                       x, config.num_cross_attention_heads, chunk_size=64)
    assert direct.shape == d_context.shape  # the function itself, called without a cache
