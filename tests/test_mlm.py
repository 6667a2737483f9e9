"""PerceiverForMaskedLM: parity with HF transformers 4.57.6, the HF quirks of the text path, and the API.

Parity: for each small random config, an HF ``PerceiverForMaskedLM`` in eval mode with every parameter
randomised (``hf_reference.randomize_``), loaded into npperceiver through ``from_state_dict``; every output
(logits, loss, each hidden state, each attention, encoder and decoder cross-attention) must satisfy
``max |ours - HF| <= 1e-5 * max(1, max |HF|)``. The parity tests skip without torch / transformers 4.57.x;
the property tests below them need neither.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import npperceiver as npp
from npperceiver.text import (
    MLM_DECODER_HEADS, PerceiverForMaskedLM, decoder_query, embedding_decoder, fill_mask, masked_lm_loss,
    mlm_param_shapes,
    perceiver_basic_decoder, text_preprocessor,
)

# name -> HF config. P = max_position_embeddings stays small (12-32): the decoder has P queries.
CONFIGS = {
    # spec section 9's small config
    "small": dict(num_latents=4, d_latents=16, d_model=8, num_blocks=2, num_self_attends_per_block=2,
                  num_self_attention_heads=2, num_cross_attention_heads=2, max_position_embeddings=12),
    # qk/v set, heads differ, no encoder query residual, wide cross MLP
    "qk8_v16_noresidual": dict(num_latents=6, d_latents=16, d_model=16, num_blocks=1, num_self_attends_per_block=3,
                               num_self_attention_heads=4, num_cross_attention_heads=2, qk_channels=8,
                               v_channels=16, use_query_residual=False, cross_attention_widening_factor=2,
                               max_position_embeddings=20),
    # "q" cross shape, 8 self heads, wide self MLP, tanh GELU (the decoder's MLP uses hidden_act too)
    "q_shape_gelu_new": dict(num_latents=5, d_latents=32, d_model=24, num_blocks=2, num_self_attends_per_block=1,
                             num_self_attention_heads=8, num_cross_attention_heads=4,
                             cross_attention_shape_for_attention="q", self_attention_widening_factor=2,
                             hidden_act="gelu_new", max_position_embeddings=32),
}
BATCH = 3  # row 0 never masked; row 1 padded; row 2 padded more (or fully masked in "all_masked")


def _mask(M: int, all_masked_row: bool = False) -> np.ndarray:
    mask = np.ones((BATCH, M), np.int64)
    mask[1, M - M // 3:] = 0
    mask[2, 2:] = 0
    if all_masked_row:
        mask[2] = 0
    return mask


def _labels(rng: np.random.Generator, P: int) -> np.ndarray:
    labels = rng.integers(0, 262, (BATCH, P))
    labels[rng.random((BATCH, P)) < 0.4] = -100
    return labels


def _head_mask(rng: np.random.Generator, cfg: dict, two_d: bool) -> np.ndarray:
    L, H = cfg["num_blocks"] * cfg["num_self_attends_per_block"], cfg["num_self_attention_heads"]
    hm = rng.random((L, H) if two_d else (H,)).astype(np.float32) + 0.5  # non-0/1 multipliers
    hm.flat[0] = 0.0  # and a silenced head
    return hm


# name -> (M relative to P, kwargs builder)
CASES = {
    "plain": ("short", lambda rng, cfg, M, P: {}),
    "full_length": ("full", lambda rng, cfg, M, P: {}),
    "attention_mask": ("short", lambda rng, cfg, M, P: {"attention_mask": _mask(M)}),
    "all_masked_row": ("short", lambda rng, cfg, M, P: {"attention_mask": _mask(M, all_masked_row=True).astype(bool)}),
    "head_mask_1d": ("short", lambda rng, cfg, M, P: {"head_mask": _head_mask(rng, cfg, two_d=False)}),
    "head_mask_2d": ("short", lambda rng, cfg, M, P: {"head_mask": _head_mask(rng, cfg, two_d=True)}),
    "labels": ("short", lambda rng, cfg, M, P: {"labels": _labels(rng, P)}),
    "everything": ("full", lambda rng, cfg, M, P: {"attention_mask": _mask(M).astype(np.float32),
                                                   "head_mask": _head_mask(rng, cfg, two_d=True),
                                                   "labels": _labels(rng, P)}),
}


# ====================================================================== parity with HF
def _hf():
    """torch and transformers, or a skip: parity needs transformers 4.57.x (head_mask is gone in 5.x)."""
    torch = pytest.importorskip("torch", reason="parity tests need torch")
    transformers = pytest.importorskip("transformers", reason="parity tests need transformers 4.57.x")
    if not transformers.__version__.startswith("4.57."):
        pytest.skip(f"parity tests target transformers 4.57.x (head_mask), found {transformers.__version__}")
    return torch, transformers


def _hf_reference():
    """tests/hf_reference.py, which imports torch at its top: imported only once ``_hf()`` has made the test
    skip where torch or transformers is missing (importing it first would make the test error instead)."""
    _hf()
    import hf_reference

    return hf_reference


@functools.lru_cache(maxsize=None)
def _pair(name: str):
    torch, transformers = _hf()
    from hf_reference import randomize_, seed_of

    cfg = CONFIGS[name]
    torch.manual_seed(seed_of("torch-mlm", name))
    hf = transformers.PerceiverForMaskedLM(transformers.PerceiverConfig(**cfg)).eval()
    randomize_(hf, np.random.default_rng(seed_of("weights-mlm", name)))
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return hf, PerceiverForMaskedLM.from_state_dict(npp.PerceiverConfig.from_dict(cfg), sd)


def _hf_call(hf, input_ids, **kwargs):
    import torch

    t = {k: None if v is None else torch.from_numpy(np.ascontiguousarray(v)) for k, v in kwargs.items()}
    with torch.no_grad():
        return hf(input_ids=torch.from_numpy(input_ids), output_attentions=True, output_hidden_states=True, **t)


def compare_mlm(hf_out, ours, rtol: float) -> float:
    """Every MLM output, entry by entry (see ``hf_reference.compare_outputs``); the worst relative error."""
    from hf_reference import compare_outputs

    return compare_outputs(hf_out, ours, "PerceiverForMaskedLM", rtol,
                           fields=("loss", "logits", "hidden_states", "attentions", "cross_attentions"),
                           single=("loss", "logits"))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_hf(name, case):
    ref = _hf_reference()
    hf, model = _pair(name)
    cfg, P = CONFIGS[name], CONFIGS[name]["max_position_embeddings"]
    rng = np.random.default_rng(ref.seed_of("inputs-mlm", name, case))
    length, build = CASES[case]
    M = P if length == "full" else P // 2 + 1
    input_ids = rng.integers(0, 262, (BATCH, M))
    kwargs = build(rng, cfg, M, P)
    ours = model(input_ids, output_attentions=True, output_hidden_states=True, **kwargs)
    compare_mlm(_hf_call(hf, input_ids, **kwargs), ours, ref.RTOL)
    assert len(ours.cross_attentions) == 2
    assert ours.cross_attentions[1].shape == (BATCH, MLM_DECODER_HEADS, P, cfg["num_latents"])


def test_parity_without_optional_outputs():
    torch, _ = _hf()
    hf, model = _pair("small")
    input_ids = np.arange(5, dtype=np.int64)[None] + 100
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(input_ids))
    ours = model(input_ids)
    assert ours.loss is None and ours.hidden_states is None and ours.attentions is None
    assert ours.cross_attentions is None
    np.testing.assert_allclose(ours.logits, ref.logits.numpy(), rtol=0, atol=1e-5 * max(1, ref.logits.abs().max()))


def test_every_label_ignored_gives_nan_like_hf():
    hf, model = _pair("small")
    input_ids = np.full((1, 4), 110)
    labels = np.full((1, 12), -100)
    assert math.isnan(_hf_call(hf, input_ids, labels=labels).loss.item())
    assert math.isnan(model(input_ids, labels=labels).loss)


def test_param_names_and_shapes_match_hf():
    hf, model = _pair("q_shape_gelu_new")
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    assert list(mlm_param_shapes(model.config).items()) == list(hf_shapes.items())  # same keys, same order
    assert list(model.state_dict()) == list(hf_shapes)


def test_hf_safetensors_checkpoint_loads_directly(tmp_path):
    """What a user with a Hub download does: ``save_pretrained`` writes the same files as the Hub repo
    (config.json + model.safetensors); npperceiver reads both without torch."""
    ref = _hf_reference()
    hf, _ = _pair("qk8_v16_noresidual")
    hf.save_pretrained(tmp_path, safe_serialization=True)
    config = npp.PerceiverConfig.from_json(tmp_path / "config.json")
    model = PerceiverForMaskedLM.from_state_dict(config, npp.load_weights(tmp_path / "model.safetensors"))
    input_ids = np.random.default_rng(0).integers(0, 262, (2, 9))
    ours, theirs = model(input_ids), _hf_call(hf, input_ids)
    assert ref.rel_error(ours.logits, theirs.logits.numpy()) <= ref.RTOL


def test_fill_mask_example_shape_like_hf_docs():
    """HF's documented example, on random weights: tokenise to max_length, mask input ids 52:61
    (" missing."), logits (1, P, 262), greedy prediction decoded from logits[0, 52:61]."""
    torch, transformers = _hf()
    cfg = dict(CONFIGS["small"], max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.PerceiverForMaskedLM(transformers.PerceiverConfig(**cfg)).eval()
    model = PerceiverForMaskedLM.from_state_dict(
        npp.PerceiverConfig.from_dict(cfg), {k: v.numpy() for k, v in hf.state_dict().items()})
    text = "This is an incomplete sentence where some words are missing."
    hf_tok, tok = transformers.PerceiverTokenizer(model_max_length=64), npp.PerceiverTokenizer(model_max_length=64)
    enc = tok(text, padding="max_length", return_tensors="np")
    hf_enc = hf_tok(text, padding="max_length", return_tensors="pt")
    assert tok.decode(enc["input_ids"][0, 52:61]) == " missing."
    enc["input_ids"][0, 52:61] = tok.mask_token_id
    hf_enc["input_ids"][0, 52:61] = hf_tok.mask_token_id
    ours = model(enc["input_ids"], attention_mask=enc["attention_mask"])
    with torch.no_grad():
        ref = hf(**hf_enc).logits
    assert ours.logits.shape == (1, 64, 262)
    predicted = ours.logits[0, 52:61].argmax(-1).tolist()
    assert predicted == ref[0, 52:61].argmax(-1).tolist()
    assert tok.decode(predicted) == hf_tok.decode(predicted)


# ====================================================================== properties (no torch needed)
@pytest.fixture(scope="module")
def model() -> PerceiverForMaskedLM:
    return PerceiverForMaskedLM.init(npp.PerceiverConfig.from_dict(CONFIGS["small"]), seed=3)


def _randomised(model: PerceiverForMaskedLM, seed: int) -> PerceiverForMaskedLM:
    """The same architecture with O(1) random weights everywhere (init's biases are 0 and its layer
    norms the identity, which would hide mistakes)."""
    rng = np.random.default_rng(seed)
    sd = {k: rng.standard_normal(v.shape).astype(np.float32) * (1.0 if v.ndim == 1 else 1 / math.sqrt(v.shape[-1]))
          for k, v in model.state_dict().items()}
    return PerceiverForMaskedLM.from_state_dict(model.config, sd)


@pytest.mark.parametrize("M", [1, 2, 5, 11, 12])
def test_logits_shape_does_not_depend_on_input_length(model, M):
    out = model(np.full((2, M), 110))
    assert out.logits.shape == (2, 12, 262) and out.logits.dtype == np.float32


def test_changing_a_padded_byte_changes_nothing(model):
    model = _randomised(model, 1)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 262, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[0, 6:] = 0
    mask[1, 3:] = 0
    labels = rng.integers(0, 262, (2, 12))
    base = model(ids, attention_mask=mask, labels=labels, output_hidden_states=True, output_attentions=True)
    other = ids.copy()
    other[mask == 0] = (ids[mask == 0] + 1 + rng.integers(0, 260, int((mask == 0).sum()))) % 262
    assert np.all(other[mask == 0] != ids[mask == 0])
    changed = model(other, attention_mask=mask, labels=labels, output_hidden_states=True, output_attentions=True)
    np.testing.assert_array_equal(changed.logits, base.logits)
    assert changed.loss == base.loss
    for a, b in zip(changed.hidden_states + changed.attentions + changed.cross_attentions,
                    base.hidden_states + base.attentions + base.cross_attentions):
        np.testing.assert_array_equal(a, b)
    # Control: a byte that is *not* padding does change the logits of its row.
    kept = ids.copy()
    kept[0, 1] = (kept[0, 1] + 7) % 262
    assert not np.allclose(model(kept, attention_mask=mask).logits[0], base.logits[0])


def test_padding_is_equivalent_to_a_shorter_input(model):
    """Pads with attention_mask 0 are inert: padding to a longer length gives the same logits
    (up to float32 summation order), which is why ``fill-mask`` does not pad."""
    model = _randomised(model, 2)
    ids = np.array([[4, 110, 3, 3, 111, 5]])
    padded = np.concatenate([ids, np.zeros((1, 6), np.int64)], axis=1)
    mask = np.concatenate([np.ones((1, 6)), np.zeros((1, 6))], axis=1)
    np.testing.assert_allclose(model(padded, attention_mask=mask).logits, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_decoder_ignores_the_input_padding_mask(model):
    """The HF quirk, proved: the decoder's output is a function of the latents alone. Whatever mask is
    handed to it as ``query_mask`` (here: every latent masked out), the output and probabilities are
    bit-identical to those without a mask, and the model's logits equal the decoder run on its latents."""
    model = _randomised(model, 3)
    ids = np.random.default_rng(1).integers(0, 262, (2, 7))
    mask = np.array([[1] * 7, [1, 1, 1, 0, 0, 0, 0]])
    out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    z = out.hidden_states[-1]  # the latents, (B, N, D)
    dec = model.params["perceiver"]["decoder"]
    query = decoder_query(dec, 2)
    free, free_probs = perceiver_basic_decoder(dec, query, z)
    block_all = np.full((2, 1, 1, z.shape[1]), npp.MASK_MIN, np.float32)  # would mask every latent
    masked, masked_probs = perceiver_basic_decoder(dec, query, z, query_mask=block_all)
    np.testing.assert_array_equal(masked, free)
    np.testing.assert_array_equal(masked_probs, free_probs)
    np.testing.assert_array_equal(out.cross_attentions[1], free_probs)
    emb = model.params["perceiver"]["input_preprocessor"]["embeddings"]["weight"]
    np.testing.assert_array_equal(out.logits, embedding_decoder(free, emb, model.params["embedding_decoder"]["bias"]))
    assert np.all(free_probs > 0)  # every query sees every latent, padded row included


