"""The hand-written backward pass: finite-difference checks of every piece, the masks' effect on the
gradient, batch and weight-sharing sums, dropout, AdamW's bookkeeping, and the errors bad input gets.

Finite differences run in float64 (``model.astype(np.float64)``, or float64 arrays through the functions,
which keep their input's dtype): central differences along a random direction in each array, one array at
a time, so a wrong gradient is named. The bound is 1e-6 relative, plus, where GELU is involved, 1e-5
of the sum of the terms' sizes: GELU's backward uses the exact Gaussian density (as torch does) while its
forward's erf is a float32-accurate rational approximation, so the two disagree by up to 6e-6 (measured).

Everything here runs without torch; ``test_grad_parity.py`` compares with torch autograd.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npperceiver as npp
from grad_strategies import (
    directional_check, grad_configs, head_mask, keep_mask, random_mlm, random_model, random_state,
)
from npperceiver.attention import (
    merge_heads, merge_heads_backward, perceiver_self_attention, perceiver_self_attention_backward,
    scaled_dot_product_attention, scaled_dot_product_attention_backward, split_heads, split_heads_backward,
)
from npperceiver.dims import AttentionDims
from npperceiver.encoder import perceiver_encoder, perceiver_encoder_backward
from npperceiver.functional import (
    ACT2FN, ACT2GRAD, Dropout, dropout, dropout_backward, layer_norm, layer_norm_backward, linear, linear_backward,
    softmax, softmax_backward,
)
from npperceiver.layers import perceiver_layer, perceiver_layer_backward
from npperceiver.masks import MASK_MIN, invert_attention_mask
from npperceiver.text import masked_lm_loss, masked_lm_loss_backward
from npperceiver.weights import flatten, layer_param_shapes, unflatten

RTOL = 1e-6  # finite differences vs backward, float64, no GELU on the way
GELU_TERMS = 1e-5  # with GELU: its derivative is the exact density, its erf an approximation (see above),
#                    up to 6e-6 per entry: bounded relative to sum |g u|, the size of the terms summed
FEW = settings(max_examples=12)


def tolerances(hidden_act: str) -> dict:
    return dict(rtol=RTOL, rtol_terms=GELU_TERMS if hidden_act == "gelu" else 0.0)


def f64(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


# ============================================================================ primitives
@pytest.mark.parametrize("name", list(ACT2GRAD))
def test_activation_backward_is_the_derivative(name):
    """Every ``hidden_act`` the config accepts: the backward is the forward's derivative, entry by entry."""
    x = np.concatenate([np.linspace(-6, 6, 1201) + 1e-3, [-30.0, 30.0]])  # off the grid's 0, and the tails
    h = 1e-6
    fd = (ACT2FN[name](x + h) - ACT2FN[name](x - h)) / (2 * h)
    atol = 1e-5 if name == "gelu" else 1e-8  # gelu: exact density vs approximate erf (up to 6e-6)
    np.testing.assert_allclose(ACT2GRAD[name](np.ones_like(x), x), fd, rtol=0, atol=atol)
    d_out = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_allclose(ACT2GRAD[name](d_out, x), d_out * ACT2GRAD[name](np.ones_like(x), x), rtol=1e-12)
    x32 = x.astype(np.float32)
    assert ACT2GRAD[name](np.ones_like(x32), x32).dtype == np.float32  # no silent float64


def test_gelu_backward_matches_the_exact_derivative_in_float32():
    """gelu's derivative Phi(x) + x phi(x), against math.erf, to float32 accuracy."""
    x = np.linspace(-8, 8, 1601).astype(np.float32)
    exact = [0.5 * (1 + math.erf(t / math.sqrt(2))) + t * math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
             for t in x.astype(np.float64)]
    np.testing.assert_allclose(ACT2GRAD["gelu"](np.ones_like(x), x), exact, rtol=0, atol=2e-6)


def test_relu_backward_is_zero_at_zero():
    assert ACT2GRAD["relu"](np.ones(3), np.array([-1.0, 0.0, 1.0])).tolist() == [0.0, 0.0, 1.0]


def test_linear_and_layer_norm_backward():
    rng = np.random.default_rng(1)
    point = {"x": f64(rng, 2, 3, 5), "weight": f64(rng, 4, 5), "bias": f64(rng, 4)}
    d_out = f64(rng, 2, 3, 4)
    dx, g = linear_backward(d_out, point["x"], point["weight"])
    directional_check(lambda p: np.sum(linear(p["x"], p["weight"], p["bias"]) * d_out), point,
                      {"x": dx, **g}, rng, RTOL)

    point = {"x": f64(rng, 2, 3, 6, scale=3.0) + 1.0, "weight": 1 + f64(rng, 6, scale=0.3), "bias": f64(rng, 6)}
    d_out = f64(rng, 2, 3, 6)
    dx, g = layer_norm_backward(d_out, **point)
    directional_check(lambda p: np.sum(layer_norm(p["x"], p["weight"], p["bias"]) * d_out), point,
                      {"x": dx, **g}, rng, RTOL)


