"""The sequence-to-sequence Perceiver's backward pass: finite differences of each decoder and of the whole
``loss_and_grads``, the gradient's invariants (causality, source and target padding, the batch mean,
dropout), and parity with torch autograd on its torch twin (``tests/seq2seq_reference.py``).

Finite differences run in the explicit float64 mode (``model.astype(np.float64)``, or float64 parameters
through the functions, which keep their input's dtype), along a random direction per array
(``grad_strategies.directional_check``), with the bounds of ``test_backward.py``. The torch comparisons run
the same case three times -- ours in float32, torch in float32 and torch in float64 -- and hold our error
against float64 to ``FACTOR`` times torch float32's own, as ``test_grad_parity.py`` does; a summary line of
the worst errors is printed at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npperceiver as npp
from grad_strategies import directional_check, grad_configs, keep_mask, random_state
from npperceiver.seq2seq import (
    DECODERS, PerceiverSeq2Seq, Seq2SeqConfig, autoregressive_decoder, autoregressive_decoder_backward,
    queries_decoder, queries_decoder_backward, seq2seq_loss, seq2seq_loss_backward, seq2seq_param_shapes,
    shift_right,
)
from npperceiver.tasks import EOS_ID, NumberSplit, get_task
from npperceiver.text import embedding_backward
from npperceiver.tokenizer import PAD_ID
from npperceiver.weights import flatten, unflatten

RTOL = 1e-6  # finite differences vs backward, float64 (test_backward.py's bound)
GELU_TERMS = 1e-5  # with GELU: exact density in the backward, approximate erf in the forward (test_backward.py)
FEW = settings(max_examples=10)
MAX_M = 6  # source bytes in the random cases


def tolerances(config: Seq2SeqConfig) -> dict:
    return dict(rtol=RTOL, rtol_terms=GELU_TERMS if config.encoder.hidden_act == "gelu" else 0.0)


# ---------------------------------------------------------------------- small random cases
@st.composite
def small_configs(draw, decoder: str) -> Seq2SeqConfig:
    """A small encoder (any kind ``grad_configs`` draws) and a small decoder of the given kind."""
    encoder = draw(grad_configs(max_blocks=2, max_self_attends=1))
    encoder = dataclasses.replace(encoder, vocab_size=draw(st.integers(8, 14)), max_position_embeddings=MAX_M)
    heads = draw(st.sampled_from([1, 2]), label="Hd")
    return Seq2SeqConfig(
        encoder, decoder=decoder, target_vocab_size=draw(st.integers(5, 8), label="V"),
        max_target_length=draw(st.integers(2, 5), label="T"),
        d_decoder=heads * draw(st.integers(-(-4 // heads), 6 // heads), label="E / Hd"),  # E >= 4 (see grad_configs)
        num_decoder_layers=draw(st.integers(1, 2), label="layers") if decoder == "autoregressive" else 1,
        num_decoder_heads=heads, decoder_widening_factor=draw(st.integers(1, 2), label="widening"),
        decoder_use_query_residual=draw(st.booleans(), label="query residual"),
    )


def random_seq2seq(config: Seq2SeqConfig, seed: int) -> PerceiverSeq2Seq:
    """float32 weights far from HF's near-uniform init (``grad_strategies.random_state``'s rules)."""
    state = random_state(seq2seq_param_shapes(config), np.random.default_rng(seed))
    return PerceiverSeq2Seq.from_state_dict(config, state)


def random_batch(config: Seq2SeqConfig, rng: np.random.Generator, B: int, M: int):
    """Source ids (B, M) in [1, vocab) with [PAD] (0) at the padded bytes, a keep-mask (B, M) -- row 0 keeps
    every byte, the others drop some and keep some -- and targets (B, T): tokens, [EOS] at a random position
    (the last one in row 0, so every position is in the loss somewhere), [PAD] after it."""
    keep = keep_mask(rng, B, M)  # (B, M)
    source = np.where(keep == 1, rng.integers(1, config.encoder.vocab_size, (B, M)), PAD_ID)  # (B, M)
    T, V = config.max_target_length, config.target_vocab_size
    targets = rng.integers(EOS_ID + 1, V, (B, T))  # (B, T) real tokens
    for b in range(B):
        end = T - 1 if b == 0 else int(rng.integers(0, T))
        targets[b, end], targets[b, end + 1:] = EOS_ID, PAD_ID
    return source, keep, targets


@st.composite
def cases(draw, decoder: str, min_batch: int = 1):
    config = draw(small_configs(decoder))
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    B, M = draw(st.integers(min_batch, 3), label="B"), draw(st.integers(2, MAX_M), label="M")
    return (config, seed, *random_batch(config, np.random.default_rng(seed), B, M))


def decoder_point(model: PerceiverSeq2Seq, latents: np.ndarray) -> dict[str, np.ndarray]:
    """The decoder's parameters (float64, keyed without ``decoder.``) and the latents, as one point."""
    flat = {k[len("decoder."):]: v.astype(np.float64) for k, v in model.state_dict().items()
            if k.startswith("decoder.")}
    return dict(flat, latents=latents.astype(np.float64))


