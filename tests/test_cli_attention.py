"""The draw-attention command, with click's CliRunner: golden tables worked out by hand, every format, every
error path (one line on stderr, exit 1, no file).

The golden tables run a model whose every weight is 0: then every query and key is 0, every score 0, and
softmax is uniform over the keys a mask keeps -- 1/3 over three kept inputs, 1/2 over two kept latents --
whatever the input. That is what makes the expected numbers checkable by hand.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import npperceiver as npp
from npperceiver_cli import cli

ROOT = Path(__file__).resolve().parents[1]

#: Formats each error path is tried in: text always, svg where matplotlib is there to draw it.
FORMATS = ("text", "svg") if importlib.util.find_spec("matplotlib") else ("text",)

#: N=3 latents, 2 heads each side, one self-attention layer applied twice (L = 2), P = 8 positions.
TINY = dict(num_latents=3, d_latents=8, d_model=8, num_blocks=2, num_self_attends_per_block=1,
            num_self_attention_heads=2, num_cross_attention_heads=2, max_position_embeddings=8)


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    config = npp.PerceiverConfig.from_dict(TINY)
    npp.save_weights(tmp_path / "zeros.npz", {k: np.zeros(s, np.float32) for k, s in npp.param_shapes(config).items()})
    npp.save_weights(tmp_path / "mlm-zeros.npz",
                     {k: np.zeros(s, np.float32) for k, s in npp.mlm_param_shapes(config).items()})
    try:  # click 8.1 mixes stderr into output unless told not to; 8.2 keeps them apart and drops the flag
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli.main, ["draw-attention", *args])
    return invoke


def table(*args):
    return ("--config", "tiny.json", "--weights", "zeros.npz", "--format", "text", *args)


def _one_error_line(result, *words):
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.stdout)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert all(w in lines[-1] for w in words), lines[-1]


def _no_files(tmp_path):
    return not [p.name for p in tmp_path.iterdir() if p.suffix in (".svg", ".png", ".pdf", ".txt", ".tmp")
                or p.name.startswith(".")]


# ---------------------------------------------------------------------------- golden tables, by hand
def test_golden_cross_attention_with_padding(run):
    res = run(*table("--seq-len", "4", "--attention-mask", "1,1,1,0"))
    assert res.exit_code == 0, res.stderr
    rows = "0 0.333 0.333 0.333 0.000\n1 0.333 0.333 0.333 0.000\n2 0.333 0.333 0.333 0.000\n"
    assert res.stdout == (
        "encoder.cross_attention: latents attend to the inputs (example 0), all heads\n"
        "rows: 3 latents (queries); columns: 4 inputs (keys); x = masked by attention_mask\n"
        "note: masked keys (attention_mask = 0): float32's minimum is added to their scores, so softmax gives "
        "them exactly 0\n"
        "\nhead 0\n      0     1     2    3x\n" + rows +
        "\nhead 1\n      0     1     2    3x\n" + rows
    )


def test_golden_self_attention_latent_mask_and_head_mask(run):
    res = run(*table("--seq-len", "4", "--attention-mask", "1,1,1,0", "--layer", "self:0:block 2",
                     "--latent-mask", "1,1,0", "--head-mask", "1,0.5"))
    assert res.exit_code == 0, res.stderr
    assert res.stdout == (
        "encoder.self_attends.0, block 2 of 2: latents attend to latents (example 0), all heads\n"
        "rows: 3 latents (queries); columns: 3 latents (keys); x = masked by latent_mask\n"
        "note: masked keys (latent_mask = 0): float32's minimum is added to their scores, so softmax gives "
        "them exactly 0\n"
        "note: head 1: head_mask[1] = 0.5, probabilities multiplied by 0.5 after softmax\n"
        "note: attention_mask does not act here: HF's PerceiverModel passes attention_mask=None to every "
        "self-attention layer; it acted once, in the cross-attention\n"
        "\nhead 0\n"
        "      0     1    2x\n"
        "0 0.500 0.500 0.000\n"
        "1 0.500 0.500 0.000\n"
        "2 0.500 0.500 0.000\n"
        "\nhead 1 × 0.5 (head_mask[1])\n"
        "      0     1    2x\n"
        "0 0.250 0.250 0.000\n"
        "1 0.250 0.250 0.000\n"
        "2 0.250 0.250 0.000\n"
    )


def test_golden_every_input_masked_is_uniform(run):
    res = run(*table("--seq-len", "4", "--attention-mask", "0,0,0,0", "--head", "1"))
    assert res.exit_code == 0, res.stderr
    assert res.stdout == (
        "encoder.cross_attention: latents attend to the inputs (example 0), 1 of 2 heads\n"
        "rows: 3 latents (queries); columns: 4 inputs (keys); x = masked by attention_mask\n"
        "note: every key is masked (attention_mask all 0 in this example): HF adds float32's minimum to every "
        "score, so softmax is uniform, 1/4 = 0.25 for every key, masked ones included (HF's behaviour: not NaN, "
        "not 0)\n"
        "\nhead 1\n"
        "     0x    1x    2x    3x\n"
        "0 0.250 0.250 0.250 0.250\n"
        "1 0.250 0.250 0.250 0.250\n"
        "2 0.250 0.250 0.250 0.250\n"
    )


def test_golden_mlm_decoder_rows_are_the_texts_positions(run):
    res = run("--config", "tiny.json", "--weights", "mlm-zeros.npz", "--format", "text", "--text", "hi",
              "--attention-mask", "1,1,1,0", "--layer", "decoder", "--head", "0")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == (
        "perceiver.decoder.decoding_cross_attention: output queries attend to the latents (example 0), 1 of 8 heads\n"
        "rows: 4 output positions (queries); columns: 3 latents (keys)\n"
        "note: attention_mask does not act here: HF hands it to the decoder as query_mask, which its "
        "cross-attention drops (no mask in the decoder)\n"
        "note: output positions 4 .. 7 (past the text) are not shown; their queries are the same learned "
        "positions, whatever the text\n"
        "\nhead 0\n"
        "          0     1     2\n"
        "[CLS] 0.333 0.333 0.333\n"
        "    h 0.333 0.333 0.333\n"
        "    i 0.333 0.333 0.333\n"
        "[SEP] 0.333 0.333 0.333\n"
    )


def test_text_columns_are_bytes_and_pad_to_masks_the_padding(run):
    res = run("--config", "tiny.json", "--weights", "mlm-zeros.npz", "--format", "text", "--text", "é!",
              "--pad-to", "7", "--head", "0")
    assert res.exit_code == 0, res.stderr
    header = res.stdout.splitlines()[5]
    assert header.split() == ["[CLS]", "\\xc3", "\\xa9", "!", "[SEP]", "[PAD]x", "[PAD]x"]
    assert res.stdout.splitlines()[6].split() == ["0", "0.200", "0.200", "0.200", "0.200", "0.200", "0.000", "0.000"]


def test_file_masks_and_a_batch(run, tmp_path):
    np.save(tmp_path / "hm.npy", np.array([[1, 0], [1, 1]], np.float32))  # L = 2 rows
    (tmp_path / "keep.txt").write_text("1 1 1 1\n1 1 0 0\n")
    res = run(*table("--seq-len", "4", "--batch", "2", "--example", "1", "--attention-mask", "keep.txt"))
    assert res.exit_code == 0 and "x = masked by attention_mask" in res.stdout
    assert res.stdout.splitlines()[5].split() == ["0", "1", "2x", "3x"]
    assert res.stdout.splitlines()[6].split() == ["0", "0.500", "0.500", "0.000", "0.000"]
    res = run(*table("--seq-len", "4", "--layer", "self:0", "--head-mask", "hm.npy", "--head", "1"))
    assert res.exit_code == 0 and "head 1 × 0 (head_mask[0][1])" in res.stdout
    assert "note: head 1: head_mask[0][1] = 0, silenced: every probability is exactly 0" in res.stdout
    res = run(*table("--seq-len", "4", "--layer", "self:0:2", "--head-mask", "1,0;0,0", "--head", "1"))
    assert "head 1 × 0 (head_mask[0][1])" in res.stdout and "rows 1 .. 1 are never read" in res.stdout


# ---------------------------------------------------------------------------- pictures
@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_each_format_is_written(run, tmp_path, fmt):
    pytest.importorskip("matplotlib")
    res = run("--config", "small", "--random-init", "--seq-len", "5", "--attention-mask", "1,1,1,0,0",
              "-o", f"cross.{fmt}")
    assert res.exit_code == 0, res.stderr
    assert res.stderr.strip().endswith(f"wrote cross.{fmt}")
    data = (tmp_path / f"cross.{fmt}").read_bytes()
    assert data.startswith({"svg": b"<?xml", "png": b"\x89PNG", "pdf": b"%PDF"}[fmt])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_default_name_and_standard_output(run, tmp_path):
    pytest.importorskip("matplotlib")
    res = run("--config", "small", "--random-init", "--layer", "self:1:block 2", "--head", "0")
    assert res.exit_code == 0 and (tmp_path / "small-attention-self1-block2.svg").exists()
    res = run("--config", "small", "--random-init", "--format", "svg", "-o", "-")
    assert res.exit_code == 0 and res.stdout.startswith("<?xml")
    res = run(*table("-o", "t.txt"))
    assert res.exit_code == 0 and (tmp_path / "t.txt").read_text().startswith("encoder.cross_attention")


def test_missing_matplotlib_is_one_line_with_the_install_command(run, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    _one_error_line(run("--config", "small", "--random-init", "-o", "a.png"),
                    "png output needs matplotlib", "pip install 'npperceiver[plot]'", "--format text")
    assert _no_files(tmp_path)
    assert run(*table()).exit_code == 0  # the table needs nothing


# ---------------------------------------------------------------------------- bad input: one line, no file
@pytest.mark.parametrize("args, words", [
    (["--attention-mask", "1,x,0,1"], ["--attention-mask", "'x' is not a number"]),
    (["--attention-mask", "mask.txt"], ["--attention-mask", "no such file", "'mask.txt'"]),
    (["--attention-mask", "1,1;"], ["--attention-mask", "empty row"]),
    (["--attention-mask", "1,1,1"], ["--attention-mask has 3 values per row", "4 keys", "(--seq-len)"]),
    (["--attention-mask", "1,1,1,1;1,1,1,1"], ["--attention-mask has 2 rows", "B = 1"]),
    (["--attention-mask", "1,1;1,1,0"], ["rows of different lengths (2, 3)"]),
    (["--attention-mask", "1,1,0.5,1"], ["--attention-mask", "1 (keep) or 0 (drop)", "0.5"]),
    (["--latent-mask", "1,1"], ["--latent-mask has 2 values", "3 latents"]),
    (["--head-mask", "1,1,1"], ["--head-mask has 1 row(s) of 3 values", "Hs = 2", "L = 2"]),
    (["--head-mask", "1,1;1,1;1,1"], ["--head-mask has 3 row(s)"]),
    (["--head-mask", "1,nan"], ["head_mask must contain only finite values"]),
    (["--layer", "self:1"], ["'self:1' does not exist", "self:0 .. self:0"]),
    (["--layer", "self:0:block 3"], ["blocks are 1 .. 2"]),
    (["--layer", "cros"], ["cross, self:I, self:I:block J, decoder"]),
    (["--layer", "decoder"], ["--layer decoder needs --text"]),
    (["--head", "2"], ["head '2' does not exist", "2 heads (0 .. 1)"]),
    (["--head", "one"], ["not a head index or 'all'"]),
    (["--example", "1"], ["--example 1 does not exist", "--batch"]),
])
def test_bad_input_is_one_line_and_no_file(run, tmp_path, args, words):
    for fmt in FORMATS:
        res = run("--config", "tiny.json", "--weights", "zeros.npz", "--seq-len", "4", "--format", fmt,
                  "-o", f"out.{'txt' if fmt == 'text' else fmt}", *args)
        _one_error_line(res, *words)
        assert _no_files(tmp_path)


@pytest.mark.parametrize("args, words", [
    (["--text", "hi", "--latent-mask", "1,1,0"], ["--latent-mask", "takes no latent mask"]),
    (["--text", "hi", "--pad-to", "3"], ["--pad-to 3 is shorter than the text (4 tokens"]),
    (["--text", "a long text"], ["13 tokens long", "at most 8"]),
    (["--text", "hi", "--attention-mask", "1,1,1"], ["3 values per row", "4 keys", "[CLS] + 2 bytes + [SEP]"]),
    (["--text", "hi", "--layer", "decoder", "--head", "8"], ["8 heads (0 .. 7)"]),
])
def test_bad_text_input(run, tmp_path, args, words):
    for fmt in FORMATS:
        _one_error_line(run("--config", "tiny.json", "--weights", "mlm-zeros.npz", "--format", fmt,
                            "-o", f"x.{'txt' if fmt == 'text' else fmt}", *args), *words)
        assert _no_files(tmp_path)


@pytest.mark.parametrize("args, words", [
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--text", "hi", "--config", "vocab300.json"], ["vocab_size is 300", "262"]),
    (["--text", "hi", "--config", "positions1.json"], ["4 tokens long", "at most 1"]),
])
def test_text_config_and_seed_errors_name_what_is_wrong(run, tmp_path, args, words):
    base = json.loads((tmp_path / "tiny.json").read_text())
    (tmp_path / "vocab300.json").write_text(json.dumps({**base, "vocab_size": 300}))
    (tmp_path / "positions1.json").write_text(json.dumps({**base, "max_position_embeddings": 1}))
    res = run("--config", "tiny.json", "--random-init", "--format", "text", *args)
    assert res.exit_code in (1, 2) and "Traceback" not in res.output
    assert all(w in res.stderr for w in words), res.stderr


def test_usage_errors_and_bad_weights(run, tmp_path):
    assert run("--config", "tiny.json").exit_code == 2  # neither --weights nor --random-init
    assert run("--config", "tiny.json", "--random-init", "--weights", "zeros.npz").exit_code == 2
    assert run("--config", "tiny.json", "--random-init", "--text", "hi", "--seq-len", "3").exit_code == 2
    assert run("--config", "tiny.json", "--random-init", "--pad-to", "3").exit_code == 2
    _one_error_line(run("--config", "tiny.json", "--weights", "nope.npz", "--format", "text"), "nope.npz")
    _one_error_line(run("--config", "small", "--weights", "zeros.npz", "--format", "text"), "missing")
    assert _no_files(tmp_path)


def test_help_has_examples(run):
    res = run("--help")
    assert res.exit_code == 0 and "Examples:" in res.output and "npperceiver draw-attention --config" in res.output
    for option in ("--attention-mask", "--head-mask", "--latent-mask", "--layer", "--head", "--text", "--format"):
        assert option in res.output


# ---------------------------------------------------------------------------- the docs' pictures
def test_every_docs_picture_is_made_by_a_listed_command_shown_beside_it(tmp_path):
    """Each attention picture in docs/ comes from a draw-attention line in docs/cli.md, which still runs, and
    every page showing the picture prints that command right under it."""
    pytest.importorskip("matplotlib")
    from regen_docs import pictures, run_command

    listed = pictures()
    assert {p for _, p in listed} == {f"docs/images/{f.name}" for f in (ROOT / "docs/images").glob("attention-*")}
    pages = {page.name: page.read_text(encoding="utf-8") for page in (ROOT / "docs").glob("*.md")}
    for command, picture in listed:
        name = Path(picture).name
        shown = {page: text for page, text in pages.items() if f"(images/{name})" in text}
        assert shown, f"{name} is shown on no page"
        expected = " ".join(command.replace(f" -o {picture}", "").split())
        for page, text in shown.items():
            for at in [m.end() for m in re.finditer(re.escape(f"(images/{name})"), text)]:
                caption = re.match(r"\s*\*`([^`]*)`", text[at:])  # *`the command`*, under the picture
                assert caption and " ".join(caption[1].split()) == expected, (page, name, text[at:at + 300])
        out = tmp_path / name
        run_command(command, out)
        assert out.read_bytes().startswith(b"<?xml")
