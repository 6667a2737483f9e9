"""The translation model's attention: ``PerceiverSeq2Seq(..., output_attentions=True)``, its figure model
(the decoder cross-attention, target positions down and latents across; the causal self-attention, each
row's later positions marked as masked) and ``draw-attention --model seq2seq``.

The golden tables run a model whose every weight is 0: every score is then 0, and softmax is uniform over
the keys a mask keeps -- 1/(t + 1) over positions 0..t in row t of the causal self-attention, 1/N over the
latents, 1/2 over the two real bytes of a padded source -- which makes the expected numbers checkable by hand.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from test_seq2seq import random_seq2seq, seq2seq_configs

import npperceiver as npp
from npperceiver.seq2seq import PerceiverSeq2Seq, Seq2SeqConfig, seq2seq_param_shapes
from npperceiver.tasks import get_task
from npperceiver.viz.attention import (
    attention_map, attention_table, parse_layer, select_heads, target_token_labels,
)
from npperceiver_cli import cli

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")


# ---------------------------------------------------------------------------- the model's probabilities
@given(config=seq2seq_configs(), seed=st.integers(0, 100), data=st.data())
def test_output_attentions_changes_nothing_and_the_causal_rows_see_no_future(config, seed, data):
    model = random_seq2seq(config, seed)
    rng = np.random.default_rng(seed)
    B, M, T = 2, data.draw(st.integers(1, 7)), config.max_target_length
    source = rng.integers(0, config.encoder.vocab_size, (B, M))
    keep = np.ones((B, M), np.float32)
    keep[1, M // 2 + 1:] = 0
    target = rng.integers(0, config.target_vocab_size, (B, T))
    plain = model(source, keep, target)
    out = model(source, keep, target, output_attentions=True)
    assert np.array_equal(out.logits, plain.logits) and np.array_equal(out.latents, plain.latents)
    np.testing.assert_array_equal(out.loss, plain.loss)
    enc, Hd, N = config.encoder, config.num_decoder_heads, config.encoder.num_latents
    layers = config.num_decoder_layers
    assert len(out.attentions) == enc.num_self_attention_layers
    assert [a.shape for a in out.cross_attentions] == [(B, enc.num_cross_attention_heads, N, M)] + \
        [(B, Hd, T, N)] * layers
    if config.decoder == "queries":
        assert out.decoder_attentions is None
    else:
        assert [a.shape for a in out.decoder_attentions] == [(B, Hd, T, T)] * layers
        for probs in out.decoder_attentions:  # exactly 0 on every later position; each row a distribution
            assert not probs[..., np.triu_indices(T, k=1)[0], np.triu_indices(T, k=1)[1]].any()
            np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    assert not out.cross_attentions[0][1][..., keep[1] == 0].any()  # the source padding, in the encoder
    for probs in out.cross_attentions[1:]:
        np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)


# ---------------------------------------------------------------------------- the figure model
def _recipe_outputs(task="digits-to-words", decoder="autoregressive", number=3412, seed=0):
    config = Seq2SeqConfig.for_task(task, decoder)
    spec = get_task(task)
    batch = spec.batch([number])
    model = PerceiverSeq2Seq.init(config, seed=seed)
    return config, spec, batch, model(batch.source_ids, batch.source_mask, batch.target_ids, output_attentions=True)


def test_the_causal_panel_marks_every_later_position_as_masked():
    config, spec, batch, out = _recipe_outputs()
    labels = target_token_labels([1, *batch.target_ids[0, :-1]], spec.target_vocab)
    assert labels[:7] == ("[BOS]", "three", "thousand", "four", "hundred", "twelve", "[EOS]")
    amap = attention_map(out, config, "causal", head=2, target_tokens=labels)
    assert amap.module == "decoder.layers.0.self_attention" and amap.layer == "causal:0"
    assert amap.shape == (10, 10) and amap.query_labels == amap.key_labels == labels
    assert amap.future_masked and amap.masked_by == "causal_mask" and amap.masked_keys == ()
    assert np.array_equal(amap.masked_cells, np.triu(np.ones((10, 10), bool), k=1))
    assert not amap.panels[0].probs[amap.masked_cells].any()  # masked: exactly 0
    assert any("causal_mask" in n for n in amap.notes) and any("teacher forcing" in n for n in amap.notes)
    table = attention_table(amap).splitlines()
    rows = table[table.index("head 2") + 2:]
    assert [row.split()[1:].count("x") for row in rows] == list(range(9, -1, -1))  # T - 1 - t in row t
    assert all(row.split()[1:][:t + 1].count("x") == 0 for t, row in enumerate(rows))


def test_the_decoder_cross_panel_reads_the_latents_unmasked():
    config, spec, batch, out = _recipe_outputs("words-to-digits", "queries", 42)
    amap = attention_map(out, config, "decoder", target_tokens=target_token_labels(batch.target_ids[0],
                                                                                   spec.target_vocab))
    assert amap.module == "decoder.decoding_cross_attention" and amap.layer == "decoder:0"
    assert amap.shape == (7, 32) and amap.query_labels[:3] == ("4", "2", "[EOS]")
    assert amap.key_name == "latents" and amap.key_labels == tuple(str(n) for n in range(32))
    assert len(amap.panels) == 4 and not amap.masked_cells.any() and not amap.future_masked
    np.testing.assert_array_equal(amap.panels[3].probs, out.cross_attentions[1][0, 3])
    assert any("every latent is real" in n for n in amap.notes)
    assert any("the target token it predicts" in n for n in amap.notes)
    # The encoder's layers of the same outputs, named as for the other models.
    enc = attention_map(out, config, "cross", attention_mask=batch.source_mask)
    assert enc.module == "perceiver.encoder.cross_attention" and enc.shape == (32, 9)
    assert attention_map(out, config, "self:1").module == "perceiver.encoder.self_attends.1"


@pytest.mark.parametrize("name, config, words", [
    ("causal", Seq2SeqConfig.for_task("digits-to-words", "queries"), "the queries decoder has no self-attention"),
    ("decoder:1", Seq2SeqConfig.for_task("digits-to-words"), "the decoder has 1 layer (decoder:0 .. decoder:0)"),
    ("causal:2", Seq2SeqConfig.for_task("digits-to-words"), "causal:0 .. causal:0"),
    ("self:2", Seq2SeqConfig.for_task("digits-to-words"), "self:0 .. self:1"),
    ("causal", npp.load_preset("small"), "only the translation model's decoder"),
])
def test_layers_that_do_not_exist_are_named(name, config, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_layer(name, config)


def test_heads_are_the_decoders():
    config = dataclasses_replace(Seq2SeqConfig.for_task("digits-to-words"), num_decoder_heads=2)
    assert select_heads("all", parse_layer("causal", config), config) == [0, 1]
    assert select_heads("all", parse_layer("cross", config), config) == [0, 1, 2, 3]  # the encoder's Hc
    with pytest.raises(ValueError, match="has 2 heads"):
        select_heads(2, parse_layer("decoder", config), config)


def dataclasses_replace(config, **changes):
    return Seq2SeqConfig.from_dict({**config.to_dict(), **changes})


@needs_matplotlib
def test_the_causal_figure_hatches_exactly_the_later_positions():
    from matplotlib.patches import Rectangle

    from npperceiver.viz.attention import attention_figure

    config, spec, batch, out = _recipe_outputs()
    fig = attention_figure(out, config, "causal", head=0)
    (ax,) = [a for a in fig.axes if a.get_title().startswith("head")]
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    covered = np.zeros((10, 10), bool)
    for p in hatched:  # each rectangle covers whole cells
        x0, y0 = p.get_xy()
        covered[int(y0 + 0.5):int(y0 + 0.5 + p.get_height()), int(x0 + 0.5):int(x0 + 0.5 + p.get_width())] = True
    assert np.array_equal(covered, np.triu(np.ones((10, 10), bool), k=1))


# ---------------------------------------------------------------------------- draw-attention --model seq2seq
@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for decoder in ("autoregressive", "queries"):
        config = Seq2SeqConfig.for_task("digits-to-words", decoder)
        npp.save_weights(tmp_path / f"zeros-{decoder}.npz",
                         {k: np.zeros(s, np.float32) for k, s in seq2seq_param_shapes(config).items()})
    try:  # click 8.1 mixes stderr into output unless told not to; 8.2 keeps them apart and drops the flag
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return lambda *args: runner.invoke(cli.main, ["draw-attention", *args])


def _table_rows(stdout: str, head: str = "head 0") -> list[list[str]]:
    lines = stdout.splitlines()
    start = lines.index(head) + 2
    return [line.split() for line in lines[start:] if line.strip()]


def test_golden_causal_table(run):
    """All weights 0: row t spreads 1/(t + 1) over positions 0..t, and marks every later one x."""
    res = run("--model", "seq2seq", "--task", "digits-to-words", "--weights", "zeros-autoregressive.npz",
              "--text", "15", "--layer", "causal", "--head", "1", "--format", "text")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines()[1] == ("rows: 10 target positions (queries); columns: 10 target positions (keys); "
                                          "x = masked by causal_mask")
    rows = _table_rows(res.stdout, "head 1")
    assert [r[0] for r in rows] == ["[BOS]", "fifteen", "[EOS]", *["[PAD]"] * 7]  # the decoder's input
    for t, row in enumerate(rows):
        assert row[1:] == [f"{1 / (t + 1):.3f}"] * (t + 1) + ["x"] * (9 - t), (t, row)


def test_golden_decoder_and_encoder_tables(run):
    """The decoder cross-attention: 1/32 over the 32 latents, no mask; the encoder's cross-attention over a
    source padded to 6 bytes: 1/2 over the two real bytes, 0 on the padding."""
    res = run("--model", "seq2seq", "--task", "digits-to-words", "--decoder", "queries", "--weights",
              "zeros-queries.npz", "--text", "42", "--head", "0", "--format", "text")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("decoder.decoding_cross_attention: target positions attend to the latents")
    rows = _table_rows(res.stdout)
    assert [r[0] for r in rows] == ["forty", "two", "[EOS]", *["[PAD]"] * 7]  # what each query predicts
    assert all(r[1:] == ["0.031"] * 32 for r in rows)
    res = run("--model", "seq2seq", "--task", "digits-to-words", "--weights", "zeros-autoregressive.npz",
              "--text", "42", "--pad-to", "6", "--layer", "cross", "--head", "0", "--format", "text")
    assert res.exit_code == 0, res.stderr
    header, *rows = res.stdout.splitlines()[res.stdout.splitlines().index("head 0") + 1:]
    assert header.split() == ["4", "2", "[PAD]x", "[PAD]x", "[PAD]x", "[PAD]x"]
    assert all(r.split()[1:] == ["0.500", "0.500", "0.000", "0.000", "0.000", "0.000"] for r in rows if r.strip())


def test_random_init_and_default_names(run, tmp_path):
    res = run("--model", "seq2seq", "--task", "words-to-digits", "--random-init", "--seed", "3", "--text",
              "seven hundred thousand five", "--format", "text")
    assert res.exit_code == 0, res.stderr
    assert _table_rows(res.stdout)[0][0] == "[BOS]" and "decoder.layers.0.cross_attention" in res.stdout
    again = run("--model", "seq2seq", "--task", "words-to-digits", "--random-init", "--seed", "3", "--text",
                "seven hundred thousand five", "--format", "text")
    other = run("--model", "seq2seq", "--task", "words-to-digits", "--random-init", "--seed", "4", "--text",
                "seven hundred thousand five", "--format", "text")
    assert again.stdout == res.stdout != other.stdout  # the seed makes the model
    if importlib.util.find_spec("matplotlib"):
        res = run("--model", "seq2seq", "--task", "digits-to-words", "--random-init", "--text", "7", "--layer",
                  "causal")
        assert res.exit_code == 0, res.stderr
        assert (tmp_path / "digits-to-words-autoregressive-attention-causal0.svg").read_bytes().startswith(b"<?xml")


@pytest.mark.parametrize("args, words", [
    (["--task", "digits-to-words", "--random-init"], "needs --text"),
    (["--task", "digits-to-words", "--random-init", "--text", "1", "--seq-len", "3"], "--seq-len is not for"),
    (["--task", "digits-to-words", "--random-init", "--text", "1", "--head-mask", "1,1"], "--head-mask is not for"),
    (["--task", "digits-to-words", "--random-init", "--text", "1", "--batch", "2"], "--batch is for random"),
    (["--random-init", "--text", "1"], "needs --task"),
    (["--task", "digits-to-words", "--text", "1"], "exactly one of --weights FILE and --random-init"),
])
def test_usage_errors_exit_2(run, args, words):
    res = run("--model", "seq2seq", *args, "--format", "text")
    assert res.exit_code == 2 and words in res.stderr, res.stderr


@pytest.mark.parametrize("args, words", [
    (["--text", "042"], "'042' is not a digits-to-words source"),
    (["--text", "12a"], "outside the digits-to-words source alphabet"),
    (["--text", "1234567"], "1 to 6 characters"),
    (["--text", "12", "--pad-to", "7"], "--pad-to 7: the source has 2 bytes and the encoder reads at most 6"),
    (["--text", "12", "--layer", "causal:1"], "the decoder has 1 layer"),
    (["--text", "12", "--head", "4"], "has 4 heads (0 .. 3)"),
    (["--text", "12", "--example", "1"], "--example 1 does not exist"),
    (["--text", "12", "--attention-mask", "1,1,1"], "--attention-mask has 3 values per row but there are 2"),
])
def test_bad_input_is_one_error_line(run, tmp_path, args, words):
    res = run("--model", "seq2seq", "--task", "digits-to-words", "--random-init", *args, "-o", "out.txt")
    assert res.exit_code == 1, (res.exit_code, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and words in lines[-1] and "Traceback" not in res.stderr, lines
    assert not (tmp_path / "out.txt").exists()


def test_a_config_without_a_task_cannot_read_text(run, tmp_path):
    config = Seq2SeqConfig.for_task("digits-to-words").to_dict() | {"task": None}
    (tmp_path / "m.json").write_text(json.dumps(config))
    res = run("--model", "seq2seq", "--config", "m.json", "--random-init", "--text", "12", "--format", "text")
    assert res.exit_code == 1 and "names no task" in res.stderr
    (tmp_path / "t.json").write_text(json.dumps(config | {"task": "digits-to-words"}))
    res = run("--model", "seq2seq", "--config", "t.json", "--random-init", "--text", "12", "--format", "text")
    assert res.exit_code == 0, res.stderr


def test_the_other_models_refuse_the_translation_options(run):
    res = run("--config", "small", "--random-init", "--task", "digits-to-words", "--format", "text")
    assert res.exit_code == 2 and "add --model seq2seq" in res.stderr
    res = run("--random-init", "--format", "text")
    assert res.exit_code == 2 and "Missing option '--config'" in res.stderr
    res = run("--config", "small", "--random-init", "--layer", "causal", "--format", "text")
    assert res.exit_code == 1 and "only the translation model's decoder" in res.stderr