def decoder_params(point: dict) -> dict:
    return unflatten({k: v for k, v in point.items() if k != "latents"})


# ---------------------------------------------------------------------- finite differences: the pieces
def test_seq2seq_loss_backward_entry_by_entry():
    """(softmax - onehot) / K at the K real target tokens ([EOS] included), exactly 0 at [PAD]."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 6)) * 2
    targets = np.array([[3, 4, EOS_ID, PAD_ID], [EOS_ID, PAD_ID, PAD_ID, PAD_ID]])
    d = seq2seq_loss_backward(logits, targets)
    assert np.all(d[targets == PAD_ID] == 0) and np.all(np.any(d[targets != PAD_ID] != 0, axis=-1))
    fd = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        e = np.zeros_like(logits)
        e[idx] = 1e-6
        fd[idx] = (seq2seq_loss(logits + e, targets) - seq2seq_loss(logits - e, targets)) / 2e-6
    np.testing.assert_allclose(d, fd, rtol=0, atol=1e-8)
    assert seq2seq_loss_backward(logits.astype(np.float32), targets).dtype == np.float32


@settings(max_examples=25)
@given(V=st.integers(1, 9), B=st.integers(1, 4), M=st.integers(1, 7), seed=st.integers(0, 2**32 - 1))
def test_embedding_backward_is_the_scatter_add(V, B, M, seed):
    """The embeddings' gradient (source bytes and target tokens): the sum of every use of an id, 0 for an
    unused id -- ``np.add.at`` in float64, whatever the ids' repeats and order."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (B, M))  # (B, M), repeats likely
    d_out = rng.standard_normal((B, M, 3))  # (B, M, C)
    expected = np.zeros((V, 3))
    np.add.at(expected, ids, d_out)
    got = embedding_backward(d_out, ids, V)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert np.all(got[np.setdiff1d(np.arange(V), ids)] == 0)
    assert embedding_backward(d_out.astype(np.float32), ids, V).dtype == np.float32


@FEW
@given(case=cases("autoregressive"))
def test_autoregressive_decoder_backward_matches_finite_differences(case):
    """Every decoder parameter -- both layers' causal self-attention and cross-attention + MLP, the target
    embedding (an id used at several positions adds up), the positions, the head -- and the latents, which
    every layer's cross-attention reads (their gradients add up)."""
    config, seed, _, _, targets = case
    rng = np.random.default_rng(seed)
    model = random_seq2seq(config, seed)
    B, N, D = targets.shape[0], config.encoder.num_latents, config.encoder.d_latents
    point = decoder_point(model, rng.standard_normal((B, N, D)))
    ids = shift_right(targets)  # (B, T)
    d_logits = rng.standard_normal((*ids.shape, config.target_vocab_size))  # (B, T, V)

    def f(p):
        return np.sum(autoregressive_decoder(decoder_params(p), config, ids, p["latents"]) * d_logits)

    cache = {}
    autoregressive_decoder(decoder_params(point), config, ids, point["latents"], cache=cache)
    d_latents, grads = autoregressive_decoder_backward(d_logits, decoder_params(point), cache)
    analytic = dict(flatten(grads), latents=d_latents)
    assert set(analytic) == set(point) and not cache.get("layers")  # every parameter; the record used up
    assert all(g.dtype == np.float64 for g in analytic.values())
    directional_check(f, point, analytic, rng, **tolerances(config))