def test_softmax_backward_with_masked_and_all_masked_rows():
    """Masked scores (float32's minimum added) get exactly 0 gradient. In an all-masked row every score is
    float32's minimum plus the score, which the sum absorbs: the row is uniform whatever the scores, so
    finite differences see 0 there -- but the chain rule, in torch as here, works from the probabilities it
    computed and gives the scores the softmax's gradient at the uniform distribution, (dp - mean dp) / K."""
    rng = np.random.default_rng(2)
    bias = np.zeros((3, 5))
    bias[1, [0, 3]] = MASK_MIN
    bias[2] = MASK_MIN
    scores, d_probs = f64(rng, 3, 5), f64(rng, 3, 5)
    d_scores = softmax_backward(d_probs, softmax(scores + bias))
    assert np.all(d_scores[1, [0, 3]] == 0)
    fd = np.zeros_like(scores)
    for idx in np.ndindex(scores.shape):
        e = np.zeros_like(scores)
        e[idx] = 1e-6
        fd[idx] = np.sum((softmax(scores + e + bias) - softmax(scores - e + bias)) * d_probs) / 2e-6
    np.testing.assert_allclose(d_scores[:2], fd[:2], rtol=0, atol=1e-8)
    assert np.all(fd[2] == 0)  # the absorbed row: flat to finite differences
    np.testing.assert_allclose(d_scores[2], (d_probs[2] - d_probs[2].mean()) / 5, rtol=1e-12)


def test_dropout_backward_and_noise():
    rng = np.random.default_rng(3)
    noise = Dropout(0.25, np.random.default_rng(0)).noise((200, 50), np.float32)
    assert noise.dtype == np.float32 and set(np.unique(noise)) == {0.0, np.float32(1) / np.float32(0.75)}
    assert abs(np.mean(noise == 0) - 0.25) < 0.02
    x, d = f64(rng, 200, 50), f64(rng, 200, 50)
    assert np.array_equal(dropout(x, noise), x * noise)
    assert np.array_equal(dropout_backward(d, noise), d * noise)  # the same linear map, transposed


def test_split_and_merge_heads_backward_are_the_transposes():
    """<split(x), y> == <x, split_backward(y)> and the same for merge: the backward is the adjoint."""
    rng = np.random.default_rng(4)
    x, y = f64(rng, 2, 5, 12), f64(rng, 2, 3, 5, 4)
    assert np.isclose(np.sum(split_heads(x, 3) * y), np.sum(x * split_heads_backward(y)))
    assert np.isclose(np.sum(merge_heads(y) * x), np.sum(y * merge_heads_backward(x, 3)))


@pytest.mark.parametrize("with_dropout", [False, True])
def test_scaled_dot_product_attention_backward(with_dropout):
    """Query, key and value gradients, with an additive mask (partially masked rows; a fully masked row is
    flat to finite differences, see the softmax test), a head mask with a silenced head and fractions, and
    (fixed-seed) dropout."""
    rng = np.random.default_rng(5)
    B, H, Q, K = 3, 3, 4, 5
    point = {"query": f64(rng, B, H, Q, 4), "key": f64(rng, B, H, K, 4), "value": f64(rng, B, H, K, 2)}
    bias = invert_attention_mask(np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 0, 1]]))  # (B, 1, 1, K)
    hm = np.array([1.0, 0.0, 0.5])[None, :, None, None]  # (1, H, 1, 1)
    d_context = f64(rng, B, H, Q, 2)

    def forward(p, cache=None):
        drop = Dropout(0.3, np.random.default_rng(9)) if with_dropout else None  # the same noise every call
        return scaled_dot_product_attention(p["query"], p["key"], p["value"], bias=bias, head_mask=hm,
                                            dropout=drop, cache=cache)[0]

    cache = {}
    forward(point, cache)
    dq, dk, dv = scaled_dot_product_attention_backward(d_context, cache)
    directional_check(lambda p: np.sum(forward(p) * d_context), point, {"query": dq, "key": dk, "value": dv},
                      rng, RTOL)
    assert np.all(dk[1][:, [1, 3]] == 0) and np.all(dv[1][:, [1, 3]] == 0)  # masked keys: exactly no gradient
    assert np.all(dk[2][:, :4] == 0) and np.all(dv[2][:, :4] == 0)
    assert np.all(dq[:, 1] == 0) and np.all(dk[:, 1] == 0) and np.all(dv[:, 1] == 0)  # the silenced head


# ============================================================================ layers
def layer_params(dims: AttentionDims, rng) -> dict:
    return {k: v.astype(np.float64) for k, v in random_state(layer_param_shapes("layer", dims), rng).items()}


