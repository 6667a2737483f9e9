"""PerceiverModel's public API: construction, outputs, dtypes, mask/input validation, state dicts."""

import numpy as np
import pytest

import npperceiver as npp
from npperceiver.config import PerceiverConfig

CFG = PerceiverConfig(num_latents=5, d_latents=16, d_model=8, num_blocks=2, num_self_attends_per_block=3,
                      num_self_attention_heads=4, num_cross_attention_heads=2)
B, M = 2, 7


@pytest.fixture(scope="module")
def model():
    return npp.PerceiverModel.init(CFG, seed=1)


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((B, M, CFG.d_model)).astype(np.float32)


def test_outputs_shapes_counts_and_dtypes(model, x):
    out = model(x, output_attentions=True, output_hidden_states=True)
    N, D, S, NB = CFG.num_latents, CFG.d_latents, CFG.num_self_attends_per_block, CFG.num_blocks
    assert out.last_hidden_state.shape == (B, N, D)
    assert len(out.hidden_states) == NB * (S + 1)  # HF: block inputs + end of block, no raw latents
    assert len(out.attentions) == NB * S and len(out.cross_attentions) == 1
    assert all(a.shape == (B, CFG.num_self_attention_heads, N, N) for a in out.attentions)
    assert out.cross_attentions[0].shape == (B, CFG.num_cross_attention_heads, N, M)
    arrays = [out.last_hidden_state, *out.hidden_states, *out.attentions, *out.cross_attentions]
    assert all(a.dtype == np.float32 for a in arrays)
    # The end-of-block state is recorded twice (end of block b, start of block b+1), and last == final.
    assert np.array_equal(out.hidden_states[S], out.hidden_states[S + 1])
    assert np.array_equal(out.hidden_states[-1], out.last_hidden_state)


def test_optional_outputs_are_none_unless_asked(model, x):
    out = model(x)
    assert out.hidden_states is None and out.attentions is None and out.cross_attentions is None


def test_float64_and_int_inputs_give_float32(model, x):
    assert model(x.astype(np.float64)).last_hidden_state.dtype == np.float32
    assert model(np.ones((1, 3, CFG.d_model), np.int64)).last_hidden_state.dtype == np.float32


def test_forward_mutates_nothing(model, x):
    am = np.array([[1, 1, 0, 1, 0, 1, 1], [1] * M], np.float32)
    lm = np.array([[1, 0, 1, 1, 1], [1] * 5])
    hm = np.ones((CFG.num_self_attention_layers, 4), np.float32)
    before = [a.copy() for a in (x, am, lm, hm)]
    params_before = {k: v.copy() for k, v in model.state_dict().items()}
    model(x, attention_mask=am, latent_mask=lm, head_mask=hm, output_attentions=True, output_hidden_states=True)
    assert all(np.array_equal(a, b) for a, b in zip((x, am, lm, hm), before))
    assert all(np.array_equal(v, params_before[k]) for k, v in model.state_dict().items())


def test_output_does_not_alias_inputs_or_latents(model, x):
    out = model(x, output_hidden_states=True)
    out.last_hidden_state[...] = 0
    assert np.any(model(x).last_hidden_state != 0)


def test_state_dict_round_trip(model, x):
    sd = model.state_dict()
    assert list(sd) == list(npp.param_shapes(CFG))
    assert all(v.dtype == np.float32 and v.shape == npp.param_shapes(CFG)[k] for k, v in sd.items())
    again = npp.PerceiverModel.from_state_dict(CFG, sd)
    assert np.array_equal(again(x).last_hidden_state, model(x).last_hidden_state)
    prefixed = npp.PerceiverModel.from_state_dict(CFG, {"perceiver." + k: v for k, v in sd.items()})
    assert np.array_equal(prefixed(x).last_hidden_state, model(x).last_hidden_state)
    sd64 = {k: v.astype(np.float64) for k, v in sd.items()}  # converted, and copied
    loaded = npp.PerceiverModel.from_state_dict(CFG, sd64)
    assert all(v.dtype == np.float32 for v in loaded.state_dict().values())
    sd64["embeddings.latents"][:] = 0
    assert np.any(loaded.state_dict()["embeddings.latents"] != 0)


