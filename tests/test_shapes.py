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

import npperceiver as npp
from npperceiver.attention import merge_heads, split_heads
from npperceiver.functional import ACT2FN, layer_norm, linear, softmax
from npperceiver.shapes import STEP_KINDS, Step, encoder_steps, format_shape


def _param(state: dict, module: str) -> dict:
    return {"weight": state[f"{module}.weight"], "bias": state[f"{module}.bias"]}


def run_trace(steps: list[Step], model: npp.PerceiverModel, inputs, attention_mask, latent_mask, head_mask):
    """Execute the trace: each step computed from the values of the steps it names. Returns id -> array."""
    cfg, state = model.config, model.state_dict()
    given_values = {"inputs/inputs": inputs, "masks/attention_mask": attention_mask,
                    "masks/latent_mask": latent_mask, "masks/head_mask": head_mask}
    v: dict[str, np.ndarray] = {}
    for s in steps:
        x = [v[i] for i in s.inputs]
        what = s.id.rsplit("/", 1)[1]
        heads = cfg.num_cross_attention_heads if s.scope == "cross" else cfg.num_self_attention_heads
        if s.kind in ("input", "mask") and not s.inputs:
            out = np.asarray(given_values[s.id], np.float32)
        elif s.kind == "parameter":
            out = state[s.module]
        elif s.id == "inputs/embeddings":
            out = np.broadcast_to(x[0], (inputs.shape[0], *x[0].shape))
        elif s.module == "invert_attention_mask":
            out = npp.invert_attention_mask(x[0])
        elif s.module == "get_head_mask":
            out = npp.get_head_mask(x[0], cfg.num_self_attention_heads, cfg.num_self_attention_layers)
        elif what in ("layernorm1", "layernorm2", "layernorm"):
            out = layer_norm(x[0], **_param(state, s.module))
        elif what in ("query", "key", "value", "output", "mlp_dense1", "mlp_dense2"):
            out = linear(x[0], **_param(state, s.module))
        elif what.startswith("split_"):
            out = split_heads(x[0], heads)
        elif what == "scores":
            q, k = x
            out = (q @ k.swapaxes(-1, -2)) / np.float32(math.sqrt(q.shape[-1]))
        elif what in ("inputs_mask", "attention_mask"):
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