@settings(max_examples=20)
@given(
    is_cross=st.booleans(), heads=st.sampled_from([1, 2, 3]), residual=st.booleans(),
    hidden_act=st.sampled_from(sorted(ACT2GRAD)), widening=st.integers(1, 2), seed=st.integers(0, 2**32 - 1),
)
def test_perceiver_layer_backward_matches_finite_differences(is_cross, heads, residual, hidden_act, widening, seed):
    """One PerceiverLayer, cross (gradients reach the inputs and every K/V weight) or self (with an additive
    latent mask and a head mask), with or without the query residual: every parameter and both inputs."""
    rng = np.random.default_rng(seed)
    q_dim, kv_dim, B, T, K = 2 * heads * 3, 5, 2, 3, 4
    dims = AttentionDims(is_cross=is_cross, num_heads=heads, q_dim=q_dim, kv_dim=kv_dim if is_cross else q_dim,
                         qk_channels=heads * 2, v_channels=heads * 3 if is_cross else q_dim,
                         output_channels=q_dim, widening_factor=widening, use_query_residual=residual or not is_cross)
    flat = layer_params(dims, rng)
    point = dict(flat, hidden_states=f64(rng, B, T, q_dim))
    if is_cross:
        point["inputs"] = f64(rng, B, K, kv_dim)
        masks = dict(inputs_mask=invert_attention_mask(np.array([[1, 1, 1, 1], [0, 1, 0, 1]])))
    else:
        masks = dict(attention_mask=invert_attention_mask(np.array([[1, 1, 1], [1, 0, 1]])),
                     head_mask=np.resize([0.0, 1.5, 0.5], heads)[None, :, None, None])
    d_out = f64(rng, B, T, q_dim)

    def forward(p, cache=None):
        params = unflatten({k: v for k, v in p.items() if k.startswith("layer.")})["layer"]
        return perceiver_layer(params, p["hidden_states"], heads, use_query_residual=dims.use_query_residual,
                               hidden_act=hidden_act, inputs=p.get("inputs"), cache=cache, **masks)[0]

    cache = {}
    forward(point, cache)
    d_hidden, d_inputs, grads = perceiver_layer_backward(d_out, unflatten(flat)["layer"], cache)
    analytic = {f"layer.{k}": v for k, v in flatten(grads)}
    assert set(analytic) == set(flat)
    analytic["hidden_states"] = d_hidden
    if is_cross:
        analytic["inputs"] = d_inputs
        assert np.all(d_inputs[1, [0, 2]] == 0)  # masked inputs
    else:
        assert d_inputs is None
    directional_check(lambda p: np.sum(forward(p) * d_out), point, analytic, rng, **tolerances(hidden_act))


def test_causal_self_attention_layer_backward():
    """A decoder's masked self-attention is the same perceiver_layer with a causal additive bias (1, 1, T, T):
    finite differences agree, and the output at position t sends no gradient to positions after t."""
    rng = np.random.default_rng(12)
    T, D, heads = 5, 6, 2
    dims = AttentionDims(is_cross=False, num_heads=heads, q_dim=D, kv_dim=D, qk_channels=D, v_channels=D,
                         output_channels=D, widening_factor=2, use_query_residual=True)
    flat = layer_params(dims, rng)
    causal = np.triu(np.full((T, T), MASK_MIN, np.float32), k=1)[None, None]  # (1, 1, T, T): t sees 0..t
    point = dict(flat, hidden_states=f64(rng, 2, T, D))
    d_out = f64(rng, 2, T, D)

    def forward(p, d=d_out, cache=None):
        params = unflatten({k: v for k, v in p.items() if k.startswith("layer.")})["layer"]
        return perceiver_layer(params, p["hidden_states"], heads, hidden_act="silu", attention_mask=causal,
                               cache=cache)[0]

    cache = {}
    forward(point, cache=cache)
    d_hidden, _, grads = perceiver_layer_backward(d_out, unflatten(flat)["layer"], cache)
    analytic = dict({f"layer.{k}": v for k, v in flatten(grads)}, hidden_states=d_hidden)
    directional_check(lambda p: np.sum(forward(p) * d_out), point, analytic, rng, RTOL)
    only_t = np.zeros_like(d_out)
    only_t[:, 2] = d_out[:, 2]  # a loss on position 2 alone
    cache = {}  # a backward uses its record up (as torch frees a graph's saved tensors): record anew
    forward(point, cache=cache)
    d_hidden, _, _ = perceiver_layer_backward(only_t, unflatten(flat)["layer"], cache)
    assert np.all(d_hidden[:, 3:] == 0) and np.all(np.any(d_hidden[:, :3] != 0, axis=-1))


# ============================================================================ the whole model
def model_masks(rng, config, B, M, kinds):
    am = keep_mask(rng, B, M, all_masked_row=B - 1 if "all_masked" in kinds else None) if "inputs" in kinds else None
    lm = keep_mask(rng, B, config.num_latents) if "latents" in kinds else None
    hm = head_mask(rng, config, two_d="2d" in kinds) if "head" in kinds else None
    return dict(attention_mask=am, latent_mask=lm, head_mask=hm)