@FEW
@given(case=cases("queries"))
def test_queries_decoder_backward_matches_finite_differences(case):
    """The output queries (one table for every batch row: its gradient is summed over the batch), the
    cross-attention + MLP with or without the query residual, the head, and the latents."""
    config, seed, _, _, targets = case
    rng = np.random.default_rng(seed)
    model = random_seq2seq(config, seed)
    B, N, D = targets.shape[0], config.encoder.num_latents, config.encoder.d_latents
    point = decoder_point(model, rng.standard_normal((B, N, D)))
    d_logits = rng.standard_normal((B, config.max_target_length, config.target_vocab_size))  # (B, T, V)

    def f(p):
        return np.sum(queries_decoder(decoder_params(p), config, p["latents"]) * d_logits)

    cache = {}
    queries_decoder(decoder_params(point), config, point["latents"], cache=cache)
    d_latents, grads = queries_decoder_backward(d_logits, decoder_params(point), cache)
    analytic = dict(flatten(grads), latents=d_latents)
    assert set(analytic) == set(point)
    directional_check(f, point, analytic, rng, **tolerances(config))


# ---------------------------------------------------------------------- finite differences: the whole model
@pytest.mark.parametrize("decoder", DECODERS)
@FEW
@given(data=st.data())
def test_loss_and_grads_matches_finite_differences(decoder, data):
    """``loss_and_grads`` in float64, with source padding and target padding: every parameter of the encoder
    (byte and position embeddings, latents, cross-attention, the shared block) and of the decoder."""
    config, seed, source, keep, targets = data.draw(cases(decoder))
    rng = np.random.default_rng(seed)
    model = random_seq2seq(config, seed).astype(np.float64)
    loss, grads = model.loss_and_grads(source, keep, targets)
    assert isinstance(loss, np.float64) and list(grads) == list(model.state_dict())
    assert all(g.dtype == np.float64 and g.shape == p.shape for g, p in zip(grads.values(),
                                                                          model.state_dict().values()))

    def f(p):
        return float(PerceiverSeq2Seq(config, unflatten(p))(source, keep, targets).loss)

    assert f(model.state_dict()) == loss
    directional_check(f, model.state_dict(), grads, rng, **tolerances(config), h=1e-6)  # h as the MLM's check


# ---------------------------------------------------------------------- invariants of the gradient
@FEW
@given(case=cases("autoregressive"), data=st.data())
def test_causality_a_loss_before_t_sends_no_gradient_to_decoder_inputs_at_t_or_later(case, data):
    """With the loss on positions < t alone, the decoder inputs at positions >= t get exactly 0: the position
    embedding rows t.. and the embedding rows of ids used only there. Positions < t do get some."""
    config, seed, _, _, targets = case
    rng = np.random.default_rng(seed)
    model = random_seq2seq(config, seed)
    T = config.max_target_length
    t = data.draw(st.integers(1, T - 1), label="t")
    ids = rng.integers(0, config.target_vocab_size, targets.shape)  # (B, T) any decoder inputs
    latents = rng.standard_normal((ids.shape[0], config.encoder.num_latents, config.encoder.d_latents))
    d_logits = rng.standard_normal((*ids.shape, config.target_vocab_size)).astype(np.float32)  # (B, T, V)
    d_logits[:, t:] = 0  # a loss on positions < t
    cache = {}
    autoregressive_decoder(model.params["decoder"], config, ids, latents.astype(np.float32), cache=cache)
    _, grads = autoregressive_decoder_backward(d_logits, model.params["decoder"], cache)
    d_positions, d_embeddings = grads["position_embeddings"]["weight"], grads["embeddings"]["weight"]  # (T, E), (V, E)
    assert np.all(d_positions[t:] == 0)
    assert np.all(np.any(d_positions[:t] != 0, axis=-1))
    only_late = np.setdiff1d(ids[:, t:], ids[:, :t])  # ids that occur at positions >= t only
    assert np.all(d_embeddings[only_late] == 0)
    assert np.all(np.any(d_embeddings[np.unique(ids[:, :t])] != 0, axis=-1))