def _naive_layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * w + b


def test_decoder_is_the_documented_cross_attention(model):
    """An independent reference of the MLM decoder, in float64 with a loop over heads: queries of width C
    from the position table, keys/values from the latents, 8 heads with query/key width 256 (32 per head),
    no query residual, an MLP with residual, then logits = output @ E.T + bias."""
    model = _randomised(model, 5)
    ids = np.random.default_rng(2).integers(0, 262, (2, 6))
    out = model(ids, output_hidden_states=True, output_attentions=True)
    z = out.hidden_states[-1].astype(np.float64)  # (B, N, D)
    flat = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    w = lambda name: flat[f"perceiver.decoder.decoding_cross_attention.{name}"]  # noqa: E731
    gelu = np.vectorize(lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))))
    pos = flat["perceiver.decoder.output_position_encodings.position_embeddings"]  # (P, C)
    q = _naive_layer_norm(pos, w("attention.self.layernorm1.weight"), w("attention.self.layernorm1.bias"))
    q = q @ w("attention.self.query.weight").T + w("attention.self.query.bias")  # (P, 256)
    assert q.shape[1] == 256
    C = pos.shape[1]
    for b in range(2):
        kv = _naive_layer_norm(z[b], w("attention.self.layernorm2.weight"), w("attention.self.layernorm2.bias"))
        k = kv @ w("attention.self.key.weight").T + w("attention.self.key.bias")  # (N, 256)
        v = kv @ w("attention.self.value.weight").T + w("attention.self.value.bias")  # (N, C)
        heads = []
        for h in range(8):
            s = q[:, 32 * h:32 * (h + 1)] @ k[:, 32 * h:32 * (h + 1)].T / math.sqrt(32)  # (P, N)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            np.testing.assert_allclose(out.cross_attentions[1][b, h], p, rtol=1e-4, atol=1e-6)
            heads.append(p @ v[:, C // 8 * h:C // 8 * (h + 1)])
        a = np.concatenate(heads, -1) @ w("attention.output.dense.weight").T + w("attention.output.dense.bias")
        y = _naive_layer_norm(a, w("layernorm.weight"), w("layernorm.bias"))
        y = gelu(y @ w("mlp.dense1.weight").T + w("mlp.dense1.bias")) @ w("mlp.dense2.weight").T + w("mlp.dense2.bias")
        logits = (y + a) @ flat["perceiver.input_preprocessor.embeddings.weight"].T + flat["embedding_decoder.bias"]
        np.testing.assert_allclose(out.logits[b], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())


def test_loss_matches_a_naive_cross_entropy(model):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((2, 12, 262)).astype(np.float32) * 3
    labels = rng.integers(0, 262, (2, 12))
    labels[0, :5] = -100
    terms = []
    for b in range(2):
        for p in range(12):
            if labels[b, p] != -100:
                row = logits[b, p].astype(np.float64)
                terms.append(math.log(sum(math.exp(v) for v in row)) - row[labels[b, p]])
    assert masked_lm_loss(logits, labels) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert masked_lm_loss(logits, labels).dtype == np.float32


def test_text_preprocessor_adds_positions(model):
    pre = model.params["perceiver"]["input_preprocessor"]
    ids = np.array([[4, 110, 5]])
    x, tokens = text_preprocessor(pre, ids)
    E, Pos = pre["embeddings"]["weight"], pre["position_embeddings"]["weight"]
    np.testing.assert_array_equal(tokens[0], np.stack([E[4], E[110], E[5]]))
    np.testing.assert_array_equal(x[0], np.stack([E[4] + Pos[0], E[110] + Pos[1], E[5] + Pos[2]]))


def test_init_is_seeded_and_hf_style():
    config = npp.PerceiverConfig.from_dict(CONFIGS["small"])
    a, b, c = (PerceiverForMaskedLM.init(config, seed=s) for s in (0, 0, 1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(mlm_param_shapes(config))
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["embedding_decoder.bias"] + sa["perceiver.embeddings.latents"].sum(),
                              sc["embedding_decoder.bias"] + sc["perceiver.embeddings.latents"].sum())
    assert np.all(sa["embedding_decoder.bias"] == 0)
    assert np.all(sa["perceiver.decoder.decoding_cross_attention.layernorm.weight"] == 1)
    table = sa["perceiver.input_preprocessor.embeddings.weight"]
    assert table.dtype == np.float32 and 0.015 < table.std() < 0.025  # N(0, initializer_range=0.02)


def test_language_perceiver_has_hfs_parameter_count():
    config = npp.load_preset("language-perceiver")
    shapes = mlm_param_shapes(config)
    assert len(shapes) == 73 + 24 * 16  # 26 self-attention layers instead of spec section 9's 2
    assert sum(math.prod(s) for s in shapes.values()) == 201_108_230  # HF's count (spec section 1)


def test_state_dict_round_trip_through_a_file(tmp_path, model):
    path = tmp_path / "mlm.safetensors"
    npp.save_weights(path, model.state_dict())
    again = PerceiverForMaskedLM.from_state_dict(model.config, npp.load_weights(path))
    ids = np.array([[4, 110, 3, 5]])
    np.testing.assert_array_equal(again(ids).logits, model(ids).logits)


def test_fill_mask_finds_every_span_and_ranks_predictions(model):
    model = _randomised(model, 6)
    ids = np.array([4, 3, 110, 3, 3, 3, 111, 3, 5])
    spans, filled = fill_mask(model, ids, top_k=4)
    assert [(s.start, s.stop) for s in spans] == [(1, 2), (3, 6), (7, 8)]
    logits = model(ids[None]).logits[0]
    masked = [1, 3, 4, 5, 7]
    np.testing.assert_array_equal(np.concatenate([s.greedy_ids for s in spans]), logits[masked].argmax(-1))
    np.testing.assert_array_equal(filled[masked], logits[masked].argmax(-1))
    np.testing.assert_array_equal(np.delete(filled, masked), np.delete(ids, masked))  # the rest is untouched
    for s in spans:
        assert s.top_ids.shape == s.top_probs.shape == (s.stop - s.start, 4)
        assert np.all(np.diff(s.top_probs, axis=-1) <= 0) and np.all(s.top_probs.sum(-1) <= 1 + 1e-6)
        row = logits[s.start].astype(np.float64)
        p = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        np.testing.assert_allclose(s.top_probs[0], np.sort(p)[::-1][:4], rtol=1e-5)
    assert fill_mask(model, np.array([4, 110, 5]))[0] == []


# ---------------------------------------------------------------------- errors
def test_d_model_must_split_over_eight_heads():
    config = npp.PerceiverConfig.from_dict(dict(CONFIGS["small"], d_model=12))
    with pytest.raises(ValueError, match="d_model divisible by 8.*got d_model=12"):
        PerceiverForMaskedLM.init(config)


@pytest.mark.parametrize("ids, pattern", [
    (np.full((1, 13), 110), "13 tokens.*max_position_embeddings=12"),
    (np.array([110, 111]), r"shape \(B, M\).*wrap a single sequence"),
    (np.array([[110, 262]]), r"\[0, vocab_size=262\), found 262"),
    (np.array([[110, -1]]), "found -1"),
    (np.array([[110.0, 111.0]]), "input_ids must be integers"),
    (np.zeros((1, 0), np.int64), "B, M >= 1"),
])
def test_bad_input_ids_are_rejected(model, ids, pattern):
    with pytest.raises(ValueError, match=pattern):
        model(ids)


@pytest.mark.parametrize("labels, pattern", [
    (np.zeros((1, 4), np.int64), r"labels must have shape \(B, P\) = \(1, 12\)"),
    (np.full((1, 12), 262), "found 262"),
    (np.full((1, 12), -5), "found -5"),
])
def test_bad_labels_are_rejected(model, labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        model(np.full((1, 4), 110), labels=labels)


def test_bad_masks_are_rejected(model):
    with pytest.raises(ValueError, match="attention_mask"):
        model(np.full((1, 4), 110), attention_mask=np.ones((1, 5)))
    with pytest.raises(ValueError, match="head_mask"):
        model(np.full((1, 4), 110), head_mask=np.ones(3))


def test_from_state_dict_names_missing_and_misshapen_keys(model):
    sd = dict(model.state_dict())
    del sd["embedding_decoder.bias"]
    sd["perceiver.decoder.output_position_encodings.position_embeddings"] = np.zeros((5, 8), np.float32)
    with pytest.raises(ValueError, match="embedding_decoder.bias.*output_position_encodings"):
        PerceiverForMaskedLM.from_state_dict(model.config, sd)
    encoder_only = npp.PerceiverModel.init(model.config).state_dict()
    with pytest.raises(ValueError, match="missing"):
        PerceiverForMaskedLM.from_state_dict(model.config, encoder_only)