# No all-masked row here: its scores are absorbed by float32's minimum, so finite differences see no
# gradient for its keys where the chain rule (torch's too) gives one; see the softmax test above. The
# torch parity tests and test_masked_inputs_get_exactly_zero_gradient cover that row.
MASK_KINDS = st.sets(st.sampled_from(["inputs", "latents", "head", "2d"]))


@FEW
@given(config=grad_configs(), kinds=MASK_KINDS, seed=st.integers(0, 2**32 - 1))
def test_vjp_matches_finite_differences(config, kinds, seed):
    """PerceiverModel.vjp in float64: every parameter (shared blocks, the broadcast latent array) and the
    inputs, under every mask kind."""
    rng = np.random.default_rng(seed)
    model = random_model(config, seed).astype(np.float64)
    B, M = 3, 4
    x = rng.standard_normal((B, M, config.d_model))
    masks = model_masks(rng, config, B, M, kinds)
    cotangent = rng.standard_normal((B, config.num_latents, config.d_latents))
    grads, inputs_grad = model.vjp(x, cotangent, **masks)
    assert all(g.dtype == np.float64 for g in grads.values())

    def f(p):
        m = npp.PerceiverModel(config, unflatten({k: v for k, v in p.items() if k != "inputs"}))  # float64
        return np.sum(m(p["inputs"], **masks).last_hidden_state * cotangent)

    point = dict(model.state_dict(), inputs=x)
    directional_check(f, point, dict(grads, inputs=inputs_grad), rng, **tolerances(config.hidden_act))


MLM_CONFIG = npp.PerceiverConfig(num_latents=3, d_latents=8, d_model=8, num_blocks=2, num_self_attends_per_block=1,
                                 num_self_attention_heads=2, num_cross_attention_heads=1, max_position_embeddings=6,
                                 vocab_size=20, hidden_act="silu")


@FEW
@given(kinds=st.sets(st.sampled_from(["inputs", "head", "2d"])), seed=st.integers(0, 2**32 - 1),
       M=st.integers(1, 6))
def test_loss_and_grads_matches_finite_differences(kinds, seed, M):
    """PerceiverForMaskedLM.loss_and_grads in float64: the token embedding (tied: both uses), positions, the
    encoder, the decoder's queries and cross-attention, the bias."""
    rng = np.random.default_rng(seed)
    model = random_mlm(MLM_CONFIG, seed).astype(np.float64)
    B, P, V = 2, MLM_CONFIG.max_position_embeddings, MLM_CONFIG.vocab_size
    input_ids = rng.integers(0, V, (B, M))
    labels = np.where(rng.random((B, P)) < 0.6, rng.integers(0, V, (B, P)), -100)
    labels[0, 0] = 3  # at least one label in the loss
    masks = model_masks(rng, MLM_CONFIG, B, M, kinds)
    del masks["latent_mask"]
    loss, grads = model.loss_and_grads(input_ids, labels, **masks)
    assert isinstance(loss, np.float64)

    def f(p):
        m = npp.PerceiverForMaskedLM(MLM_CONFIG, unflatten(p))
        return float(m(input_ids, labels=labels, **masks).loss)

    directional_check(f, model.state_dict(), grads, rng, RTOL, h=1e-6)  # h = 1e-5 leaves a truncation error of
    #   2e-6 relative on some draws (seed 438, M 2: the loss is that curved); the backward agrees to 1e-9 at 1e-6


def test_masked_lm_loss_backward_entry_by_entry():
    """Cross-entropy with ignore_index=-100: (softmax - onehot) / K at kept positions, exactly 0 elsewhere."""
    rng = np.random.default_rng(6)
    logits, labels = f64(rng, 2, 3, 5, scale=2.0), np.array([[1, -100, 4], [-100, -100, 0]])
    d = masked_lm_loss_backward(logits, labels)
    assert np.all(d[labels == -100] == 0)
    fd = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        e = np.zeros_like(logits)
        e[idx] = 1e-6
        fd[idx] = (masked_lm_loss(logits + e, labels) - masked_lm_loss(logits - e, labels)) / 2e-6
    np.testing.assert_allclose(d, fd, rtol=0, atol=1e-8)
    assert np.all(masked_lm_loss_backward(logits, np.full((2, 3), -100)) == 0)  # nothing in the loss


# ============================================================================ masks and the gradient
@settings(max_examples=25)
@given(config=grad_configs(), seed=st.integers(0, 2**32 - 1), all_masked=st.booleans())
def test_masked_inputs_get_exactly_zero_gradient(config, seed, all_masked):
    """A padded input gets exactly 0 gradient -- unless every input of its row is masked: then the row attends
    uniformly to all of them and every one gets gradient."""
    rng = np.random.default_rng(seed)
    model = random_model(config, seed)
    B, M = 3, 5
    am = keep_mask(rng, B, M, all_masked_row=2 if all_masked else None)
    x = rng.standard_normal((B, M, config.d_model)).astype(np.float32)
    _, inputs_grad = model.vjp(x, rng.standard_normal((B, config.num_latents, config.d_latents)), attention_mask=am)
    partial = am.any(axis=1)
    assert np.all(inputs_grad[(am == 0) & partial[:, None]] == 0)
    assert np.all(np.any(inputs_grad[am == 1] != 0, axis=-1))
    if all_masked:
        assert np.all(np.any(inputs_grad[2] != 0, axis=-1))