@pytest.mark.parametrize("decoder", DECODERS)
@FEW
@given(data=st.data())
def test_source_padding_gets_no_gradient_and_changes_none(decoder, data):
    """The padded source bytes ([PAD], id 0, and nowhere else) give their embedding row exactly 0 gradient;
    and whatever bytes sit at the padded positions, the loss and every gradient are the same, bit for bit."""
    config, seed, source, keep, targets = data.draw(cases(decoder, min_batch=2))
    model = random_seq2seq(config, seed)
    loss, grads = model.loss_and_grads(source, keep, targets)
    assert np.all(grads["perceiver.input_preprocessor.embeddings.weight"][PAD_ID] == 0)
    other = np.where(keep == 1, source, np.random.default_rng(seed + 1).integers(1, config.encoder.vocab_size,
                                                                                 source.shape))  # (B, M)
    other_loss, other_grads = model.loss_and_grads(other, keep, targets)
    assert other_loss == loss
    for key, g in grads.items():
        assert np.array_equal(other_grads[key], g), key


@FEW
@given(case=cases("autoregressive", min_batch=2))
def test_target_padding_after_eos_contributes_nothing(case):
    """[PAD] after [EOS] is neither in the loss nor, through the causal mask, read by a position that is: its
    target-embedding row gets exactly 0 gradient, and moving that row (what every padded decoder input
    reads) changes neither the loss nor any gradient, bit for bit. [EOS] as a decoder input (the position
    after the target's end) is in no loss either."""
    config, seed, source, keep, targets = case
    model = random_seq2seq(config, seed)
    loss, grads = model.loss_and_grads(source, keep, targets)
    d_embeddings = grads["decoder.embeddings.weight"]  # (V, E)
    assert np.all(d_embeddings[PAD_ID] == 0) and np.all(d_embeddings[EOS_ID] == 0)
    moved = PerceiverSeq2Seq(model.config, copy.deepcopy(model.params))
    moved.params["decoder"]["embeddings"]["weight"][[PAD_ID, EOS_ID]] += 1.5  # (2, E)
    moved_loss, moved_grads = moved.loss_and_grads(source, keep, targets)
    assert moved_loss == loss
    for key, g in grads.items():
        assert np.array_equal(moved_grads[key], g), key


@FEW
@given(case=cases("queries", min_batch=2))
def test_queries_no_row_has_in_the_loss_get_no_gradient(case):
    """The queries decoder's output query at position t reads only the latents and feeds only position t's
    logits: a position past every row's [EOS] gets exactly 0 gradient; the others get some."""
    config, seed, source, keep, targets = case
    targets = targets.copy()
    targets[0] = targets[1]  # row 0 ended at the last position; now every row may end earlier
    last = int(np.max(np.argmax(targets == EOS_ID, axis=1)))  # the last position any row has in the loss
    _, grads = random_seq2seq(config, seed).loss_and_grads(source, keep, targets)
    d_queries = grads["decoder.output_position_encodings.position_embeddings"]  # (T, E)
    assert np.all(d_queries[last + 1:] == 0) and np.all(np.any(d_queries[:last + 1] != 0, axis=-1))


@pytest.mark.parametrize("decoder", DECODERS)
@FEW
@given(data=st.data())
def test_batch_gradient_is_the_token_weighted_mean_of_the_rows(decoder, data):
    """The loss is the mean over every real target token of the batch, so the batch's gradient is the rows'
    gradients weighted by each row's share K_b / K of the tokens ([EOS] included, [PAD] not) -- not their
    plain mean, and nothing leaks from one row to another."""
    config, seed, source, keep, targets = data.draw(cases(decoder, min_batch=2))
    model = random_seq2seq(config, seed)
    loss, grads = model.loss_and_grads(source, keep, targets)
    tokens = (targets != PAD_ID).sum(axis=1)  # (B,) K_b
    rows = [model.loss_and_grads(source[b:b + 1], keep[b:b + 1], targets[b:b + 1]) for b in range(len(targets))]
    weights = tokens / tokens.sum()
    assert loss == pytest.approx(sum(w * float(r[0]) for w, r in zip(weights, rows)), rel=1e-5)
    for key, g in grads.items():
        total = sum(w * r[1][key].astype(np.float64) for w, r in zip(weights, rows))
        np.testing.assert_allclose(g, total, rtol=0, atol=1e-5 * max(1.0, np.abs(total).max()), err_msg=key)


