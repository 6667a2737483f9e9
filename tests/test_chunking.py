"""The streamed cross-attention (``cross_attention_chunk_size``) computes what the one-pass one does.

The one-pass cross-attention is checked against HF in the parity tests; here the streamed one is checked
against it -- to float32 rounding, not bit for bit, since the softmax sums and the context matmuls are
split differently -- for chunk sizes that do and do not divide M, with masks that drop some inputs of a
row, every input of a row (HF's uniform-over-all-M case), or whole chunks. Also: an all-masked row
averages *all* the values (an expectation computed here, not by npperceiver); the option is validated;
and the extra memory stops growing with M.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import npperceiver as npp
from npperceiver.attention import cross_attention_keys_values, perceiver_self_attention, streaming_cross_attention
from npperceiver.masks import invert_attention_mask

M = 23  # a prime: chunk sizes 2, 4, 5, 7, 10 leave a short last chunk
CONFIG = npp.PerceiverConfig(num_latents=6, d_latents=16, d_model=12, num_blocks=1, num_self_attends_per_block=2,
                             num_self_attention_heads=2, num_cross_attention_heads=2, initializer_range=0.4)
TOL = 2e-6  # max |chunked - unchunked| / max(1, max |unchunked|): a few float32 roundings


def _model_and_inputs(seed: int = 0):
    """A model whose attention is far from uniform (weights ~ N(0, 0.4)), and inputs whose scale grows
    along M, so that later chunks hold larger scores and the running maximum really moves."""
    model = npp.PerceiverModel.init(CONFIG, seed=seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((3, M, CONFIG.d_model)).astype(np.float32)
    x *= np.linspace(0.5, 3.0, M, dtype=np.float32)[None, :, None]
    return model, x


def _keep_mask() -> np.ndarray:
    """Row 0 keeps everything, row 1 keeps nothing (HF: uniform over all M), row 2 drops a scattered
    half and the whole first seven inputs (whole chunks for the smaller chunk sizes)."""
    keep = np.ones((3, M), np.float32)
    keep[1] = 0
    keep[2, :7] = 0
    keep[2, 10::2] = 0
    return keep


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("chunk", [1, 2, 4, 5, 7, 10, 16, 22])
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "masks"])
def test_chunked_model_matches_unchunked(chunk, masked):
    """model(x, cross_attention_chunk_size=c) == model(x) to float32 rounding, every chunk size."""
    model, x = _model_and_inputs()
    keep = _keep_mask() if masked else None
    expected = model(x, attention_mask=keep).last_hidden_state
    got = model(x, attention_mask=keep, cross_attention_chunk_size=chunk).last_hidden_state
    assert got.dtype == np.float32
    assert np.all(np.isfinite(got))
    assert _rel_diff(got, expected) <= TOL


@pytest.mark.parametrize("chunk", [3, 8, 23, 50])
def test_streaming_self_attention_matches_one_pass(chunk):
    """The attention alone, with an additive mask per latent (B, 1, N, M) as HF's encoder accepts."""
    model, x = _model_and_inputs(seed=3)
    params = model.params["encoder"]["cross_attention"]["attention"]["self"]
    H = CONFIG.num_cross_attention_heads
    latents = np.broadcast_to(model.params["embeddings"]["latents"], (3, CONFIG.num_latents, CONFIG.d_latents))
    keep = np.ones((3, CONFIG.num_latents, M), np.float32)  # (B, N, M): latent n of row b may see input m
    keep[0, 2] = 0  # latent 2 of row 0 sees nothing
    keep[1, :, 5:9] = 0
    keep[2, ::2, ::3] = 0
    bias = invert_attention_mask(keep.reshape(-1, M)).reshape(3, 1, CONFIG.num_latents, M)  # (B, 1, N, M)
    expected, _ = perceiver_self_attention(params, latents, H, inputs=x, inputs_mask=bias)
    got = streaming_cross_attention(params, latents, x, H, inputs_mask=bias, chunk_size=chunk)
    assert got.shape == expected.shape == (3, CONFIG.num_latents, CONFIG.cross_attention.v_channels)
    assert _rel_diff(got, expected) <= TOL


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_all_masked_row_averages_every_value(chunk):
    """HF semantics: a row whose every input is masked attends uniformly to all M inputs (padding
    included) -- so its context is the plain mean of the values, whatever the chunking."""
    model, x = _model_and_inputs(seed=5)
    params = dict(model.params["encoder"]["cross_attention"]["attention"]["self"])
    params["query"] = {"weight": params["query"]["weight"] * 20, "bias": params["query"]["bias"]}  # large scores:
    #                                                              a wrong shift would not stay uniform
    H = CONFIG.num_cross_attention_heads
    latents = np.random.default_rng(7).standard_normal((3, CONFIG.num_latents, CONFIG.d_latents)).astype(np.float32)
    bias = invert_attention_mask(_keep_mask())  # (B, 1, 1, M), row 1 all masked
    context = streaming_cross_attention(params, latents, x, H, inputs_mask=bias, chunk_size=chunk)  # (B, N, v)
    _, values = cross_attention_keys_values(params, x, H)  # (B, H, M, dv)
    mean_of_values = values[1].astype(np.float64).mean(axis=1).reshape(-1)  # (H, dv) -> (v,): uniform weights 1/M
    np.testing.assert_allclose(context[1], np.broadcast_to(mean_of_values, context[1].shape),
                               rtol=0, atol=2e-6 * max(1.0, float(np.abs(mean_of_values).max())))