def head_rows(dims: AttentionDims, h: int) -> dict[str, slice]:
    """The rows of the q, k, v weights (and biases) that belong to head h."""
    qk, v = dims.qk_head_dim, dims.v_head_dim
    return {"query": slice(h * qk, (h + 1) * qk), "key": slice(h * qk, (h + 1) * qk),
            "value": slice(h * v, (h + 1) * v)}


@settings(max_examples=25)
@given(config=grad_configs(max_blocks=3), seed=st.integers(0, 2**32 - 1), two_d=st.booleans())
def test_zeroed_heads_pass_no_gradient_to_their_qkv_slices(config, seed, two_d):
    """A head zeroed by head_mask in layer i passes no gradient to its slice of layer i's q/k/v weights and
    biases. With num_blocks > 1 the row applies to layer i of *every* block (HF reads row i), so the slice of
    the shared weights gets none from any application. The other heads' slices do get gradient."""
    rng = np.random.default_rng(seed)
    model = random_model(config, seed)
    hm = head_mask(rng, config, two_d)
    B, M = 2, 3
    x = rng.standard_normal((B, M, config.d_model)).astype(np.float32)
    grads, _ = model.vjp(x, rng.standard_normal((B, config.num_latents, config.d_latents)), head_mask=hm)
    rows = hm if two_d else np.broadcast_to(hm, (config.num_self_attention_layers, hm.shape[0]))
    for i in range(config.num_self_attends_per_block):  # rows S.. are never read
        for h, factor in enumerate(rows[i]):
            for proj, sl in head_rows(config.self_attention, h).items():
                prefix = f"encoder.self_attends.{i}.attention.self.{proj}"
                w, b = grads[f"{prefix}.weight"][sl], grads[f"{prefix}.bias"][sl]
                if factor == 0:
                    assert np.all(w == 0) and np.all(b == 0), f"{prefix} head {h}"
                elif proj != "key":  # the key bias's true gradient is 0 anyway (softmax ignores a row constant)
                    assert np.any(w != 0), f"{prefix} head {h} (factor {factor})"


@settings(max_examples=25)
@given(config=grad_configs(), seed=st.integers(0, 2**32 - 1))
def test_latent_masked_latents_reach_others_only_through_their_own_queries(config, seed):
    """A latent masked by latent_mask is never a key or value in the self-attention, so the other latents'
    outputs do not depend on it: with the cotangent 0 on the masked latents, their rows of the latent array
    get exactly 0 gradient. Through its own query it reads the others, so a cotangent on a masked latent
    alone does reach them. (Rows with every latent masked attend uniformly and are left out.)"""
    rng = np.random.default_rng(seed)
    model = random_model(config, seed)
    N, D, B = config.num_latents, config.d_latents, 2
    lm = keep_mask(rng, B, N)  # row 0 keeps all, row 1 drops some and keeps some
    x = rng.standard_normal((B, 3, config.d_model)).astype(np.float32)
    cotangent = rng.standard_normal((B, N, D)).astype(np.float32)
    cotangent[lm == 0] = 0
    cache = {}
    model(x, latent_mask=lm, cache=cache)
    d_latents, _, _ = perceiver_encoder_backward(cotangent, model.params["encoder"], cache["encoder"])  # (B, N, D)
    assert np.all(d_latents[lm == 0] == 0)
    only_masked = np.where((lm == 0)[..., None], rng.standard_normal((B, N, D)), 0).astype(np.float32)
    cache = {}
    model(x, latent_mask=lm, cache=cache)
    d_latents, _, _ = perceiver_encoder_backward(only_masked, model.params["encoder"], cache["encoder"])
    assert np.any(d_latents[1][lm[1] == 1] != 0)  # the masked latents' queries read the kept latents


@FEW
@given(config=grad_configs(), seed=st.integers(0, 2**32 - 1))
def test_batch_gradient_is_the_sum_of_the_rows(config, seed):
    """vjp of a batch = the sum of the rows' vjps (parameters); each row's inputs gradient is its own. The
    MLM's mean loss gives the rows' gradients weighted by their share of the labels."""
    rng = np.random.default_rng(seed)
    model = random_model(config, seed)
    B, M = 3, 4
    x = rng.standard_normal((B, M, config.d_model)).astype(np.float32)
    cot = rng.standard_normal((B, config.num_latents, config.d_latents)).astype(np.float32)
    masks = model_masks(rng, config, B, M, {"inputs", "latents", "head", "2d"})
    grads, inputs_grad = model.vjp(x, cot, **masks)
    rows = [model.vjp(x[b:b + 1], cot[b:b + 1], attention_mask=masks["attention_mask"][b:b + 1],
                      latent_mask=masks["latent_mask"][b:b + 1], head_mask=masks["head_mask"]) for b in range(B)]
    for key, g in grads.items():
        total = sum(r[0][key].astype(np.float64) for r in rows)
        np.testing.assert_allclose(g, total, rtol=0, atol=1e-5 * max(1.0, np.abs(total).max()), err_msg=key)
    np.testing.assert_allclose(inputs_grad, np.concatenate([r[1] for r in rows]), rtol=0, atol=1e-5)