# ---------------------------------------------------------------------- dropout, the optimizer, bad input
@pytest.mark.parametrize("decoder", DECODERS)
def test_dropout_reaches_every_attention_and_its_gradient_is_right(decoder):
    """With ``dropout_rng``, HF's attention dropout (the encoder config's p) runs in every attention, the
    decoder's included; the backward uses the forward's draws (finite differences with the same seed)."""
    config = Seq2SeqConfig(
        npp.PerceiverConfig(num_latents=4, d_latents=8, d_model=6, num_blocks=1, num_self_attends_per_block=1,
                            num_self_attention_heads=2, num_cross_attention_heads=2, hidden_act="silu",
                            attention_probs_dropout_prob=0.4, vocab_size=10, max_position_embeddings=MAX_M),
        decoder=decoder, target_vocab_size=6, max_target_length=4, d_decoder=4, num_decoder_heads=2)
    rng = np.random.default_rng(3)
    model = random_seq2seq(config, 3).astype(np.float64)
    source, keep, targets = random_batch(config, rng, 3, 5)
    loss, grads = model.loss_and_grads(source, keep, targets, dropout_rng=np.random.default_rng(7))
    eval_loss, eval_grads = model.loss_and_grads(source, keep, targets)
    assert loss != eval_loss
    # The decoder's own attentions drop too: with the latents held fixed, its gradients change.
    latents = model.encode(source, keep)  # (B, N, D)
    ids = shift_right(targets) if decoder == "autoregressive" else None
    backward = autoregressive_decoder_backward if decoder == "autoregressive" else queries_decoder_backward
    d_logits = rng.standard_normal((*targets.shape, config.target_vocab_size))  # (B, T, V)
    decoder_grads = []
    for dropout_rng in (None, np.random.default_rng(7)):
        cache = {}
        model.decode(latents, ids, dropout_rng=dropout_rng, cache=cache)
        decoder_grads.append(dict(flatten(backward(d_logits, model.params["decoder"], cache["decoder"])[1])))
    queries = [k for k in decoder_grads[0] if ".self.query." in k]  # every decoder attention's
    assert queries and all(not np.allclose(decoder_grads[0][k], decoder_grads[1][k]) for k in queries)

    def f(p):
        m = PerceiverSeq2Seq(config, unflatten(p))
        return float(m(source, keep, targets, dropout_rng=np.random.default_rng(7)).loss)

    directional_check(f, model.state_dict(), grads, rng, RTOL, h=1e-6)
    assert not all(np.array_equal(grads[k], eval_grads[k]) for k in grads)


@pytest.mark.parametrize("decoder", DECODERS)
def test_adamw_trains_a_seq2seq_model(decoder):
    """``npp.AdamW`` takes a PerceiverSeq2Seq (its state_dict's arrays, updated in place): a few steps on one
    batch of the real task lower the loss the model itself computes."""
    config = Seq2SeqConfig.for_task("digits-to-words", decoder)
    model = PerceiverSeq2Seq.init(config, seed=0)
    batch = get_task("digits-to-words").batch(NumberSplit().sample(np.random.default_rng(0), 32))
    opt = npp.AdamW(model, lr=3e-3)
    before = model(batch.source_ids, batch.source_mask, batch.target_ids).loss
    for _ in range(8):
        loss, grads = model.loss_and_grads(batch.source_ids, batch.source_mask, batch.target_ids)
        assert isinstance(loss, np.float32) and all(g.dtype == np.float32 for g in grads.values())
        opt.step(grads)
    assert model(batch.source_ids, batch.source_mask, batch.target_ids).loss < before - 0.5


