"""The attention figure model (npperceiver.viz.attention), inspected without drawing; then real drawings.

The figure model is checked against what the masks must do, worked out here independently of it: which key
columns an additive mask removes (and that the model really gave them exactly 0), which heads ``head_mask``
scales (HF QUIRK: layer i of every block reads row i), the all-masked rows HF makes uniform, the labels.
The drawings need matplotlib (skipped without it; CI installs it through the test extra).
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import npperceiver as npp
from npperceiver.viz.attention import (
    AttentionMap, Panel, attention_map, attention_table, parse_layer, select_heads, token_labels,
)

SMALL = npp.load_preset("small")  # N=16, Hc=2, Hs=4, S=2, num_blocks=2: L=4 self-attention layers
B, M = 2, 5
KEEP = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], np.float32)  # example 0: 2 padded inputs; example 1: none kept
LATENT_KEEP = np.ones((B, 16), np.float32)
LATENT_KEEP[0, 12:] = 0  # example 0: latents 12..15 hidden as keys
HEAD_MASK = np.ones((4, 4), np.float32)
HEAD_MASK[0, 1], HEAD_MASK[0, 2] = 0.0, 0.5  # row 0: silence head 1, halve head 2
HEAD_MASK[3, 0] = 0.0  # row 3 is never read (HF quirk): must scale nothing


@pytest.fixture(scope="module")
def outputs():
    model = npp.PerceiverModel.init(SMALL, seed=0)
    x = np.random.default_rng(0).standard_normal((B, M, SMALL.d_model)).astype(np.float32)
    return model(x, attention_mask=KEEP, head_mask=HEAD_MASK, latent_mask=LATENT_KEEP, output_attentions=True)


def amap_of(outputs, layer, **kw):
    masks = dict(attention_mask=KEEP, head_mask=HEAD_MASK, latent_mask=LATENT_KEEP)
    return attention_map(outputs, SMALL, layer, **(masks | kw))


# ---------------------------------------------------------------------------- which cells are masked
def test_cross_attention_marks_the_padded_inputs_and_they_really_get_zero(outputs):
    amap = amap_of(outputs, "cross")
    assert amap.masked_keys == (3, 4) and amap.masked_by == "attention_mask" and amap.uniform_rows == ()
    expected = np.zeros((16, 5), bool)
    expected[:, 3:] = True
    assert np.array_equal(amap.masked_cells, expected)
    for panel in amap.panels:
        assert np.all(panel.probs[:, 3:] == 0) and np.allclose(panel.probs.sum(-1), 1)
        assert panel.probs.shape == (16, 5)  # queries (latents) down, keys (inputs) across
    assert [p.head for p in amap.panels] == [0, 1] and amap.num_heads == 2
    assert not any(p.scaled for p in amap.panels)  # head_mask never reaches the cross-attention
    assert any("latent_mask does not act here" in n for n in amap.notes)
    assert any("head_mask never reaches a cross-attention" in n for n in amap.notes)


def test_an_all_masked_row_is_uniform_and_called_hfs_behaviour(outputs):
    amap = amap_of(outputs, "cross", example=1)
    assert amap.masked_keys == (0, 1, 2, 3, 4) and amap.uniform_rows == tuple(range(16))
    assert all(np.all(p.probs == np.float32(0.2)) for p in amap.panels)  # 1/M over all M, padding included
    (note,) = [n for n in amap.notes if "every key is masked" in n]
    assert "1/5 = 0.2" in note and "HF's behaviour" in note


def test_self_attention_marks_the_latent_mask_not_the_attention_mask(outputs):
    amap = amap_of(outputs, "self:1")
    assert amap.masked_keys == (12, 13, 14, 15) and amap.masked_by == "latent_mask"
    assert amap.shape == (16, 16) and amap.key_name == "latents" and amap.query_name == "latents"
    assert all(np.all(p.probs[:, 12:] == 0) for p in amap.panels)
    assert any("attention_mask does not act here" in n and "attention_mask=None" in n for n in amap.notes)
    # without a latent mask nothing is masked here, whatever attention_mask says
    plain = attention_map(outputs, SMALL, "self:1", attention_mask=KEEP)
    assert plain.masked_keys == () and plain.masked_by is None and not plain.masked_cells.any()


# ---------------------------------------------------------------------------- which panel is scaled
@pytest.mark.parametrize("layer, scales", [
    ("self:0", [1, 0, 0.5, 1]),          # block 1, layer 0: row 0
    ("self:0:block 2", [1, 0, 0.5, 1]),  # block 2, layer 0: row 0 again, not row 2 (HF quirk)
    ("self:1:block 2", [1, 1, 1, 1]),    # layer 1 reads row 1 in every block; row 3 (a 0) is never read
])
def test_head_mask_row_i_scales_layer_i_of_every_block(outputs, layer, scales):
    amap = amap_of(outputs, layer, example=0)
    assert [p.head_scale for p in amap.panels] == scales
    assert [p.scaled for p in amap.panels] == [s != 1 for s in scales]
    index = int(layer.split(":")[1])
    for panel, s in zip(amap.panels, scales):
        assert np.allclose(panel.probs.sum(-1), s, atol=1e-6)  # the returned probabilities carry the factor
        if s != 1:
            assert panel.head_mask_entry == f"head_mask[{index}][{panel.head}]"
            assert panel.title == f"head {panel.head} × {s:g} (head_mask[{index}][{panel.head}])"
    assert any("rows 2 .. 3 are never read" in n for n in amap.notes)


def test_a_one_row_head_mask_scales_every_layer(outputs):
    model = npp.PerceiverModel.init(SMALL, seed=0)
    x = np.ones((1, M, SMALL.d_model), np.float32)
    hm = np.array([1, 1, 1.5, 0], np.float32)
    out = model(x, head_mask=hm, output_attentions=True)
    for layer in ("self:0", "self:1:block 2"):
        amap = attention_map(out, SMALL, layer, head_mask=hm)
        assert [p.head_scale for p in amap.panels] == [1, 1, 1.5, 0]
        assert amap.panels[3].head_mask_entry == "head_mask[3]" and np.all(amap.panels[3].probs == 0)
        assert any("head 3: head_mask[3] = 0, silenced" in n for n in amap.notes)
        assert any("multiplied by 1.5" in n for n in amap.notes)
    assert amap.vmax > 1 / 16  # the colour scale reaches the amplified head


def test_one_head(outputs):
    amap = amap_of(outputs, "self:0", head=2)
    assert [p.head for p in amap.panels] == [2] and amap.num_heads == 4
    assert amap.vmax == pytest.approx(float(amap.panels[0].probs.max()))


# ---------------------------------------------------------------------------- labels and the MLM
def test_token_labels():
    ids = npp.PerceiverTokenizer()("a é[MASK]")["input_ids"]
    assert token_labels(ids) == ("[CLS]", "a", "␣", "\\xc3", "\\xa9", "[MASK]", "[SEP]")
    assert token_labels([0, 6 + 10, 6 + 126]) == ("[PAD]", "\\x0a", "~")


@pytest.fixture(scope="module")
def mlm_outputs():
    model = npp.PerceiverForMaskedLM.init(SMALL, seed=1)
    enc = npp.PerceiverTokenizer()("Hi!", padding="max_length", max_length=7)  # [CLS] H i ! [SEP] [PAD] [PAD]
    keep = np.array([enc["attention_mask"]])
    return model(np.array([enc["input_ids"]]), attention_mask=keep, output_attentions=True), enc, keep


def test_text_labels_the_inputs_and_the_decoder_rows(mlm_outputs):
    out, enc, keep = mlm_outputs
    tokens = token_labels(enc["input_ids"])
    cross = attention_map(out, SMALL, "cross", attention_mask=keep, tokens=tokens)
    assert cross.key_labels == ("[CLS]", "H", "i", "!", "[SEP]", "[PAD]", "[PAD]")
    assert cross.query_labels == tuple(str(n) for n in range(16)) and cross.masked_keys == (5, 6)

    dec = attention_map(out, SMALL, "decoder", attention_mask=keep, tokens=tokens)
    assert cross.module == "perceiver.encoder.cross_attention"  # HF's module path in PerceiverForMaskedLM
    assert dec.module == "perceiver.decoder.decoding_cross_attention" and dec.num_heads == 8 and len(dec.panels) == 8
    assert dec.query_labels == tokens and dec.key_labels == tuple(str(n) for n in range(16))
    assert dec.shape == (7, 16) and dec.hidden_queries == 64 - 7  # P = 64 output positions, 7 shown
    assert np.array_equal(dec.panels[0].probs, out.cross_attentions[1][0, 0, :7])
    assert dec.masked_keys == () and any("query_mask" in n for n in dec.notes)  # HF drops the mask there


def test_names_and_errors(outputs):
    assert parse_layer("self:1:block 2", SMALL).name == "self:1:block 2"
    assert parse_layer(" SELF:1:2 ", SMALL) == parse_layer("self:1:block 2", SMALL)
    assert parse_layer("self:0", SMALL).block == 1 and parse_layer("cross", SMALL).slug() == "cross"
    assert parse_layer("self:1:block 2", SMALL).module(SMALL) == "encoder.self_attends.1, block 2 of 2"
    for bad, words in [("self:2", ["self:0 .. self:1"]), ("self:0:block 3", ["blocks are 1 .. 2"]),
                       ("self:0:block 0", ["blocks are 1 .. 2"]), ("cros", ["cross, self:I"]), ("self", ["self:I"])]:
        with pytest.raises(ValueError) as e:
            parse_layer(bad, SMALL)
        assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(ValueError, match=r"has 2 heads \(0 .. 1\)"):
        select_heads(2, parse_layer("cross", SMALL), SMALL)
    with pytest.raises(ValueError, match="not a head index"):
        select_heads("first", parse_layer("cross", SMALL), SMALL)
    with pytest.raises(ValueError, match="PerceiverModel has no decoder"):
        attention_map(outputs, SMALL, "decoder")
    with pytest.raises(ValueError, match="example 2 does not exist"):
        attention_map(outputs, SMALL, "cross", example=2)
    with pytest.raises(ValueError, match="output_attentions=True"):
        attention_map(npp.PerceiverModel.init(SMALL)(np.ones((1, 2, 24))), SMALL, "cross")
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        attention_map(outputs, SMALL, "cross", attention_mask=[[1, 1, 0]])


# ---------------------------------------------------------------------------- the text table (golden, by hand)
def test_table_golden():
    """A hand-made figure model, and the table a reader should see: worked out by hand, not by the code."""
    probs = np.array([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], np.float32)
    amap = AttentionMap(
        layer="cross", module="encoder.cross_attention", what="latents attend to the inputs", example=0,
        num_heads=2, query_name="latents", key_name="inputs", query_labels=("0", "1"),
        key_labels=("[CLS]", "a", "[PAD]"), panels=(Panel(1, probs * 0.5, 0.5, "head_mask[0][1]"),),
        masked_keys=(2,), masked_by="attention_mask", notes=("a note",))
    assert attention_table(amap) == (
        "encoder.cross_attention: latents attend to the inputs (example 0), 1 of 2 heads\n"
        "rows: 2 latents (queries); columns: 3 inputs (keys); x = masked by attention_mask\n"
        "note: a note\n"
        "\n"
        "head 1 × 0.5 (head_mask[0][1])\n"
        "   [CLS]      a [PAD]x\n"
        "0  0.250  0.250  0.000\n"
        "1  0.125  0.375  0.000\n"
    )


# ---------------------------------------------------------------------------- drawing (matplotlib)
def test_the_drawing_marks_what_the_figure_model_says(outputs):
    pytest.importorskip("matplotlib")
    from npperceiver.viz.attention import MASKED_COLOUR, SCALED_COLOUR, attention_figure
    from matplotlib.colors import to_hex
    from matplotlib.patches import Rectangle

    amap = amap_of(outputs, "self:0:block 2")
    fig = attention_figure(amap)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("head")]
    assert [ax.get_title() for ax in panels] == [p.title for p in amap.panels]
    for ax, panel in zip(panels, amap.panels):
        (image,) = ax.get_images()
        assert np.array_equal(image.get_array(), panel.probs)  # queries down, keys across: not transposed
        hatched = [r for r in ax.patches if isinstance(r, Rectangle) and r.get_hatch()]
        assert sorted(round(r.get_x() + 0.5) for r in hatched) == list(amap.masked_keys)
        assert to_hex(ax.title.get_color()) == to_hex(SCALED_COLOUR if panel.scaled else "black")
        red = [t.get_text() for t in ax.get_xticklabels() if to_hex(t.get_color()) == to_hex(MASKED_COLOUR)]
        assert red == [amap.key_labels[k] for k in amap.masked_keys]
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "attention probability"]
    assert len(bars) == 1  # one colour bar for every panel
    texts = " ".join(t.get_text() for sub in fig.subfigs for t in sub.texts)
    assert all(n[:40] in texts.replace("\n  ", " ") for n in amap.notes)

    uniform = attention_figure(amap_of(outputs, "cross", example=1))
    callouts = [t.get_text() for ax in uniform.axes for t in ax.texts]
    assert callouts and all("uniform 1/5 = 0.2" in c and "HF's behaviour" in c for c in callouts)


def test_attention_figure_takes_outputs_too(mlm_outputs):
    pytest.importorskip("matplotlib")
    from npperceiver.viz.attention import attention_figure

    out, enc, keep = mlm_outputs
    fig = attention_figure(out, SMALL, "cross", head=0, attention_mask=keep, tokens=token_labels(enc["input_ids"]))
    (ax,) = [a for a in fig.axes if a.get_title().startswith("head")]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["[CLS]", "H", "i", "!", "[SEP]", "[PAD]", "[PAD]"]
    assert type(fig).__name__ == "Figure"  # matplotlib's: a notebook displays it inline


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_real_render_of_each_format(outputs, fmt):
    pytest.importorskip("matplotlib")
    from npperceiver.viz.attention import render_attention

    amap = amap_of(outputs, "cross")
    data = render_attention(amap, fmt)
    if fmt == "svg":
        assert ET.fromstring(data).tag.endswith("svg")
        assert render_attention(amap, "svg") == data  # reproducible: no date, fixed ids
    elif fmt == "png":
        assert data.startswith(b"\x89PNG")
        width, height = struct.unpack(">II", data[16:24])
        assert 600 < width < 2400 and 400 < height < 2400
    else:
        assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF")
    with pytest.raises(ValueError, match="format must be one of svg, png, pdf"):
        render_attention(amap, "jpg")


def test_missing_matplotlib_says_how_to_install(outputs, monkeypatch):
    import sys

    from npperceiver.viz.attention import attention_figure

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'npperceiver\[plot\]'"):
        attention_figure(amap_of(outputs, "cross"))