def test_mlm_batch_gradient_is_the_label_weighted_sum_of_the_rows():
    rng = np.random.default_rng(7)
    model = random_mlm(MLM_CONFIG, 7)
    B, P, V = 3, MLM_CONFIG.max_position_embeddings, MLM_CONFIG.vocab_size
    ids = rng.integers(0, V, (B, 5))
    labels = np.where(rng.random((B, P)) < 0.5, rng.integers(0, V, (B, P)), -100)
    labels[:, 0] = 1
    am = keep_mask(rng, B, 5)
    _, grads = model.loss_and_grads(ids, labels, attention_mask=am)
    K = (labels != -100).sum()
    rows = [((labels[b] != -100).sum() / K, model.loss_and_grads(ids[b:b + 1], labels[b:b + 1],
                                                                 attention_mask=am[b:b + 1])[1]) for b in range(B)]
    for key, g in grads.items():
        total = sum(w * r[key].astype(np.float64) for w, r in rows)
        np.testing.assert_allclose(g, total, rtol=0, atol=1e-5 * max(1.0, np.abs(total).max()), err_msg=key)


@FEW
@given(config=grad_configs(max_blocks=3), seed=st.integers(0, 2**32 - 1))
def test_shared_block_gradient_is_the_sum_over_its_applications(config, seed):
    """The block applied num_blocks times with the same weights gets the sum of the gradients of an unrolled
    model whose num_blocks * S layers are copies of it (head_mask rows remapped as HF reads them)."""
    rng = np.random.default_rng(seed)
    model = random_model(config, seed)
    S, NB = config.num_self_attends_per_block, config.num_blocks
    unrolled_config = npp.PerceiverConfig.from_dict(
        dict(config.to_dict(), num_blocks=1, num_self_attends_per_block=NB * S))
    params = copy.deepcopy(model.params)
    block = model.params["encoder"]["self_attends"]
    params["encoder"]["self_attends"] = [copy.deepcopy(block[j % S]) for j in range(NB * S)]
    unrolled = npp.PerceiverModel(unrolled_config, params)
    hm = head_mask(rng, config, two_d=True)
    x = rng.standard_normal((2, 3, config.d_model)).astype(np.float32)
    cot = rng.standard_normal((2, config.num_latents, config.d_latents)).astype(np.float32)
    grads, dx = model.vjp(x, cot, head_mask=hm)
    unrolled_grads, unrolled_dx = unrolled.vjp(x, cot, head_mask=np.tile(hm[:S], (NB, 1)))
    np.testing.assert_allclose(dx, unrolled_dx, rtol=0, atol=1e-5)
    for key, g in grads.items():
        if ".self_attends." not in key:
            np.testing.assert_allclose(g, unrolled_grads[key], rtol=0, atol=1e-5 * max(1, np.abs(g).max()))
            continue
        i, rest = key.split(".self_attends.")[1].split(".", 1)
        total = sum(unrolled_grads[f"encoder.self_attends.{b * S + int(i)}.{rest}"].astype(np.float64)
                    for b in range(NB))
        np.testing.assert_allclose(g, total, rtol=0, atol=1e-5 * max(1, np.abs(total).max()), err_msg=key)


# ============================================================================ the forward is unchanged
def test_recording_a_cache_changes_no_output():
    """The forward with a cache (training) computes bit for bit what it computes without one (inference)."""
    rng = np.random.default_rng(8)
    config = npp.load_preset("small")
    model = npp.PerceiverModel.init(config, seed=0)
    x = rng.standard_normal((2, 7, config.d_model)).astype(np.float32)
    masks = dict(attention_mask=keep_mask(rng, 2, 7), latent_mask=keep_mask(rng, 2, config.num_latents),
                 head_mask=head_mask(rng, config, two_d=True))
    plain = model(x, output_attentions=True, output_hidden_states=True, **masks)
    cached = model(x, output_attentions=True, output_hidden_states=True, cache={}, **masks)
    for a, b in zip([plain.last_hidden_state, *plain.hidden_states, *plain.attentions, *plain.cross_attentions],
                    [cached.last_hidden_state, *cached.hidden_states, *cached.attentions, *cached.cross_attentions]):
        assert np.array_equal(a, b)