def test_bad_input_to_the_backward_is_named():
    config = Seq2SeqConfig.for_task("words-to-digits", "autoregressive")
    model = PerceiverSeq2Seq.init(config, seed=0)
    batch = get_task("words-to-digits").batch([42, 7])
    with pytest.raises(ValueError, match="dropout_rng must be a numpy Generator"):
        model.loss_and_grads(batch.source_ids, batch.source_mask, batch.target_ids, dropout_rng=1)
    with pytest.raises(ValueError, match="target_ids are required"):
        model.loss_and_grads(batch.source_ids, batch.source_mask, None)
    with pytest.raises(ValueError, match=r"target_ids must have shape \(B, T\)"):
        model.loss_and_grads(batch.source_ids, batch.source_mask, batch.target_ids[:, :3])
    cache = {}
    model(batch.source_ids, batch.source_mask, batch.target_ids, cache=cache)
    with pytest.raises(ValueError, match=r"d_logits must be a float array of the logits' shape \(B, T, V\) = "
                                         r"\(2, 7, 13\), got float64 \(2, 7, 12\)"):
        model.backward(np.zeros((2, 7, 12)), cache)


def test_recording_a_cache_changes_no_output():
    """The forward with a cache (training) computes bit for bit what it computes without one."""
    for decoder in DECODERS:
        model = random_seq2seq(Seq2SeqConfig.for_task("words-to-digits", decoder), 5)
        batch = get_task("words-to-digits").batch([0, 42, 700005])
        plain = model(batch.source_ids, batch.source_mask, batch.target_ids)
        cached = model(batch.source_ids, batch.source_mask, batch.target_ids, cache={})
        assert np.array_equal(plain.logits, cached.logits) and plain.loss == cached.loss


# ---------------------------------------------------------------------- parity with torch autograd
#: ours may be this many times worse than torch's own float32 error against float64 on the same case
FACTOR = 4.0
#: torch's error below this counts as this much (a case where torch's round-off happened to cancel)
TORCH_FLOOR = 1e-6
#: and never worse than this, relative to max(1, max |g64|) of each tensor
ABS_BOUND = 1e-4
#: (config, our worst error, torch float32's worst error), for the summary
RESULTS: list[tuple[str, float, float]] = []

#: name -> (task, decoder, overrides of the recipe config). The recipe model itself, and variants: two decoder
#: layers, the queries decoder without its residual, other activations and head counts.
PARITY = {
    "recipe-d2w-autoregressive": ("digits-to-words", "autoregressive", {}),
    "recipe-d2w-queries": ("digits-to-words", "queries", {}),
    "recipe-w2d-autoregressive": ("words-to-digits", "autoregressive", {}),
    "recipe-w2d-queries": ("words-to-digits", "queries", {}),
    "w2d-2-layers-relu": ("words-to-digits", "autoregressive",
                          dict(num_decoder_layers=2, num_decoder_heads=2, hidden_act="relu")),
    "d2w-queries-no-residual-silu": ("digits-to-words", "queries",
                                     dict(decoder_use_query_residual=False, hidden_act="silu", num_decoder_heads=1)),
}


def parity_config(task: str, decoder: str, overrides: dict) -> Seq2SeqConfig:
    config = Seq2SeqConfig.for_task(task, decoder)
    encoder = dataclasses.replace(config.encoder, hidden_act=overrides.pop("hidden_act", "gelu"))
    return dataclasses.replace(config, encoder=encoder, **overrides)