def test_from_state_dict_is_strict_and_lists_problems(model):
    sd = dict(model.state_dict())
    del sd["encoder.cross_attention.mlp.dense1.bias"]
    sd["encoder.self_attends.0.attention.self.query.weight"] = np.zeros((3, 3), np.float32)
    sd["decoder.extra"] = np.zeros(2, np.float32)
    with pytest.raises(ValueError) as e:
        npp.PerceiverModel.from_state_dict(CFG, sd)
    msg = str(e.value)
    assert "missing 1 key(s): encoder.cross_attention.mlp.dense1.bias" in msg
    assert "unexpected 1 key(s)" in msg and "decoder.extra" in msg
    assert "encoder.self_attends.0.attention.self.query.weight: expected (16, 16), got (3, 3)" in msg
    good = dict(model.state_dict(), **{"decoder.extra": np.zeros(2, np.float32)})
    npp.PerceiverModel.from_state_dict(CFG, good, strict=False)  # unexpected keys ignored on request


def test_init_is_seeded_and_hf_style():
    a, b = npp.PerceiverModel.init(CFG, seed=3), npp.PerceiverModel.init(CFG, seed=3)
    c = npp.PerceiverModel.init(CFG, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["embeddings.latents"], sc["embeddings.latents"])
    big = npp.PerceiverModel.init(npp.load_preset("small"), seed=0).state_dict()
    w = np.concatenate([v.ravel() for k, v in big.items() if k.endswith("weight") and "layernorm" not in k])
    assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002  # N(0, initializer_range)
    assert all(np.all(v == 1) for k, v in big.items() if "layernorm" in k and k.endswith("weight"))
    assert all(np.all(v == 0) for k, v in big.items() if k.endswith("bias"))


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(attention_mask=np.ones((B, M + 1))), r"attention_mask must have shape \(B, M\) = \(2, 7\), got \(2, 8\)"),
    (dict(attention_mask=np.ones(M)), r"attention_mask must have shape \(B, M\)"),
    (dict(attention_mask=np.full((B, M), 0.5)), "attention_mask must contain only 0 and 1"),
    (dict(attention_mask=np.full((B, M), -1)), "attention_mask must contain only 0 and 1"),
    (dict(attention_mask=np.array([["a"] * M] * B)), "attention_mask must be a bool or numeric"),
    (dict(latent_mask=np.ones((B, 4))), r"latent_mask must have shape \(B, N\) = \(2, 5\), got \(2, 4\)"),
    (dict(latent_mask=np.full((B, 5), 2)), "latent_mask must contain only 0 and 1"),
    (dict(head_mask=np.ones(3)), r"head_mask must have shape \(Hs,\) = \(4,\) or \(L, Hs\) = \(6, 4\)"),
    (dict(head_mask=np.ones((3, 4))), r"head_mask must have shape .* got \(3, 4\)"),
    (dict(head_mask=np.array([1, np.nan, 1, 1])), "head_mask must contain only finite values"),
])
def test_bad_masks_are_rejected_with_their_name(model, x, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        model(x, **kwargs)


@pytest.mark.parametrize("inputs,pattern", [
    (np.zeros((B, M, 9), np.float32), r"last dimension must equal config.d_model \(8\), got 9"),
    (np.zeros((M, 8), np.float32), r"inputs must have shape \(B, M, C\)"),
    (np.zeros((B, 0, 8), np.float32), "at least one batch row and one input"),
    (np.array([[["x"] * 8]]), "inputs must be a real-valued array"),
])
def test_bad_inputs_are_rejected(model, inputs, pattern):
    with pytest.raises(ValueError, match=pattern):
        model(inputs)


def test_bool_and_int_masks_equal_float_masks(model, x):
    am = np.array([[1, 1, 0, 1, 0, 1, 1], [0, 1, 1, 1, 1, 1, 0]])
    ref = model(x, attention_mask=am.astype(np.float32)).last_hidden_state
    assert np.array_equal(model(x, attention_mask=am.astype(bool)).last_hidden_state, ref)
    assert np.array_equal(model(x, attention_mask=am.tolist()).last_hidden_state, ref)


def test_masks_change_the_output(model, x):
    """Each mask is wired to something: a non-trivial mask changes the result."""
    ref = model(x).last_hidden_state
    am = np.ones((B, M)); am[:, :3] = 0
    lm = np.ones((B, 5)); lm[:, 0] = 0
    hm = np.ones(4); hm[1] = 0
    for kwargs in (dict(attention_mask=am), dict(latent_mask=lm), dict(head_mask=hm)):
        assert not np.allclose(model(x, **kwargs).last_hidden_state, ref), kwargs


def test_model_rejects_a_non_config():
    with pytest.raises(ValueError, match="config must be a PerceiverConfig"):
        npp.PerceiverModel({"num_latents": 4}, {})
