"""PerceiverConfig: HF field names and defaults, JSON round trip, and validation at construction."""

import dataclasses
import json

import pytest

import npperceiver as npp
from npperceiver.config import PerceiverConfig

SMALL = dict(num_latents=4, d_latents=16, d_model=8, num_blocks=2, num_self_attends_per_block=2,
             num_self_attention_heads=2, num_cross_attention_heads=2)

# HF PerceiverConfig defaults (configuration_perceiver.py, transformers 4.57.6), written out so a change
# of ours cannot silently drift from them.
HF_DEFAULTS = dict(num_latents=256, d_latents=1280, d_model=768, num_blocks=1, num_self_attends_per_block=26,
                   num_self_attention_heads=8, num_cross_attention_heads=8, qk_channels=None, v_channels=None,
                   cross_attention_shape_for_attention="kv", self_attention_widening_factor=1,
                   cross_attention_widening_factor=1, hidden_act="gelu", attention_probs_dropout_prob=0.1,
                   initializer_range=0.02, layer_norm_eps=1e-12, use_query_residual=True, vocab_size=262,
                   max_position_embeddings=2048)


def test_defaults_are_hf_defaults():
    c = PerceiverConfig()
    assert {k: getattr(c, k) for k in HF_DEFAULTS} == HF_DEFAULTS


def test_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PerceiverConfig().num_latents = 3


def test_dict_and_json_round_trip(tmp_path):
    c = PerceiverConfig(**SMALL, qk_channels=8, v_channels=16, extras={"image_size": 56})
    assert PerceiverConfig.from_dict(c.to_dict()) == c
    path = tmp_path / "c.json"
    c.to_json(path)
    back = PerceiverConfig.from_json(path)
    assert back == c and back.extras == {"image_size": 56}
    assert json.loads(path.read_text())["image_size"] == 56  # extras go back out at top level, as in HF


def test_unrelated_hf_keys_are_kept_out_of_the_way():
    c = PerceiverConfig.from_dict({**SMALL, "image_size": 56, "train_size": [368, 496], "architectures": ["X"]})
    assert c.extras == {"image_size": 56, "train_size": [368, 496], "architectures": ["X"]}
    assert c == PerceiverConfig(**SMALL)  # extras do not take part in equality


def test_language_perceiver_preset_is_hf_config_json():
    c = npp.load_preset("language-perceiver")
    assert (c.d_model, c.d_latents, c.num_latents, c.num_self_attends_per_block) == (768, 1280, 256, 26)
    assert (c.qk_channels, c.v_channels) == (256, 1280)
    assert c.cross_attention.qk_head_dim == 32 and c.self_attention.v_head_dim == 160
    assert "image_size" in c.extras and c.extras["architectures"] == ["PerceiverForMaskedLM"]


def test_hf_written_config_json_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PerceiverConfig(qk_channels=256, v_channels=1280)
    path = tmp_path / "config.json"
    hf.to_json_file(path)
    c = PerceiverConfig.from_json(path)
    assert c.qk_channels == 256 and c.v_channels == 1280 and c.d_latents == hf.d_latents


def test_presets_listed_and_unknown_rejected():
    assert {"small", "language-perceiver"} <= set(npp.available_presets())
    assert npp.load_preset("small.json") == npp.load_preset("small")
    with pytest.raises(ValueError, match="unknown preset 'nope'.*small"):
        npp.load_preset("nope")