# ============================================================================ dropout
def test_dropout_is_off_without_a_generator_and_on_with_one():
    rng = np.random.default_rng(9)
    config = npp.PerceiverConfig.from_dict(dict(npp.load_preset("small").to_dict(), attention_probs_dropout_prob=0.3))
    model = npp.PerceiverModel.init(config, seed=0)
    x = rng.standard_normal((2, 40, config.d_model)).astype(np.float32)
    plain = model(x, output_attentions=True)
    dropped = model(x, output_attentions=True, dropout_rng=np.random.default_rng(1))
    again = model(x, output_attentions=True, dropout_rng=np.random.default_rng(1))
    assert not np.array_equal(plain.last_hidden_state, dropped.last_hidden_state)
    assert np.array_equal(dropped.last_hidden_state, again.last_hidden_state)  # the seed decides
    p, q = plain.cross_attentions[0], dropped.cross_attentions[0]  # (B, Hc, N, M)
    assert abs(np.mean(q == 0) - 0.3) < 0.03
    np.testing.assert_allclose(q[q != 0], p[q != 0] / np.float32(0.7), rtol=1e-6)  # survivors scaled by 1/(1-p)
    p_zero = npp.PerceiverConfig.from_dict(dict(config.to_dict(), attention_probs_dropout_prob=0.0))
    no_dropout = npp.PerceiverModel(p_zero, model.params)
    assert np.array_equal(no_dropout(x, dropout_rng=np.random.default_rng(1)).last_hidden_state,
                          plain.last_hidden_state)


def test_dropout_gradient_matches_finite_differences():
    """With dropout, the backward uses the forward's draws: the same seed gives the same mask every call."""
    rng = np.random.default_rng(10)
    config = npp.PerceiverConfig(num_latents=4, d_latents=8, d_model=6, num_blocks=2, num_self_attends_per_block=1,
                                 num_self_attention_heads=2, num_cross_attention_heads=2, hidden_act="silu",
                                 attention_probs_dropout_prob=0.4)
    model = random_model(config, 10).astype(np.float64)
    x = rng.standard_normal((2, 5, 6))
    cot = rng.standard_normal((2, 4, 8))
    grads, dx = model.vjp(x, cot, dropout_rng=np.random.default_rng(3))
    eval_grads, _ = model.vjp(x, cot)
    assert not np.allclose(grads["embeddings.latents"], eval_grads["embeddings.latents"])

    def f(p):
        m = npp.PerceiverModel(config, unflatten({k: v for k, v in p.items() if k != "inputs"}))
        return np.sum(m(p["inputs"], dropout_rng=np.random.default_rng(3)).last_hidden_state * cot)

    directional_check(f, dict(model.state_dict(), inputs=x), dict(grads, inputs=dx), rng, RTOL)


def test_mlm_dropout_reaches_the_decoder():
    config = npp.PerceiverConfig.from_dict(dict(MLM_CONFIG.to_dict(), attention_probs_dropout_prob=0.5))
    model = random_mlm(config, 1)
    ids = np.arange(5)[None] + 6
    out = model(ids, output_attentions=True, dropout_rng=np.random.default_rng(0))
    assert np.any(out.cross_attentions[1] == 0)  # the decoder's (B, 8, P, N) probabilities


# ============================================================================ AdamW and the schedule
def test_adamw_updates_the_model_in_place_and_the_call_sees_it():
    model = random_mlm(MLM_CONFIG, 2)
    ids, labels = np.arange(6)[None] + 6, np.arange(6)[None] + 6
    before = model(ids, labels=labels).loss
    opt = npp.AdamW(model, lr=1e-2)
    for _ in range(3):
        loss, grads = model.loss_and_grads(ids, labels)
        opt.step(grads)
    assert model(ids, labels=labels).loss < before
    assert opt.step_count == 3


def test_adamw_state_dict_resumes_exactly():
    """Saving the optimizer's state and loading it into a new AdamW on a copy of the model continues the run
    bit for bit; the state is plain arrays that save_weights can write."""
    rng = np.random.default_rng(11)
    model = random_model(npp.load_preset("small"), 0)
    x = rng.standard_normal((2, 5, model.config.d_model)).astype(np.float32)
    cots = rng.standard_normal((4, 2, model.config.num_latents, model.config.d_latents)).astype(np.float32)
    opt = npp.AdamW(model, lr=1e-2, weight_decay=0.1)
    for c in cots[:2]:
        opt.step(model.vjp(x, c)[0])
    state = opt.state_dict()
    assert state["step"] == 2 and all(isinstance(v, np.ndarray) for v in state.values())
    resumed_model = npp.PerceiverModel(model.config, copy.deepcopy(model.params))
    resumed = npp.AdamW(resumed_model, lr=1e-2, weight_decay=0.1)
    resumed.load_state_dict(state)
    for c in cots[2:]:
        opt.step(model.vjp(x, c)[0])
        resumed.step(resumed_model.vjp(x, c)[0])
    for key, value in model.state_dict().items():
        assert np.array_equal(value, resumed_model.state_dict()[key]), key
    with pytest.raises(ValueError, match="missing exp_avg.embeddings.latents"):
        resumed.load_state_dict({k: v for k, v in state.items() if k != "exp_avg.embeddings.latents"})


