"""The sequence-to-sequence Perceiver's forward pass: layout, masks (causal, source and target padding), greedy
decoding, the loss, and parity with its torch twin built from HF's modules."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npperceiver as npp
from npperceiver.masks import MASK_MIN
from npperceiver.seq2seq import (
    DECODERS, PerceiverSeq2Seq, Seq2SeqConfig, causal_mask, seq2seq_loss, seq2seq_param_shapes, shift_right,
)
from npperceiver.tasks import BOS_ID, EOS_ID, TASKS, NumberSplit, get_task
from npperceiver.text import mlm_param_shapes
from npperceiver.tokenizer import PAD_ID
from strategies import configs, keep_masks, seeds

MAX_T = 6  # target positions in the property tests
MAX_M = 7  # source bytes


# ---------------------------------------------------------------------- strategies
@st.composite
def seq2seq_configs(draw, decoder=None) -> Seq2SeqConfig:
    """A small valid config: any encoder the encoder's strategies draw, and a small decoder."""
    encoder = draw(configs(max_blocks=2, max_self_attends=1))
    encoder = dataclasses.replace(encoder, vocab_size=draw(st.integers(8, 20)), max_position_embeddings=MAX_M)
    decoder = decoder or draw(st.sampled_from(DECODERS))
    heads = draw(st.sampled_from([1, 2, 4]))
    return Seq2SeqConfig(
        encoder, decoder=decoder, target_vocab_size=draw(st.integers(4, 9)),
        max_target_length=draw(st.integers(2, MAX_T)),
        # E >= 4: a layernorm over 1 channel is constant, over 2 it keeps only a sign; neither could show a change
        d_decoder=heads * draw(st.integers(4 // heads, 4 // heads + 2)),
        num_decoder_layers=draw(st.integers(1, 2)) if decoder == "autoregressive" else 1,
        num_decoder_heads=heads, decoder_widening_factor=draw(st.integers(1, 2)),
        decoder_use_query_residual=draw(st.booleans()),
    )


def random_seq2seq(config: Seq2SeqConfig, seed: int) -> PerceiverSeq2Seq:
    """Random weights large enough for attention to be far from uniform (see ``strategies.random_model``)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in seq2seq_param_shapes(config).items():
        if ".layernorm" in key:
            value = (1.0 if key.endswith("weight") else 0.0) + 0.5 * rng.standard_normal(shape)
        elif key.endswith("bias"):
            value = 0.5 * rng.standard_normal(shape)
        elif key.endswith(".weight") and len(shape) == 2 and "embeddings" not in key:  # Linear (out, in)
            value = rng.standard_normal(shape) * math.sqrt(2.0 / shape[1])
        else:  # embeddings, positions, latents, output queries
            value = rng.standard_normal(shape)
        state[key] = value.astype(np.float32)
    return PerceiverSeq2Seq.from_state_dict(config, state)


@st.composite
def cases(draw, decoder=None, min_batch=1):
    """(model, source ids (B, M), source keep-mask (B, M) with a kept byte per row, target ids (B, T))."""
    config = draw(seq2seq_configs(decoder))
    model = random_seq2seq(config, draw(seeds()))
    B = draw(st.integers(min_batch, 3))
    M = draw(st.integers(1, MAX_M))
    ids = np.asarray(draw(st.lists(st.lists(st.integers(0, config.encoder.vocab_size - 1), min_size=M, max_size=M),
                                   min_size=B, max_size=B)), dtype=np.int64)
    keep = draw(keep_masks(B, M, min_kept=1, dtype=np.int64))  # (B, M) padding anywhere: end, start (left-padded)
    targets = np.asarray(draw(st.lists(st.lists(st.integers(3, config.target_vocab_size - 1),
                                                min_size=config.max_target_length,
                                                max_size=config.max_target_length),
                                       min_size=B, max_size=B)), dtype=np.int64)
    for row in range(B):  # [EOS] somewhere, [PAD] after it
        end = draw(st.integers(0, config.max_target_length - 1))
        targets[row, end], targets[row, end + 1:] = EOS_ID, PAD_ID
    return model, ids, keep, targets


def logits_of(model, ids, keep, targets):
    return model(ids, keep, targets).logits


# ---------------------------------------------------------------------- layout
def small_config(task_name="digits-to-words", decoder="autoregressive", **overrides) -> Seq2SeqConfig:
    task = get_task(task_name)
    encoder = npp.PerceiverConfig(num_latents=8, d_latents=16, d_model=12, num_blocks=2,
                                  num_self_attends_per_block=1, num_self_attention_heads=2,
                                  num_cross_attention_heads=1, vocab_size=262,
                                  max_position_embeddings=task.max_source_length)
    fields = dict(decoder=decoder, target_vocab_size=task.target_vocab.size,
                  max_target_length=task.max_target_length, d_decoder=8, num_decoder_layers=2,
                  num_decoder_heads=2, task=task_name)
    if decoder == "queries":
        fields["num_decoder_layers"] = 1
    return Seq2SeqConfig(encoder, **{**fields, **overrides})


def test_autoregressive_parameter_layout():
    config = small_config()
    shapes = seq2seq_param_shapes(config)
    model = PerceiverSeq2Seq.init(config, seed=0)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert all(v.dtype == np.float32 for v in model.state_dict().values())
    # The encoder is PerceiverForMaskedLM's, key for key (its decoder aside).
    mlm = {k: v for k, v in mlm_param_shapes(config.encoder).items() if k.startswith("perceiver.")
           and not k.startswith("perceiver.decoder.")}
    assert {k: v for k, v in shapes.items() if k.startswith("perceiver.")} == mlm
    E, V, T, D = 8, 33, 10, 16
    assert shapes["decoder.embeddings.weight"] == (V, E)
    assert shapes["decoder.position_embeddings.weight"] == (T, E)
    assert shapes["decoder.layers.1.self_attention.self.query.weight"] == (E, E)
    assert "decoder.layers.0.self_attention.self.layernorm2.weight" not in shapes  # self-attention: no LN2
    assert shapes["decoder.layers.0.cross_attention.attention.self.key.weight"] == (E, D)  # reads the latents
    assert shapes["decoder.layers.0.cross_attention.attention.self.layernorm2.weight"] == (D,)
    assert shapes["decoder.layers.0.cross_attention.mlp.dense1.weight"] == (E, E)
    assert shapes["decoder.lm_head.weight"] == (V, E) and shapes["decoder.layernorm.weight"] == (E,)
    assert not any(k.startswith("decoder.layers.2") for k in shapes)


def test_queries_parameter_layout():
    config = small_config("words-to-digits", "queries")
    shapes = seq2seq_param_shapes(config)
    E, V, T = 8, 13, 7
    decoder = {k: v for k, v in shapes.items() if k.startswith("decoder.")}
    assert decoder["decoder.output_position_encodings.position_embeddings"] == (T, E)
    assert decoder["decoder.decoding_cross_attention.attention.self.query.weight"] == (E, E)
    assert decoder["decoder.lm_head.weight"] == (V, E)
    assert not any("embeddings.weight" in k or "layers" in k for k in decoder)  # it reads no target token
    assert shapes["perceiver.input_preprocessor.position_embeddings.weight"] == (64, 12)


@pytest.mark.parametrize("change, message", [
    (dict(decoder="t5"), "decoder must be one of autoregressive, queries"),
    (dict(d_decoder=10, num_decoder_heads=4), r"d_decoder \(10\) must be divisible by num_decoder_heads \(4\)"),
    (dict(num_decoder_layers=0), "num_decoder_layers must be a positive integer"),
    (dict(target_vocab_size=2, task=None), "target_vocab_size must exceed"),
    (dict(max_target_length=9), "task 'digits-to-words' needs max_target_length=10"),
    (dict(task="sort"), "task must be one of"),
    (dict(decoder_use_query_residual=1), "decoder_use_query_residual must be a bool"),
])
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        small_config(**change)


def test_queries_decoder_has_one_layer_and_sources_must_fit():
    with pytest.raises(ValueError, match="num_decoder_layers must be 1"):
        small_config(decoder="queries", num_decoder_layers=2)
    short = dataclasses.replace(small_config().encoder, max_position_embeddings=5)
    with pytest.raises(ValueError, match="sources of up to 6 bytes"):
        dataclasses.replace(small_config(), encoder=short)


@pytest.mark.parametrize("decoder", DECODERS)
def test_config_round_trips_through_a_dict(decoder):
    config = small_config(decoder=decoder)
    assert Seq2SeqConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown Seq2SeqConfig field"):
        Seq2SeqConfig.from_dict({**config.to_dict(), "dropout": 0.1})


def test_causal_mask_and_shift_right():
    bias = causal_mask(3)
    assert bias.shape == (1, 1, 3, 3) and bias.dtype == np.float32
    assert (bias[0, 0] == np.array([[0, MASK_MIN, MASK_MIN], [0, 0, MASK_MIN], [0, 0, 0]], np.float32)).all()
    targets = np.array([[7, 8, EOS_ID, PAD_ID], [9, EOS_ID, PAD_ID, PAD_ID]])
    assert shift_right(targets).tolist() == [[BOS_ID, 7, 8, EOS_ID], [BOS_ID, 9, EOS_ID, PAD_ID]]


# ---------------------------------------------------------------------- the causal mask
@given(case=cases("autoregressive"), data=st.data())
def test_a_target_token_never_influences_earlier_positions(case, data):
    """Changing decoder input token t changes no logit at positions < t, bit for bit (every layer included)."""
    model, ids, keep, targets = case
    decoder_input = shift_right(targets)
    T = decoder_input.shape[1]
    t = data.draw(st.integers(0, T - 1), label="changed position")
    changed = decoder_input.copy()
    changed[:, t] = data.draw(st.integers(0, model.config.target_vocab_size - 1), label="new token")
    latents = model.encode(ids, keep)
    a, b = model.decode(latents, decoder_input), model.decode(latents, changed)
    assert np.array_equal(a[:, :t], b[:, :t])
    if (changed[:, t] != decoder_input[:, t]).any():
        assert not np.array_equal(a[:, t:], b[:, t:])  # the test can see a change where there is one


@given(case=cases("autoregressive"), data=st.data())
def test_a_prefix_gives_the_same_logits_as_the_whole_sequence(case, data):
    """What greedy decoding relies on: running the decoder on the first t+1 inputs gives the logits that the whole
    sequence gives at those positions (to float32 rounding: the matmuls are shorter)."""
    model, ids, keep, targets = case
    decoder_input = shift_right(targets)
    t = data.draw(st.integers(1, decoder_input.shape[1]), label="prefix length")
    latents = model.encode(ids, keep)
    whole, prefix = model.decode(latents, decoder_input), model.decode(latents, decoder_input[:, :t])
    np.testing.assert_allclose(prefix, whole[:, :t], rtol=1e-5, atol=1e-5 * max(1.0, np.abs(whole).max()))


@given(case=cases("autoregressive"), data=st.data())
def test_teacher_forcing_reads_bos_and_the_targets_before_each_position(case, data):
    """Teacher forcing is what decoding would see: the logits at position t are the decoder's on the prefix
    ``[BOS] y_1 .. y_t`` (built here without shift_right), to float32 rounding -- never a later target token."""
    model, ids, keep, targets = case
    t = data.draw(st.integers(0, targets.shape[1] - 1), label="position")
    prefix = np.concatenate([np.full((targets.shape[0], 1), BOS_ID), targets[:, :t]], axis=1)  # (B, t+1)
    forced = model(ids, keep, targets).logits[:, t]  # (B, V)
    alone = model.decode(model.encode(ids, keep), prefix)[:, t]  # (B, V)
    np.testing.assert_allclose(forced, alone, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(forced).max()))


# ---------------------------------------------------------------------- padding
@given(case=cases(), data=st.data())
def test_source_padding_never_influences_anything(case, data):
    """Any byte ids at padded source positions (mask 0): the same logits and latents, bit for bit."""
    model, ids, keep, targets = case
    noise = data.draw(st.lists(st.integers(0, model.config.encoder.vocab_size - 1), min_size=ids.size,
                               max_size=ids.size), label="new padding ids")
    changed = np.where(keep == 1, ids, np.asarray(noise).reshape(ids.shape))
    a, b = model(ids, keep, targets), model(changed, keep, targets)
    assert np.array_equal(a.latents, b.latents) and np.array_equal(a.logits, b.logits)


@given(case=cases(), data=st.data())
def test_more_source_padding_changes_nothing(case, data):
    """Padding a batch to a longer source length leaves the latents unchanged to float32 rounding (the sums are
    longer, so not bit for bit)."""
    model, ids, keep, targets = case
    B, M = ids.shape
    extra = data.draw(st.integers(1, MAX_M - M), label="extra padding") if M < MAX_M else 0
    padded = np.concatenate([ids, np.full((B, extra), 5)], axis=1)
    padded_keep = np.concatenate([keep, np.zeros((B, extra), np.int64)], axis=1)
    a, b = model(ids, keep, targets), model(padded, padded_keep, targets)
    scale = max(1.0, np.abs(a.logits).max())
    np.testing.assert_allclose(b.logits, a.logits, rtol=1e-5, atol=1e-5 * scale)


@given(case=cases(), data=st.data())
def test_target_padding_never_influences_the_real_positions_or_the_loss(case, data):
    """Tokens after [EOS] (padding, whatever its ids) change no logit at or before [EOS], and not the loss."""
    model, ids, keep, targets = case
    after_eos = np.cumsum(targets == EOS_ID, axis=1) - (targets == EOS_ID) > 0  # (B, T)
    noise = np.asarray(data.draw(st.lists(st.integers(0, model.config.target_vocab_size - 1),
                                          min_size=targets.size, max_size=targets.size)), dtype=np.int64)
    changed = np.where(after_eos, noise.reshape(targets.shape), targets)
    a, b = model(ids, keep, targets), model(ids, keep, changed)
    real = ~after_eos
    assert np.array_equal(a.logits[real], b.logits[real])
    if not np.array_equal(changed, targets):
        # the loss sees the same logits at the same labels; changed padding ids are not labels ([PAD] only is)
        changed_labels_only_pad = np.where(after_eos, PAD_ID, changed)
        assert seq2seq_loss(b.logits, changed_labels_only_pad) == a.loss


@given(case=cases(min_batch=2), data=st.data())
def test_batch_rows_are_independent(case, data):
    """Permuting the batch permutes the outputs (to float32 rounding): nothing leaks between examples."""
    model, ids, keep, targets = case
    perm = np.asarray(data.draw(st.permutations(range(ids.shape[0]))))
    a, b = model(ids, keep, targets), model(ids[perm], keep[perm], targets[perm])
    np.testing.assert_allclose(b.logits, a.logits[perm], rtol=1e-5, atol=1e-5 * max(1.0, np.abs(a.logits).max()))


@given(case=cases("queries"))
def test_the_queries_decoder_reads_no_target_token(case):
    model, ids, keep, targets = case
    a = model(ids, keep, targets).logits
    b = model(ids, keep).logits
    assert np.array_equal(a, b) and a.shape == (*targets.shape, model.config.target_vocab_size)
    with pytest.raises(ValueError, match="reads no target tokens"):
        model.decode(model.encode(ids, keep), targets)


# ---------------------------------------------------------------------- loss
@given(case=cases())
def test_loss_is_the_mean_cross_entropy_over_real_target_tokens(case):
    model, ids, keep, targets = case
    out = model(ids, keep, targets)
    logits = out.logits.astype(np.float64)
    total, count = 0.0, 0
    for b in range(targets.shape[0]):  # naive: one position at a time
        for t in range(targets.shape[1]):
            if targets[b, t] != PAD_ID:
                row = logits[b, t]
                total += math.log(np.exp(row - row.max()).sum()) + row.max() - row[targets[b, t]]
                count += 1
    assert out.loss.dtype == np.float32
    assert out.loss == pytest.approx(total / count, rel=1e-5, abs=1e-5)


# ---------------------------------------------------------------------- greedy decoding
@given(case=cases())
def test_greedy_decoding_is_the_argmax_of_its_own_teacher_forced_logits(case):
    """Fed back its own output as the target, the model's teacher-forced argmax reproduces that output up to its
    [EOS]: each token was the most likely one given the tokens before it, [PAD] and [BOS] excepted (they never
    stand before [EOS]). PAD after the first [EOS]."""
    model, ids, keep, _ = case
    out = model.generate(ids, keep)
    assert out.shape == (ids.shape[0], model.config.max_target_length) and out.dtype == np.int64
    assert np.array_equal(out, model.generate(ids, keep))  # deterministic
    ended = (out == EOS_ID).any(axis=1)
    for row in range(out.shape[0]):
        if ended[row]:
            eos = int(np.flatnonzero(out[row] == EOS_ID)[0])
            assert np.all(out[row, eos + 1:] == PAD_ID)
    assert not np.isin(out[~(np.cumsum(out == EOS_ID, axis=1) > 0)], [PAD_ID, BOS_ID]).any()  # before [EOS]
    logits = model(ids, keep, out).logits  # teacher-forced on its own output
    logits[..., [PAD_ID, BOS_ID]] = -np.inf  # (B, T, V): never chosen
    upto = np.cumsum(out == EOS_ID, axis=1) - (out == EOS_ID) == 0  # (B, T) positions up to the first [EOS]
    # Greedy decoding ran the decoder on prefixes: equal argmax unless two logits tie to float32 rounding.
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-4 * max(1.0, np.abs(logits[np.isfinite(logits)]).max())
    assert np.array_equal(logits.argmax(-1)[upto & clear], out[upto & clear])


@pytest.mark.parametrize("decoder", DECODERS)
def test_decoding_is_deterministic_and_ignores_the_rest_of_the_batch(decoder):
    config = small_config("words-to-digits", decoder)
    model = random_seq2seq(config, seed=3)
    task = get_task("words-to-digits")
    batch = task.batch(NumberSplit().sample(np.random.default_rng(0), 6))
    out = model.generate(batch.source_ids, batch.source_mask)
    again = PerceiverSeq2Seq.from_state_dict(config, model.state_dict()).generate(batch.source_ids, batch.source_mask)
    assert np.array_equal(out, again)
    alone = model.generate(batch.source_ids[2:3], batch.source_mask[2:3])
    assert np.array_equal(alone[0], out[2])


def test_bad_ids_are_named():
    model = PerceiverSeq2Seq.init(small_config(), seed=0)
    with pytest.raises(ValueError, match=r"source_ids must lie in \[0, 262\), found 300"):
        model.encode([[300]])
    with pytest.raises(ValueError, match="source_ids must have shape"):
        model.encode([[7] * 7])  # longer than the 6 source positions
    with pytest.raises(ValueError, match="target_ids must have shape"):
        model([[7]], None, [[3, 2]])
    with pytest.raises(ValueError, match="needs decoder_input_ids"):
        model.decode(model.encode([[7]]))
    with pytest.raises(ValueError, match="teacher-forced here"):
        model([[7]])


# ---------------------------------------------------------------------- parity with torch
RTOL = 1e-5  # as the encoder's parity tests: max |np - torch| <= RTOL * max(1, max |torch|)


@pytest.fixture(scope="module")
def reference():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import seq2seq_reference

    torch.set_num_threads(1)
    return seq2seq_reference


@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("decoder", DECODERS)
def test_parity_with_the_torch_twin(reference, task_name, decoder):
    import torch

    config = small_config(task_name, decoder, decoder_use_query_residual=decoder == "autoregressive")
    model = random_seq2seq(config, seed=11)
    twin = reference.TorchSeq2Seq(config).load_numpy(model.state_dict()).eval()
    assert list(twin.state_dict()) == list(model.state_dict())  # the same keys, in the same order
    task = get_task(task_name)
    batch = task.batch([0, 7, 42, 3412, 700005, 999999])  # padding in the sources and the targets
    source, keep, targets = (torch.from_numpy(a) for a in (batch.source_ids, batch.source_mask, batch.target_ids))
    out = model(batch.source_ids, batch.source_mask, batch.target_ids)
    with torch.no_grad():
        decoder_input = reference.shift_right(targets) if decoder == "autoregressive" else None
        logits = twin(source, keep, decoder_input).numpy()
        latents = twin.encode(source, keep).numpy()
        loss = float(reference.loss_of(twin, source, keep, targets))
    for ours, theirs in ((out.latents, latents), (out.logits, logits)):
        assert np.abs(ours - theirs).max() <= RTOL * max(1.0, np.abs(theirs).max())
    assert out.loss == pytest.approx(loss, rel=RTOL)
    assert np.array_equal(model.generate(batch.source_ids, batch.source_mask),
                          twin.generate(source, keep).numpy())


@pytest.mark.parametrize("task,decoder,count", [
    ("digits-to-words", "autoregressive", 142_113), ("digits-to-words", "queries", 123_233),
    ("words-to-digits", "autoregressive", 143_053), ("words-to-digits", "queries", 125_453),
])
def test_for_task_builds_the_recipe_of_the_docs(task, decoder, count):
    # the parameter counts docs/translation.md reports for the recipe (counted on its torch twin)
    config = Seq2SeqConfig.for_task(task, decoder)
    assert (config.task, config.decoder, config.encoder.num_latents) == (task, decoder, 32)
    assert sum(v.size for v in PerceiverSeq2Seq.init(config).state_dict().values()) == count


def test_for_task_refuses_unknown_names():
    with pytest.raises(ValueError, match="task"):
        Seq2SeqConfig.for_task("pig-latin")
    with pytest.raises(ValueError, match="decoder must be one of"):
        Seq2SeqConfig.for_task("digits-to-words", "beam")
