"""Shape inference: ``encoder_steps`` is the forward pass, step for step.

The trace is a small dataflow program (each step names the steps it reads, its residual and its mask).
:func:`run_trace` below *executes* it with npperceiver's primitives and a model's weights, one step at a
time, knowing nothing but the step's kind of operation. If that reproduces the model's own outputs, the
trace's wiring is the real computation; and every array it made must have the shape the trace announced.
This is what makes ``npperceiver explain`` and the diagrams trustworthy: they are drawn from this trace.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import configs, random_model
from test_seq2seq import random_seq2seq, seq2seq_configs

import npperceiver as npp
from npperceiver.attention import merge_heads, split_heads
from npperceiver.functional import ACT2FN, layer_norm, linear, softmax
from npperceiver.seq2seq import PerceiverSeq2Seq, Seq2SeqConfig, causal_mask
from npperceiver.tasks import BOS_ID, PAD_ID
from npperceiver.text import masked_lm_loss
from npperceiver.trace import STEP_KINDS, Step, encoder_steps, format_shape, mlm_steps, seq2seq_steps


def _param(state: dict, module: str) -> dict:
    return {"weight": state[f"{module}.weight"], "bias": state[f"{module}.bias"]}


def run_trace(steps: list[Step], model: npp.PerceiverModel, inputs, attention_mask, latent_mask, head_mask):
    """Execute the trace: each step computed from the values of the steps it names. Returns id -> array."""
    given_values = {"inputs/inputs": inputs, "masks/attention_mask": attention_mask,
                    "masks/latent_mask": latent_mask, "masks/head_mask": head_mask}
    return execute(steps, model.config, model.state_dict(), given_values, batch=inputs.shape[0])


def execute(steps: list[Step], cfg, state: dict, given_values: dict, batch: int, decoder_heads: int = 8) -> dict:
    """Run a trace (``encoder_steps``, ``mlm_steps`` or ``seq2seq_steps``, whose ``cfg`` is the encoder's)
    with the weights in ``state`` (HF key names); ``decoder_heads``: the heads of every decoder attention."""
    v: dict[str, np.ndarray] = {}
    for s in steps:
        x = [v[i] for i in s.inputs]
        what = s.id.rsplit("/", 1)[1]
        heads = {"cross": cfg.num_cross_attention_heads}.get(s.scope, cfg.num_self_attention_heads)
        if s.scope.startswith("decod"):  # the MLM's decoder; the translation decoder's layers
            heads = decoder_heads
        if s.kind in ("input", "mask") and not s.inputs:
            ids = s.id in ("text/input_ids", "source/source_ids", "target/target_ids")
            out = np.asarray(given_values[s.id], np.int64 if ids else np.float32)
        elif s.kind == "parameter":
            out = state[s.module]
        elif s.id in ("inputs/embeddings", "decoder_query/queries", "queries/queries"):
            out = np.broadcast_to(x[0], (batch, *x[0].shape))
        elif s.id in ("text/token_embeddings", "source/token_embeddings", "decoder_inputs/token_embeddings"):
            out = x[1][x[0]]  # rows of the embedding matrix
        elif s.id in ("text/inputs", "source/inputs", "decoder_inputs/inputs"):
            out = x[0] + x[1][: x[0].shape[1]]  # position m for token m
        elif s.id == "target/padding":
            out = x[0] == PAD_ID
        elif s.id == "decoder_inputs/decoder_input_ids":  # [BOS], then all but the last target token
            out = np.concatenate([np.full((x[0].shape[0], 1), BOS_ID), x[0][:, :-1]], axis=1)
        elif s.id == "loss/labels":
            out = np.where(v[s.mask_source], -100, x[0])
        elif s.id == "loss/loss":
            out = np.asarray(masked_lm_loss(*x))
        elif s.id == "embedding_decoder/logits":
            out = linear(x[0], x[1], x[2])  # the token embedding as the weight
        elif s.module == "invert_attention_mask":
            out = npp.invert_attention_mask(x[0])
        elif s.module == "get_head_mask":
            out = npp.get_head_mask(x[0], cfg.num_self_attention_heads, cfg.num_self_attention_layers)
        elif what in ("layernorm1", "layernorm2", "layernorm"):
            out = layer_norm(x[0], **_param(state, s.module))
        elif what in ("query", "key", "value", "output", "mlp_dense1", "mlp_dense2", "lm_head"):
            out = linear(x[0], **_param(state, s.module))
        elif what.startswith("split_"):
            out = split_heads(x[0], heads)
        elif what == "scores":
            q, k = x
            out = (q @ k.swapaxes(-1, -2)) / np.float32(math.sqrt(q.shape[-1]))
        elif what in ("inputs_mask", "attention_mask", "causal_mask"):
            out = x[0] + v[s.mask_source]
        elif what == "softmax":
            out = softmax(x[0])
        elif what == "head_mask":
            out = x[0] * v[s.mask_source][s.layer]  # the row the step names
        elif what == "context":
            out = x[0] @ x[1]
        elif what == "merge_heads":
            out = merge_heads(x[0])
        elif what == "mlp_act":
            out = ACT2FN[cfg.hidden_act](x[0])
        elif what in ("query_residual", "residual"):
            out = x[0] + v[s.residual]
        elif s.kind == "output":
            out = x[0]
        else:  # pragma: no cover - a step this test does not know must fail loudly
            raise AssertionError(f"unknown step {s.id}")
        v[s.id] = out
    return v


def _case(config, B, M, seed):
    rng = np.random.default_rng(seed)
    model = random_model(config, seed)
    x = rng.standard_normal((B, M, config.d_model)).astype(np.float32)
    am = (rng.random((B, M)) < 0.7).astype(np.float32)
    am[:, 0] = 1
    lm = (rng.random((B, config.num_latents)) < 0.7).astype(np.float32)
    lm[:, 0] = 1
    hm = rng.random((config.num_self_attention_layers, config.num_self_attention_heads)).astype(np.float32)
    return model, x, am, lm, hm


def _check_against_model(config, B, M, seed):
    model, x, am, lm, hm = _case(config, B, M, seed)
    steps = encoder_steps(config, batch=B, seq_len=M)
    values = run_trace(steps, model, x, am, lm, hm)
    # Every step's array has the shape the trace announced.
    wrong = {s.id: (s.shape, values[s.id].shape) for s in steps if tuple(values[s.id].shape) != s.shape}
    assert not wrong, wrong
    # And running the trace is running the model: same output, same attention probabilities.
    out = model(x, attention_mask=am, latent_mask=lm, head_mask=hm, output_attentions=True)
    np.testing.assert_allclose(values["output/last_hidden_state"], out.last_hidden_state, rtol=1e-5, atol=1e-5)
    probs = [values[s.id] for s in steps if s.kind == "op" and s.id.endswith("/head_mask")]
    assert len(probs) == len(out.attentions)
    for mine, theirs in zip(probs, out.attentions):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values["cross/softmax"], out.cross_attentions[0], rtol=1e-5, atol=1e-6)


@given(config=configs(), B=st.integers(1, 3), M=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_trace_is_the_forward_pass(config, B, M, seed):
    _check_against_model(config, B, M, seed)


def test_trace_is_the_forward_pass_of_the_small_preset():
    _check_against_model(npp.load_preset("small"), B=2, M=5, seed=0)


# ---------------------------------------------------------------------------- structure of the trace
@given(config=configs())
def test_trace_is_well_formed(config):
    steps = encoder_steps(config)
    ids = [s.id for s in steps]
    assert len(ids) == len(set(ids))
    seen: set[str] = set()
    for s in steps:  # a dataflow program in order: every step reads only what came before it
        assert s.kind in STEP_KINDS
        for ref in (*s.inputs, s.residual, s.mask_source):
            assert ref is None or ref in seen, (s.id, ref)
        seen.add(s.id)
    S, NB = config.num_self_attends_per_block, config.num_blocks
    layers = {(s.block, s.layer) for s in steps if s.layer is not None}
    assert layers == {(b, i) for b in range(NB) for i in range(S)}
    # Masks act exactly where HF applies them.
    acting = [(s.scope, s.mask) for s in steps if s.mask]
    expected = [("cross", "inputs_mask")]
    for b in range(NB):
        for i in range(S):
            expected += [(f"block{b}/self{i}", "attention_mask"), (f"block{b}/self{i}", f"head_mask[{i}]")]
    assert acting == expected
    # The query residual of the cross-attention exists only with use_query_residual.
    assert ("cross/query_residual" in ids) == config.use_query_residual
    assert all(f"block{b}/self{i}/query_residual" in ids for b in range(NB) for i in range(S))


def test_symbolic_and_numeric_sizes():
    cfg = npp.load_preset("small")
    sym = {s.id: s for s in encoder_steps(cfg)}
    assert sym["inputs/inputs"].shape == ("B", "M", 24)
    assert sym["cross/scores"].shape == ("B", 2, 16, "M")  # (B, Hc, N, M)
    assert sym["block1/self0/scores"].shape == ("B", 4, 16, 16)  # (B, Hs, N, N)
    assert format_shape(sym["masks/inputs_mask"].shape) == "(B, 1, 1, M)"
    num = {s.id: s for s in encoder_steps(cfg, batch=3, seq_len=7)}
    assert num["cross/split_key"].shape == (3, 2, 7, 12)
    assert num["masks/head_mask"].shape == (4, 4)  # (L, Hs), L = 2 blocks x 2 layers


def test_language_perceiver_widths():
    cfg = npp.load_preset("language-perceiver")
    steps = {s.id: s for s in encoder_steps(cfg, seq_len=2048)}
    assert steps["cross/query"].shape == ("B", 256, 256)  # qk_channels 256
    assert steps["cross/split_query"].shape == ("B", 8, 256, 32)  # 32 per head
    assert steps["cross/value"].shape == ("B", 2048, 1280)  # v_channels 1280
    assert steps["cross/split_value"].shape == ("B", 8, 2048, 160)
    assert steps["cross/scores"].op == "query @ key^T / sqrt(32)"  # scaled by the qk head width
    assert steps["block0/self25/head_mask"].mask == "head_mask[25]"
    assert len([s for s in steps.values() if s.id.endswith("/softmax")]) == 27


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, ""])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(ValueError, match="batch"):
        encoder_steps(npp.load_preset("small"), batch=bad)
    with pytest.raises(ValueError, match="seq_len"):
        encoder_steps(npp.load_preset("small"), seq_len=bad)


# ---------------------------------------------------------------------------- the masked language model
MLM_CONFIGS = {
    "small": {},  # d_model 24: the decoder's 8 heads get 3 channels each
    "one block, qk/v set, no query residual": dict(num_blocks=1, num_self_attends_per_block=3, qk_channels=16,
                                                   v_channels=32, use_query_residual=False, d_model=16,
                                                   num_latents=5, max_position_embeddings=9, vocab_size=40),
}


@pytest.mark.parametrize("name", sorted(MLM_CONFIGS))
def test_mlm_trace_is_the_masked_lm_forward_pass(name):
    """Executing ``mlm_steps`` with a real PerceiverForMaskedLM's weights gives its logits and attentions,
    and every array has the announced shape; the shapes match the model's own outputs."""
    cfg = npp.PerceiverConfig(**{**npp.load_preset("small").to_dict(), **MLM_CONFIGS[name]})
    B, M = 2, 5
    model = npp.PerceiverForMaskedLM.init(cfg, seed=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (B, M))
    am = np.ones((B, M), np.float32)
    am[1, 3:] = 0  # the second row is padded
    hm = rng.random((cfg.num_self_attention_layers, cfg.num_self_attention_heads)).astype(np.float32)
    steps = mlm_steps(cfg, batch=B, seq_len=M)
    values = execute(steps, cfg, model.state_dict(),
                     {"text/input_ids": ids, "masks/attention_mask": am, "masks/head_mask": hm}, batch=B)
    wrong = {s.id: (s.shape, values[s.id].shape) for s in steps if tuple(values[s.id].shape) != s.shape}
    assert not wrong, wrong

    out = model(ids, attention_mask=am, head_mask=hm, output_attentions=True, output_hidden_states=True)
    P, V, N, D = cfg.max_position_embeddings, cfg.vocab_size, cfg.num_latents, cfg.d_latents
    by_id = {s.id: s for s in steps}
    assert by_id["output/logits"].shape == out.logits.shape == (B, P, V)
    np.testing.assert_allclose(values["output/logits"], out.logits, rtol=1e-4, atol=1e-4)
    assert by_id["output/last_hidden_state"].shape == out.hidden_states[-1].shape == (B, N, D)
    # Encoder self-attention probabilities, then the two cross-attentions: encoder (B, Hc, N, M), decoder.
    probs = [s for s in steps if s.kind == "op" and s.id.endswith("/head_mask")]
    assert [s.shape for s in probs] == [a.shape for a in out.attentions]
    for s, theirs in zip(probs, out.attentions):
        np.testing.assert_allclose(values[s.id], theirs, rtol=1e-5, atol=1e-6)
    assert [by_id["cross/softmax"].shape, by_id["decoder/softmax"].shape] == [a.shape for a in out.cross_attentions]
    assert by_id["decoder/softmax"].shape == (B, 8, P, N)
    np.testing.assert_allclose(values["decoder/softmax"], out.cross_attentions[1], rtol=1e-5, atol=1e-6)
    # The hidden states the model returns are the block inputs and outputs the trace passes through.
    assert all(h.shape == (B, N, D) for h in out.hidden_states)


def test_mlm_trace_structure():
    cfg = npp.load_preset("language-perceiver")
    steps = mlm_steps(cfg, seq_len=2048)
    by_id = {s.id: s for s in steps}
    # The preprocessor feeds the encoder; the decoder's queries do not depend on the input.
    assert "inputs/inputs" not in by_id
    assert by_id["cross/layernorm2"].inputs == ("text/inputs",)
    assert by_id["text/inputs"].shape == ("B", 2048, 768)
    assert len(by_id) == len(steps)  # ids are unique
    assert by_id["decoder_query/queries"].inputs == ("decoder_query/output_position_encodings",)
    assert by_id["decoder_query/queries"].shape == ("B", 2048, 768)
    assert by_id["decoder/layernorm1"].inputs == ("decoder_query/queries",)
    # The decoder: 8 heads, query/key 256 (32 per head), value d_model, keys and values from the latents.
    assert by_id["decoder/split_query"].shape == ("B", 8, 2048, 32)
    assert by_id["decoder/split_value"].shape == ("B", 8, 256, 96)
    assert by_id["decoder/key"].inputs == ("decoder/layernorm2",)
    assert by_id["decoder/layernorm2"].inputs == ("output/last_hidden_state",)
    assert "decoder/query_residual" not in by_id and "query_mask" in by_id["decoder/softmax"].note
    # Masks: the padding mask in the encoder's cross-attention only; head_mask in every self-attention layer;
    # no latent mask and nothing in the decoder.
    assert [(s.scope, s.mask) for s in steps if s.mask][:2] == [("cross", "inputs_mask"),
                                                               ("block0/self0", "head_mask[0]")]
    assert not any(s.mask for s in steps if s.scope == "decoder")
    assert "masks/latent_mask" not in by_id and not any(s.mask == "attention_mask" for s in steps)
    # The token embedding is read twice: looked up, and transposed by the embedding decoder.
    assert [s.id for s in steps if "text/embeddings" in s.inputs] == ["text/token_embeddings",
                                                                      "embedding_decoder/logits"]
    assert by_id["embedding_decoder/logits"].shape == ("B", 2048, 262)
    # HF module paths
    assert by_id["cross/query"].module == "perceiver.encoder.cross_attention.attention.self.query"
    assert by_id["decoder/output"].module == "perceiver.decoder.decoding_cross_attention.attention.output.dense"
    assert by_id["inputs/latents"].module == "perceiver.embeddings.latents"


def test_mlm_trace_refuses_unsuitable_configs():
    cfg = npp.load_preset("small")
    with pytest.raises(ValueError, match="d_model divisible by 8"):
        mlm_steps(npp.PerceiverConfig(**{**cfg.to_dict(), "d_model": 20}))
    with pytest.raises(ValueError, match="max_position_embeddings = 64"):
        mlm_steps(cfg, seq_len=65)
    assert mlm_steps(cfg, seq_len=64)[-1].shape == ("B", 64, 262)


# ---------------------------------------------------------------------------- HF itself
@pytest.mark.parametrize("name", ["small", "qk-set"])
def test_module_paths_and_shapes_match_hf(name):
    """Every step that names a real HF submodule has the shape that submodule outputs in HF."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = npp.load_preset("small")
    if name == "qk-set":
        cfg = npp.PerceiverConfig(**{**cfg.to_dict(), "qk_channels": 8, "v_channels": 32, "num_blocks": 1,
                                     "use_query_residual": False, "cross_attention_widening_factor": 2})
    hf_cfg = transformers.PerceiverConfig(**{k: v for k, v in cfg.to_dict().items()})
    model = transformers.PerceiverModel(hf_cfg).eval()
    shapes: dict[str, tuple] = {}

    def record(name):
        def hook(module, args, out):  # first call only: the self-attention layers run once per block
            out = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(out, torch.Tensor):
                shapes.setdefault(name, tuple(out.shape))
        return hook

    for mname, module in model.named_modules():
        if mname:
            module.register_forward_hook(record(mname))
    B, M = 2, 5
    with torch.no_grad():
        model(inputs=torch.randn(B, M, cfg.d_model))
    # The last step naming a module is that module's output (earlier ones are steps inside it).
    last = {s.module: s for s in encoder_steps(cfg, batch=B, seq_len=M) if s.block in (None, 0) and s.kind == "op"}
    hf_named = {m: s for m, s in last.items() if m in shapes}
    assert {m: shapes[m] for m in hf_named} == {m: s.shape for m, s in hf_named.items()}
    S = cfg.num_self_attends_per_block
    # embeddings; per layer 5 Linears, 2 LayerNorms (3 in the cross), the activation, the attention core, the
    # PerceiverAttention (only with a query residual: it is the last step there) and the layer itself.
    assert len(hf_named) == 1 + (12 + cfg.use_query_residual) + 12 * S


# ---------------------------------------------------------------------------- the translation model
SEQ2SEQ_CONFIGS = {
    "autoregressive, two layers": dict(decoder="autoregressive", num_decoder_layers=2),
    "queries": dict(decoder="queries"),
    "queries, no query residual": dict(decoder="queries", decoder_use_query_residual=False),
}


def _seq2seq_config(**decoder) -> Seq2SeqConfig:
    encoder = npp.PerceiverConfig(num_latents=5, d_latents=12, d_model=8, num_blocks=2, num_self_attends_per_block=1,
                                  num_self_attention_heads=3, num_cross_attention_heads=2, vocab_size=262,
                                  max_position_embeddings=9)
    return Seq2SeqConfig(encoder, target_vocab_size=11, max_target_length=6, d_decoder=8, num_decoder_heads=2,
                         decoder_widening_factor=2, **decoder)


@pytest.mark.parametrize("name", sorted(SEQ2SEQ_CONFIGS))
def test_seq2seq_trace_is_the_translation_forward_pass(name):
    """Executing ``seq2seq_steps`` with a PerceiverSeq2Seq's weights gives its latents, logits and loss (target
    padding left out), and every array has the announced shape."""
    cfg = _seq2seq_config(**SEQ2SEQ_CONFIGS[name])
    B, M, T = 3, 7, cfg.max_target_length
    model = PerceiverSeq2Seq.init(cfg, seed=1)
    rng = np.random.default_rng(0)
    source = rng.integers(6, 262, (B, M))
    keep = np.ones((B, M), np.float32)
    keep[1, 4:] = 0  # a padded source
    source[1, 4:] = 0
    target = rng.integers(3, cfg.target_vocab_size, (B, T))
    target[:, 3] = 2  # [EOS] then [PAD]: the padding must leave the loss
    target[:, 4:] = 0
    steps = seq2seq_steps(cfg, batch=B, seq_len=M)
    given = {"source/source_ids": source, "masks/attention_mask": keep, "target/target_ids": target}
    if cfg.decoder == "autoregressive":
        given["masks/causal_mask"] = causal_mask(T)
    values = execute(steps, cfg.encoder, model.state_dict(), given, batch=B, decoder_heads=cfg.num_decoder_heads)
    wrong = {s.id: (s.shape, values[s.id].shape) for s in steps if tuple(values[s.id].shape) != s.shape}
    assert not wrong, wrong
    out = model(source, keep, target, output_attentions=True)
    np.testing.assert_allclose(values["output/last_hidden_state"], out.latents, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values["output/logits"], out.logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values["loss/loss"], out.loss, rtol=1e-5)
    # The probabilities the model returns are the trace's softmax steps: the encoder's, then the decoder's.
    softmax = [s.id for s in steps if s.id.endswith("/softmax")]
    cross = [i for i in softmax if i == "cross/softmax" or i.endswith("/cross/softmax") or i.startswith("decoding/")]
    causal = [i for i in softmax if i.startswith("decoder") and i.endswith("/self/softmax")]
    own = [i for i in softmax if i.startswith("block")]
    for ids, probs in ((cross, out.cross_attentions), (causal, out.decoder_attentions or ()), (own, out.attentions)):
        assert len(ids) == len(probs)
        for i, p in zip(ids, probs):
            np.testing.assert_allclose(values[i], p, rtol=1e-5, atol=1e-6)


@given(data=st.data())
def test_seq2seq_trace_is_the_forward_pass_for_any_config(data):
    """The same, for configs drawn by hypothesis (either decoder, any encoder) and random padding."""
    cfg = data.draw(seq2seq_configs())
    B, M, T = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 7)), cfg.max_target_length
    model = random_seq2seq(cfg, data.draw(st.integers(0, 100)))
    rng = np.random.default_rng(data.draw(st.integers(0, 100)))
    source = rng.integers(0, cfg.encoder.vocab_size, (B, M))
    keep = (rng.random((B, M)) < 0.7).astype(np.float32)
    keep[:, 0] = 1
    target = rng.integers(0, cfg.target_vocab_size, (B, T))
    given_values = {"source/source_ids": source, "masks/attention_mask": keep, "target/target_ids": target,
                    "masks/causal_mask": causal_mask(T)}
    values = execute(seq2seq_steps(cfg, batch=B, seq_len=M), cfg.encoder, model.state_dict(), given_values, batch=B,
                     decoder_heads=cfg.num_decoder_heads)
    out = model(source, keep, target)
    np.testing.assert_allclose(values["output/logits"], out.logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(values["loss/loss"], out.loss, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_seq2seq_trace_structure():
    """Where each mask acts, what each decoder reads, and the letters of the shapes."""
    auto = {s.id: s for s in seq2seq_steps(_seq2seq_config(num_decoder_layers=2))}
    queries = {s.id: s for s in seq2seq_steps(_seq2seq_config(decoder="queries"))}
    for by_id in (auto, queries):
        acting = {s.id: (s.mask, s.mask_source) for s in by_id.values() if s.mask}
        expected = {"cross/inputs_mask": ("inputs_mask", "masks/inputs_mask"),
                    "loss/labels": ("target_padding", "target/padding")}
        if by_id is auto:
            expected.update({f"decoder{j}/self/causal_mask": ("causal_mask", "masks/causal_mask") for j in (0, 1)})
        assert acting == expected
        assert "masks/head_mask" not in by_id and "masks/latent_mask" not in by_id  # the model takes neither
        assert by_id["masks/attention_mask"].name == "source_mask"
        assert by_id["cross/layernorm2"].inputs == ("source/inputs",)
        assert by_id["masks/inputs_mask"].shape == ("B", 1, 1, "M")
        assert by_id["target/padding"].shape == ("B", 6) and by_id["loss/loss"].shape == ()
        assert by_id["output/logits"].shape == ("B", 6, 11)  # (B, T, V)
    # Every decoder cross-attention reads the latents, and nothing masks it.
    for layernorm2, softmax in (("decoder0/cross/layernorm2", "decoder0/cross/softmax"),
                                ("decoder1/cross/layernorm2", "decoder1/cross/softmax"),
                                ("decoding/layernorm2", "decoding/softmax")):
        by_id = queries if layernorm2.startswith("decoding") else auto
        assert by_id[layernorm2].inputs == ("output/last_hidden_state",)
        assert by_id[layernorm2].shape == ("B", 5, 12)  # (B, N, D)
        assert "every latent is real" in by_id[softmax].note
        assert by_id[softmax].shape == ("B", 2, 6, 5)  # (B, Hd, T, N)
    assert auto["masks/causal_mask"].shape == (1, 1, 6, 6)
    assert auto["decoder0/self/scores"].axes == ("B", "Hd", "T", "T")
    assert auto["decoder1/self/layernorm1"].inputs == ("decoder0/cross/residual",)
    assert auto["decoder_inputs/decoder_input_ids"].inputs == ("target/target_ids",)
    assert "decoder0/self/layernorm" not in auto  # the self-attention is a PerceiverAttention: no MLP
    assert auto["decoder0/self/output"].module == "decoder.layers.0.self_attention.output.dense"
    # The queries decoder reads no target token: target_ids feed the loss only.
    assert [s.id for s in queries.values() if "target/target_ids" in s.inputs] == ["target/padding", "loss/labels"]
    assert "masks/causal_mask" not in queries


def test_seq2seq_trace_refuses_bad_input():
    cfg = _seq2seq_config()
    with pytest.raises(ValueError, match="max_position_embeddings = 9"):
        seq2seq_steps(cfg, seq_len=10)
    with pytest.raises(ValueError, match="Seq2SeqConfig"):
        seq2seq_steps(cfg.encoder)
    with pytest.raises(ValueError, match="batch"):
        seq2seq_steps(cfg, batch=0)