@pytest.fixture(scope="module")
def reference():
    torch = pytest.importorskip("torch", reason="gradient parity needs torch")
    pytest.importorskip("transformers", reason="gradient parity needs transformers")
    import seq2seq_reference

    torch.set_num_threads(1)
    return seq2seq_reference


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max(1, max |ref|)."""
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def worst(grads: dict, ref: dict) -> tuple[float, str]:
    errors = {k: rel_error(grads[k], ref[k]) for k in ref}
    key = max(errors, key=errors.get)
    return errors[key], key


@functools.cache
def parity_case(name: str):
    task_name, decoder, overrides = PARITY[name]
    config = parity_config(task_name, decoder, dict(overrides))
    model = random_seq2seq(config, seed=len(name))
    batch = get_task(task_name).batch(NumberSplit().sample(np.random.default_rng(len(name)), 24))
    return model, batch


def torch_loss_and_grads(reference, twin, batch):
    import torch

    twin.zero_grad(set_to_none=True)
    loss = reference.loss_of(twin, *(torch.from_numpy(a) for a in (batch.source_ids, batch.source_mask,
                                                                   batch.target_ids)))
    loss.backward()
    return loss.item(), {k: p.grad.detach().numpy() for k, p in twin.named_parameters()}


@pytest.mark.parametrize("name", list(PARITY))
def test_loss_and_grads_match_torch_autograd(reference, name):
    """Ours (float32) and torch (float32) against torch in float64, on the recipe model and variants, a batch of
    the task with its source and target padding: the same loss, and every parameter's gradient."""
    model, batch = parity_case(name)
    loss, grads = model.loss_and_grads(batch.source_ids, batch.source_mask, batch.target_ids)
    assert not batch.source_mask.all() and (batch.target_ids == PAD_ID).any()  # padding on both sides
    twin32 = reference.TorchSeq2Seq(model.config).load_numpy(model.state_dict()).train()
    twin64 = copy.deepcopy(twin32).double()
    loss32, g32 = torch_loss_and_grads(reference, twin32, batch)
    loss64, g64 = torch_loss_and_grads(reference, twin64, batch)
    assert list(grads) == list(g64), "keys differ from the twin's named_parameters()"
    assert isinstance(loss, np.float32)
    assert abs(loss - loss64) <= FACTOR * max(abs(loss32 - loss64), 1e-7 * abs(loss64)), (loss, loss32, loss64)
    for key, g in grads.items():
        assert g.dtype == np.float32 and g.shape == g64[key].shape and np.all(np.isfinite(g)), key
    err, key = worst(grads, g64)
    torch_err, torch_key = worst(g32, g64)
    RESULTS.append((name, err, torch_err))
    assert err <= FACTOR * max(torch_err, TORCH_FLOOR), (
        f"{name}: worst error {err:.3g} ({key}) > {FACTOR} x torch float32's {torch_err:.3g} ({torch_key})")
    assert err <= ABS_BOUND, f"{name}: worst error {err:.3g} ({key})"


@pytest.mark.parametrize("decoder", DECODERS)
def test_adamw_training_run_matches_torch(reference, decoder):
    """Forward, backward and AdamW together, five steps on one batch, against the twin + torch.optim.AdamW:
    the losses agree at every step."""
    import torch

    model, batch = parity_case(f"recipe-d2w-{decoder}")
    model = PerceiverSeq2Seq(model.config, copy.deepcopy(model.params))
    twin = reference.TorchSeq2Seq(model.config).load_numpy(model.state_dict()).train()
    settings_ = dict(lr=2e-3, weight_decay=0.01)
    ours, theirs = npp.AdamW(model, **settings_), torch.optim.AdamW(twin.parameters(), **settings_)
    losses = []
    for _ in range(5):
        loss, grads = model.loss_and_grads(batch.source_ids, batch.source_mask, batch.target_ids)
        ours.step(grads)
        torch_loss, _ = torch_loss_and_grads(reference, twin, batch)
        theirs.step()
        losses.append((float(loss), torch_loss))
    ours_losses, torch_losses = np.array(losses).T
    assert torch_losses[-1] < torch_losses[0] - 0.1  # it learns
    np.testing.assert_allclose(ours_losses, torch_losses, rtol=2e-5)


def test_zz_worst_gradient_error_summary(capsys):
    """A report, not a check: the worst gradient errors over the torch comparisons above (runs last: pytest
    keeps file order)."""
    if not RESULTS:
        pytest.skip("no torch comparison ran in this session")
    name, err, _ = max(RESULTS, key=lambda r: r[1])
    worst_torch = max(r[2] for r in RESULTS)
    ratio = max(r[1] / max(r[2], TORCH_FLOOR) for r in RESULTS)
    with capsys.disabled():
        print(f"\nseq2seq gradient parity vs torch autograd (float64 reference), {len(RESULTS)} cases: worst error "
              f"ours {err:.2e} ({name}), torch float32 {worst_torch:.2e}; worst ratio ours/torch {ratio:.2f} "
              f"(bound {FACTOR:g}, asserted case by case above)")