def test_adamw_rejects_non_finite_gradients_naming_the_parameter():
    model = random_model(npp.load_preset("small"), 0)
    opt = npp.AdamW(model)
    grads = {k: np.zeros_like(v) for k, v in model.state_dict().items()}
    key = "encoder.self_attends.1.mlp.dense2.weight"
    grads[key] = grads[key].copy()
    grads[key][0, 0] = np.nan
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"gradient of {re.escape(key)} has 1 non-finite value"):
        opt.step(grads)
    assert opt.step_count == 0 and all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())
    grads[key][0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        opt.step(grads)
    with pytest.raises(ValueError, match="missing 1: embeddings.latents"):
        opt.step({k: v for k, v in grads.items() if k != "embeddings.latents"})
    with pytest.raises(ValueError, match=r"gradient of embeddings.latents has shape \(3,\)"):
        opt.step(dict(grads, **{"embeddings.latents": np.zeros(3)}))


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "lr must be >= 0"), (dict(betas=(0.9, 1.0)), r"betas\[1\] must lie in \[0, 1\)"),
    (dict(eps=-1e-8), "eps must be >= 0"), (dict(weight_decay=float("nan")), "weight_decay must be a finite number"),
    (dict(betas=0.9), "betas must be a pair"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        npp.AdamW(random_model(npp.load_preset("small"), 0), **kwargs)


def test_clip_grad_norm_scales_only_above_the_bound():
    grads = {"a": np.full(4, 3.0, np.float32), "b": np.full(1, 4.0, np.float32)}  # norm sqrt(36 + 16)
    total = npp.clip_grad_norm(grads, 1e3)
    assert total == pytest.approx(math.sqrt(52)) and grads["a"][0] == 3.0  # below the bound: untouched
    npp.clip_grad_norm(grads, 1.0)
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    assert norm == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="max_norm must be a positive number"):
        npp.clip_grad_norm(grads, 0)


def test_warmup_cosine_lr():
    lr = [npp.warmup_cosine_lr(s, 1e-3, warmup_steps=10, total_steps=110, min_lr=1e-5) for s in range(120)]
    assert lr[0] == pytest.approx(1e-4) and lr[9] == pytest.approx(1e-3) and lr[10] == pytest.approx(1e-3)
    assert lr[60] == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr[110] == pytest.approx(1e-5) and lr[119] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # never increases after the warmup
    assert npp.warmup_cosine_lr(0, 1e-3, warmup_steps=0, total_steps=10) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="warmup_steps"):
        npp.warmup_cosine_lr(0, 1e-3, warmup_steps=20, total_steps=10)
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        npp.warmup_cosine_lr(-1, 1e-3, warmup_steps=0, total_steps=10)


# ============================================================================ bad input
def test_vjp_rejects_a_cotangent_of_the_wrong_shape_or_with_nan():
    model = random_model(npp.load_preset("small"), 0)
    x = np.zeros((2, 5, model.config.d_model), np.float32)
    expected = r"cotangent must have the shape of last_hidden_state \(B, N, D\) = \(2, 16, 32\), got \(2, 5, 32\)"
    with pytest.raises(ValueError, match=expected):
        model.vjp(x, np.zeros((2, 5, 32)))
    with pytest.raises(ValueError, match="cotangent must be finite"):
        model.vjp(x, np.full((2, 16, 32), np.nan))
    with pytest.raises(ValueError, match="attention_mask must have shape"):  # the masks are checked as in __call__
        model.vjp(x, np.zeros((2, 16, 32)), attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="dropout_rng must be a numpy Generator"):
        model.vjp(x, np.zeros((2, 16, 32)), dropout_rng=0)


def test_loss_and_grads_rejects_bad_labels():
    model = random_mlm(MLM_CONFIG, 0)
    ids = np.arange(4)[None] + 6
    P = MLM_CONFIG.max_position_embeddings
    with pytest.raises(ValueError, match=r"labels must have shape \(B, P\) = \(1, 6\)"):
        model.loss_and_grads(ids, np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, vocab_size=20\) or be -100, found 20"):
        model.loss_and_grads(ids, np.full((1, P), 20))
    with pytest.raises(ValueError, match="labels must be integers"):
        model.loss_and_grads(ids, np.zeros((1, P)))
    with pytest.raises(ValueError, match="labels are required"):
        model.loss_and_grads(ids, None)
    cache = {}
    model(ids, cache=cache)
    with pytest.raises(ValueError, match=r"d_logits must have the shape of the logits \(B, P, V\) = \(1, 6, 20\)"):
        model.backward(np.zeros((1, 4, 20)), cache)


def test_all_labels_ignored_gives_nan_loss_and_zero_gradients():
    """As torch: the mean over no label is NaN, and nothing flows back."""
    model = random_mlm(MLM_CONFIG, 0)
    loss, grads = model.loss_and_grads(np.arange(4)[None] + 6, np.full((1, 6), -100))
    assert np.isnan(loss) and all(np.all(g == 0) for g in grads.values())