@pytest.mark.parametrize("field,value,pattern", [
    ("num_latents", 0, "num_latents must be a positive integer"),
    ("d_latents", -16, "d_latents must be a positive integer"),
    ("d_model", 8.0, "d_model must be a positive integer.*float"),
    ("num_blocks", True, "num_blocks must be a positive integer"),
    ("num_self_attends_per_block", "2", "num_self_attends_per_block must be a positive integer"),
    ("num_self_attention_heads", 0, "num_self_attention_heads"),
    ("num_cross_attention_heads", None, "num_cross_attention_heads"),
    ("qk_channels", 0, "qk_channels must be a positive integer or None"),
    ("v_channels", -1, "v_channels must be a positive integer or None"),
    ("self_attention_widening_factor", 0, "self_attention_widening_factor"),
    ("cross_attention_widening_factor", 1.5, "cross_attention_widening_factor"),
    ("vocab_size", 0, "vocab_size"),
    ("max_position_embeddings", 0, "max_position_embeddings"),
    ("cross_attention_shape_for_attention", "qk", "cross_attention_shape_for_attention must be 'q' or 'kv'"),
    ("hidden_act", "tanh", "hidden_act must be one of"),
    ("use_query_residual", 1, "use_query_residual must be a bool"),
    ("attention_probs_dropout_prob", 1.0, r"attention_probs_dropout_prob must lie in \[0.0, 1.0\)"),
    ("initializer_range", -0.1, "initializer_range"),
    ("layer_norm_eps", 0.0, "layer_norm_eps"),
    ("layer_norm_eps", "x", "layer_norm_eps must be a number"),
])
def test_invalid_field_values_are_rejected(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        PerceiverConfig(**{**SMALL, field: value})


@pytest.mark.parametrize("overrides,pattern", [
    # HF PerceiverEncoder.__init__ checks: both head counts divide d_latents (even if cross qk = d_model).
    (dict(d_latents=16, num_self_attention_heads=3), r"d_latents \(16\) must be divisible by num_self_attention_heads \(3\)"),
    (dict(d_latents=16, d_model=9, num_cross_attention_heads=3), r"d_latents \(16\) must be divisible by num_cross_attention_heads \(3\)"),
    # HF PerceiverSelfAttention.__init__: qk / v widths divide the head count.
    (dict(d_model=9, num_cross_attention_heads=2), r"cross-attention query/key width 9 \(from d_model\).*num_cross_attention_heads \(2\)"),
    (dict(qk_channels=6, v_channels=16, num_self_attention_heads=4), r"query/key width 6 \(from qk_channels\)"),
    (dict(d_latents=16, v_channels=16, cross_attention_shape_for_attention="q", num_cross_attention_heads=16, num_self_attention_heads=16, qk_channels=12), "qk_channels"),
    # HF accepts these but its forward crashes: self-attention value width must equal d_latents.
    (dict(qk_channels=4), r"self-attention value width must equal d_latents \(16\).*resolve it to 4"),
    (dict(v_channels=8), r"self-attention value width must equal d_latents \(16\).*v_channels=8"),
])
def test_configs_hf_rejects_or_crashes_on_are_rejected(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        PerceiverConfig(**{**SMALL, **overrides})


@pytest.mark.parametrize("overrides", [
    dict(), dict(v_channels=16), dict(qk_channels=8, v_channels=16), dict(qk_channels=16),
    dict(cross_attention_shape_for_attention="q"), dict(d_model=6, num_cross_attention_heads=2),
])
def test_configs_hf_runs_are_accepted(overrides):
    c = PerceiverConfig(**{**SMALL, **overrides})
    assert c.self_attention.v_channels == c.d_latents


def test_resolved_widths_follow_hf_rules():
    c = PerceiverConfig(**SMALL)  # qk/v unset, "kv": cross qk = v = d_model, self qk = v = d_latents
    assert (c.cross_attention.qk_channels, c.cross_attention.v_channels, c.cross_attention.output_channels) == (8, 8, 16)
    assert (c.self_attention.qk_channels, c.self_attention.v_channels) == (16, 16)
    q = PerceiverConfig(**SMALL, cross_attention_shape_for_attention="q")
    assert q.cross_attention.qk_channels == 16
    s = PerceiverConfig(**SMALL, qk_channels=8, v_channels=16, use_query_residual=False)
    assert s.cross_attention.qk_channels == 8 and s.cross_attention.v_channels == 16
    assert s.cross_attention.use_query_residual is False and s.self_attention.use_query_residual is True


def test_from_dict_and_from_json_reject_garbage(tmp_path):
    with pytest.raises(ValueError, match="config must be a mapping"):
        PerceiverConfig.from_dict([1, 2])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        PerceiverConfig.from_json(bad)