def test_masked_inputs_stay_invisible_when_chunked():
    """Changing masked inputs (even whole masked chunks) changes nothing, bit for bit: their weights are
    exactly 0, and a chunk whose maximum is float32's minimum is rescaled by exactly 0."""
    model, x = _model_and_inputs(seed=9)
    keep = _keep_mask()
    y = x.copy()
    y[2][keep[2] == 0] = 1e3
    a = model(x, attention_mask=keep, cross_attention_chunk_size=4).last_hidden_state
    b = model(y, attention_mask=keep, cross_attention_chunk_size=4).last_hidden_state
    np.testing.assert_array_equal(a[2], b[2])


def test_output_attentions_runs_unchunked():
    """With output_attentions the full probabilities are needed, so the chunk size is not used: the
    result is the one-pass one, bit for bit, and the cross-attention probabilities are complete."""
    model, x = _model_and_inputs()
    keep = _keep_mask()
    a = model(x, attention_mask=keep, output_attentions=True)
    b = model(x, attention_mask=keep, output_attentions=True, cross_attention_chunk_size=4)
    np.testing.assert_array_equal(a.last_hidden_state, b.last_hidden_state)
    assert b.cross_attentions[0].shape == (3, CONFIG.num_cross_attention_heads, CONFIG.num_latents, M)
    np.testing.assert_allclose(b.cross_attentions[0].sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -4, 2.5, True, "64"])
def test_chunk_size_is_validated(bad):
    model, x = _model_and_inputs()
    with pytest.raises(ValueError, match="cross_attention_chunk_size must be None or a positive integer"):
        model(x, cross_attention_chunk_size=bad)


def _peak_bytes(model, x, chunk) -> int:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    model(x, cross_attention_chunk_size=chunk)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def test_chunked_memory_does_not_grow_with_inputs():
    """Extra memory of a forward pass: with chunks of 256 it is the same for 2,048 and 8,192 inputs
    (the inputs themselves are the caller's); without chunks it grows by the (B, Hc, N, M) scores and
    the keys and values of every input."""
    config = npp.PerceiverConfig(num_latents=64, d_latents=32, d_model=16, num_blocks=1,
                                 num_self_attends_per_block=1, num_self_attention_heads=2,
                                 num_cross_attention_heads=2)
    model = npp.PerceiverModel.init(config, seed=0)
    rng = np.random.default_rng(0)
    short, long = (rng.standard_normal((1, m, 16)).astype(np.float32) for m in (2048, 8192))
    chunked = [_peak_bytes(model, x, 256) for x in (short, long)]
    plain = [_peak_bytes(model, x, None) for x in (short, long)]
    scores_growth = 1 * 2 * 64 * (8192 - 2048) * 4  # (B, Hc, N, M) float32
    assert abs(chunked[1] - chunked[0]) < 0.05 * chunked[0]
    assert plain[1] - plain[0] >= scores_growth
    assert chunked[1] < plain[1] / 4
