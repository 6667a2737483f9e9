"""draw-encoder and explain --model seq2seq: the translation model from --task [--decoder] or a Seq2SeqConfig
JSON, drawn and explained; every usage and error path."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli_draw import assert_rows_are_the_steps
from test_cli_explain import _table

from npperceiver.seq2seq import Seq2SeqConfig
from npperceiver.trace import SOURCE_ENTERS, seq2seq_steps
from npperceiver_cli import cli

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "seq2seq-digits-to-words.json"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:  # click 8.1 mixes stderr into output unless told not to; 8.2 keeps them apart and drops the flag
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return lambda *args: runner.invoke(cli.main, list(args))


def _dot(run, *args) -> str:
    res = run("draw-encoder", "--model", "seq2seq", "--format", "dot", "-o", "-", *args)
    assert res.exit_code == 0, res.stderr
    return res.stdout


# ---------------------------------------------------------------------------- the configs
def test_the_config_file_is_the_recipe_of_its_task():
    """configs/seq2seq-digits-to-words.json is Seq2SeqConfig.for_task("digits-to-words"), field for field."""
    assert Seq2SeqConfig.from_dict(json.loads(RECIPE.read_text())) == Seq2SeqConfig.for_task("digits-to-words")


def test_task_and_decoder_choose_the_model(run):
    auto = _dot(run, "--task", "digits-to-words")
    assert auto == _dot(run, "--task", "digits-to-words", "--decoder", "autoregressive")  # the default decoder
    assert '"decoder0/self/layer"' in auto and "causal_mask" in auto and '"decoding/layer"' not in auto
    assert "(B, 10, 33)" in auto  # T = 10 word positions, V = 33 ids
    queries = _dot(run, "--task", "words-to-digits", "--decoder", "queries")
    assert '"decoding/layer"' in queries and "causal_mask" not in queries and "decoder0" not in queries
    assert "(B, 7, 13)" in queries  # T = 7 digit positions, V = 13 ids
    for dot in (auto, queries):  # where the source enters the decoder, on the edge from the latents
        assert "cluster_encoder" in dot and "cluster_decoder" in dot
        assert re.search(r'"output/last_hidden_state" -> "[^"]+":"(decoder0\.cross|decoding)\.layernorm2":n \[[^]]*'
                         + re.escape(SOURCE_ENTERS), dot)


def test_a_config_file_draws_its_model(run, tmp_path):
    from_file = _dot(run, "--config", str(RECIPE))
    from_task = _dot(run, "--task", "digits-to-words")
    assert "(T5-like) · digits-to-words<" in from_task  # the title names the task (and the decoder once)
    assert from_file.replace(RECIPE.name, "N") == from_task.replace("· digits-to-words<", "· N<")  # same model
    bigger = Seq2SeqConfig.for_task("digits-to-words").to_dict() | {"num_decoder_layers": 2}
    (tmp_path / "two.json").write_text(json.dumps(bigger))
    two = _dot(run, "--config", "two.json")
    assert '"decoder1/self/layer"' in two and "two.json" in two


def test_drawing_options_reach_the_drawing(run):
    assert "(2, 5, 64)" in _dot(run, "--task", "digits-to-words", "--batch", "2", "--seq-len", "5")
    assert 'PORT="decoder0.self.query"' in _dot(run, "--task", "digits-to-words", "--detail", "op")
    hidden = _dot(run, "--task", "digits-to-words", "--hide-masks")
    assert not {"inputs_mask", "causal_mask", "target_padding", "source_mask"} & set(re.findall(r"\w*mask\w*|target_"
                                                                                              r"padding", hidden))


@needs_dot
def test_svg_with_its_default_name(run, tmp_path):
    res = run("draw-encoder", "--model", "seq2seq", "--task", "words-to-digits", "--decoder", "queries")
    assert res.exit_code == 0, res.stderr
    assert "wrote words-to-digits-queries-seq2seq.svg" in res.stderr and "Seq2SeqConfig.for_task" in res.stderr
    svg = (tmp_path / "words-to-digits-queries-seq2seq.svg").read_text()
    assert svg.startswith("<?xml") and SOURCE_ENTERS in svg and "perceiver: the Perceiver encoder" in svg


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("args, words", [
    (["--model", "seq2seq"], "needs --task"),
    (["--model", "seq2seq", "--task", "digits-to-words", "--config", "x.json"], "not both"),
    (["--model", "seq2seq", "--config", str(RECIPE), "--decoder", "queries"], "--decoder goes with --task"),
    (["--task", "digits-to-words"], "add --model seq2seq"),
    (["--model", "mlm", "--config", "small", "--decoder", "queries"], "add --model seq2seq"),
    (["--model", "encoder"], "Missing option '--config'"),
    (["--model", "seq2seq", "--task", "numbers"], "Invalid value for '--task'"),
    (["--model", "seq2seq", "--task", "digits-to-words", "--decoder", "t5"], "Invalid value for '--decoder'"),
])
@pytest.mark.parametrize("command", ["draw-encoder", "explain"])
def test_usage_errors_exit_2(run, tmp_path, command, args, words):
    res = run(command, *args, *(["--format", "dot"] if command == "draw-encoder" else []))
    assert res.exit_code == 2 and words in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    ('{"num_latents": 8}', "needs an 'encoder' mapping (this looks like a PerceiverConfig"),
    ('{"encoder": {}, "decoder": "t5"}', "decoder must be one of autoregressive, queries, got 't5'"),
    ('{"encoder": {}, "d_decoder": 6}', "d_decoder (6) must be divisible by num_decoder_heads (4)"),
    ('{"encoder": {}, "colour": 1}', "unknown Seq2SeqConfig field(s): colour"),
    ('{"encoder": {"max_position_embeddings": 3}, "target_vocab_size": 33, "task": "digits-to-words"}',
     "sources of up to 6 bytes"),
    ('{"encoder": ', "is not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
])
@pytest.mark.parametrize("command", ["draw-encoder", "explain"])
def test_bad_config_files_are_one_error_line(run, tmp_path, command, content, words):
    if isinstance(content, bytes):
        (tmp_path / "m.json").write_bytes(content)
    elif content is not None:
        (tmp_path / "m.json").write_text(content)
    res = run(command, "--model", "seq2seq", "--config", "m.json", *(["-o", "m.svg"] if command != "explain" else []))
    assert res.exit_code == 1, (res.exit_code, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --config m.json: ") and words in lines[0], lines
    assert not (tmp_path / "m.svg").exists()


def test_a_source_longer_than_the_encoder_reads_is_one_error_line(run, tmp_path):
    res = run("draw-encoder", "--model", "seq2seq", "--task", "digits-to-words", "--seq-len", "7", "-o", "x.svg")
    assert res.exit_code == 1 and "error: seq_len must be at most the encoder's max_position_embeddings = 6" in \
        res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x.svg").exists()


# ---------------------------------------------------------------------------- explain
def _explain(run, *args) -> str:
    res = run("explain", "--model", "seq2seq", *args)
    assert res.exit_code == 0, res.stderr
    return res.stdout


def test_explain_one_row_per_layer_with_the_masks_acting_in_it(run):
    out = _explain(run, "--task", "digits-to-words")
    assert out.splitlines()[0].startswith("Perceiver encoder-decoder (translation) forward pass: "
                                          "digits-to-words-autoregressive (N=32 D=64 C=64")
    assert "decoder autoregressive: T=10 E=64 Hd=4 V=33 layers=1" in out.splitlines()[0]
    rows = {(r[0], r[1].split(",")[0]): (r[2], r[3]) for r in _table(out)}
    assert rows["perceiver.encoder.cross_attention", "latents attend to the source bytes"] == ("(B, 32, 64)",
                                                                                             "inputs_mask")
    assert rows["perceiver.encoder.self_attends.1", "latents attend to latents"] == ("(B, 32, 64)", "")
    assert rows["decoder.layers.0.self_attention", "target position t attends to positions 0..t"] == \
        ("(B, 10, 64)", "causal_mask")
    assert rows["decoder.layers.0.cross_attention", f"target positions attend to the latents: {SOURCE_ENTERS}"] == \
        ("(B, 10, 64)", "none: every latent is real")
    assert rows["seq2seq_loss", "target_ids"] == ("(B, 10)", "target_padding")
    assert rows["decoder.lm_head", "Linear 64 -> 33"] == ("(B, 10, 33)", "")
    masks = out.split("\n\n")[-1]
    assert "source_mask (B, M) -> inputs_mask (B, 1, 1, M)" in masks
    assert "causal_mask (1, 1, 10, 10)" in masks and "decoder.layers.0.self_attention" in masks
    assert "target padding (B, 10) = target_ids == [PAD]" in masks and "label -100" in masks
    assert "no mask, every latent is real" in masks and "no latent mask and no head_mask" in masks


def test_explain_the_queries_decoder_has_no_causal_mask(run):
    out = _explain(run, "--task", "words-to-digits", "--decoder", "queries", "--batch", "3", "--seq-len", "20")
    rows = [r for r in _table(out)]
    assert ["decoder.decoding_cross_attention", f"output queries attend to the latents: {SOURCE_ENTERS}, 4 heads, "
            "qk 64, v 64", "(3, 7, 64)", "none: every latent is real"] in rows
    assert ["perceiver.input_preprocessor", "byte embedding + position embedding", "(3, 20, 64)", ""] in rows
    assert "causal" not in out and "shift_right" not in out
    assert "the queries decoder never reads the target" in out


@pytest.mark.parametrize("decoder", ["autoregressive", "queries"])
def test_explain_full_lists_every_step_in_order(run, decoder):
    out = _explain(run, "--task", "digits-to-words", "--decoder", decoder, "--full", "--batch", "2", "--seq-len", "4")
    steps = seq2seq_steps(Seq2SeqConfig.for_task("digits-to-words", decoder), batch=2, seq_len=4)
    assert_rows_are_the_steps(out, steps)
    headings = [line for line in out.splitlines() if re.match(r"-- \S", line)]
    assert headings[0] == "-- perceiver.input_preprocessor: the source bytes, embedded (PerceiverTextPreprocessor)"
    assert headings[-1] == "-- the loss: mean cross-entropy, the target padding left out"
    if decoder == "autoregressive":
        assert "-- decoder.layers.0.self_attention: target positions attend to earlier ones (causal_mask, 4 heads; " \
               "no MLP)" in headings


def test_explain_reads_a_config_file(run):
    assert _explain(run, "--config", str(RECIPE)).split("\n", 1)[1] == \
        _explain(run, "--task", "digits-to-words").split("\n", 1)[1]  # all but the name in the first line


# ---------------------------------------------------------------------------- the docs' pictures
def test_the_docs_diagrams_are_listed_shown_captioned_and_current(tmp_path):
    """Each translation diagram in docs/images comes from a draw-encoder line in docs/cli.md, which still runs;
    docs/translation.md shows it with that command under it; and the committed picture says every word the
    current drawing has (its boxes' names and shapes, where the source enters), so it is not stale."""
    from regen_docs import diagrams, run_command

    from npperceiver.viz.encoder_graph import build_seq2seq_graph

    listed = diagrams()
    assert {p for _, p in listed} == {f"docs/images/{f.name}" for f in (ROOT / "docs/images").glob("seq2seq-*")}
    assert len(listed) == 2
    page = (ROOT / "docs" / "translation.md").read_text(encoding="utf-8")
    for command, picture in listed:
        name = Path(picture).name
        at = page.index(f"(images/{name})") + len(f"(images/{name})")
        caption = re.match(r"\s*\*`([^`]*)`\*", page[at:])
        assert caption and caption[1] == command.replace(f" -o {picture}", "")
        args = command.split()
        config = Seq2SeqConfig.for_task(args[args.index("--task") + 1],
                                        args[args.index("--decoder") + 1] if "--decoder" in args else "autoregressive")
        graph = build_seq2seq_graph(config)
        svg = (ROOT / picture).read_text(encoding="utf-8").replace("&#160;", " ").replace("&#45;", "-")
        for n in graph.boxes():
            assert n.label.split(" · ")[0] in svg and n.shape in svg, (name, n.id)
        assert SOURCE_ENTERS in svg and graph.title.split(" · ")[0] in svg
        if shutil.which("dot"):
            out = tmp_path / name
            run_command(command, out)
            assert out.read_bytes().startswith(b"<?xml")
