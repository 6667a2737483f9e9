"""The draw-encoder and explain commands, with click's CliRunner: every option and every error path."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from npperceiver_cli import cli
import npperceiver as npp
from npperceiver.trace import encoder_steps, mlm_steps

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    try:  # click 8.1 mixes stderr into output unless told not to; 8.2 keeps them apart and drops the flag
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli.main, list(args))
    return invoke


def _one_error_line(result, *words):
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert all(w in lines[-1] for w in words), lines[-1]


# ---------------------------------------------------------------------------- help and version
def test_help_version_and_examples(run):
    assert run("--version").output.strip() == f"npperceiver, version {npp.__version__}"
    top = run("--help")
    assert top.exit_code == 0 and "draw-encoder" in top.output and "explain" in top.output
    for cmd in ("draw-encoder", "explain"):
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Examples:" in res.output and f"npperceiver {cmd} --config" in res.output
        assert "--model mlm" in res.output


# ---------------------------------------------------------------------------- config lookup
def test_preset_used_when_no_file_and_file_preferred_when_present(run, tmp_path):
    res = run("draw-encoder", "--config", "small.json", "--format", "dot")
    assert res.exit_code == 0, res.stderr
    assert "bundled preset 'small'" in res.stderr and "wrote small-encoder.dot" in res.stderr
    assert (tmp_path / "small-encoder.dot").read_text().startswith("digraph")
    cfg = npp.load_preset("small").to_dict() | {"num_latents": 5}
    (tmp_path / "small.json").write_text(json.dumps(cfg))
    res = run("draw-encoder", "--config", "small.json", "--format", "dot", "-o", "-")
    assert res.exit_code == 0 and "(file)" in res.stderr and "(B, 5, 32)" in res.stdout


@pytest.mark.parametrize("content, words", [
    ("{not json", ["bad.json", "not valid JSON"]),
    ('{"num_latents": 0}', ["num_latents", "positive integer"]),
    ('{"d_latents": 30, "num_self_attention_heads": 4}', ["d_latents", "divisible"]),
    ("[1, 2]", ["mapping"]),
    (b"\xff\xfe\x00garbage", ["bad.json"]),
])
def test_bad_config_files(run, tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for cmd in ("draw-encoder", "explain"):
        res = run(cmd, "--config", "bad.json", *(["--format", "dot"] if cmd == "draw-encoder" else []))
        _one_error_line(res, *words)
    assert not list(tmp_path.glob("*-encoder.*"))


def test_unknown_preset_and_folder(run, tmp_path):
    _one_error_line(run("draw-encoder", "--config", "tiny"), "tiny", "no bundled preset", "small")
    _one_error_line(run("explain", "--config", "nope/small.json"), "nope/small.json")
    (tmp_path / "folder").mkdir()
    _one_error_line(run("explain", "--config", "folder"), "folder")


# ---------------------------------------------------------------------------- output
def test_format_follows_extension_and_stdout(run, tmp_path):
    res = run("draw-encoder", "--config", "small", "-o", "out.dot")
    assert res.exit_code == 0 and (tmp_path / "out.dot").read_text().startswith("digraph")
    res = run("draw-encoder", "--config", "small", "--format", "dot", "-o", "-")
    assert res.exit_code == 0 and res.stdout.startswith("digraph") and "wrote" not in res.stderr


@needs_dot
@pytest.mark.parametrize("name, magic", [("d.svg", b"<?xml"), ("d.png", b"\x89PNG"), ("d.pdf", b"%PDF")])
def test_picture_formats(run, tmp_path, name, magic):
    res = run("draw-encoder", "--config", "small", "-o", name, "--detail", "layer")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / name).read_bytes().startswith(magic)
    assert not list(tmp_path.glob(".*tmp"))


@needs_dot
def test_default_output_is_svg_named_after_the_config(run, tmp_path):
    res = run("draw-encoder", "--config", "small.json")
    assert res.exit_code == 0 and (tmp_path / "small-encoder.svg").read_bytes().startswith(b"<?xml")


def test_unwritable_output_leaves_nothing(run, tmp_path):
    (tmp_path / "afile").write_text("x")
    _one_error_line(run("draw-encoder", "--config", "small", "--format", "dot", "-o", "afile/d.dot"), "afile/d.dot")
    _one_error_line(run("draw-encoder", "--config", "small", "--format", "dot", "-o", "missing/d.dot"),
                    "missing/d.dot")
    (tmp_path / "adir.dot").mkdir()
    _one_error_line(run("draw-encoder", "--config", "small", "-o", "adir.dot"), "adir.dot")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.dot", "afile"]


def test_without_dot_program(run, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    res = run("draw-encoder", "--config", "small", "-o", "d.svg")
    _one_error_line(res, "`dot`", "apt-get install graphviz", "--format dot")
    assert not (tmp_path / "d.svg").exists()
    assert run("draw-encoder", "--config", "small", "--format", "dot").exit_code == 0  # asked for dot: fine


@pytest.mark.parametrize("script, words", [
    ('echo "Error: <stdin>: syntax error in line 1" >&2; exit 1', ["exit code 1", "syntax error in line 1"]),
    ("kill -SEGV $$", ["killed by signal 11", "SIGSEGV"]),
    ("kill -KILL $$", ["killed by signal 9", "SIGKILL"]),
    ('cat > /dev/null; printf "%s" "<svg but not quite"', ["wrote no"]),
    ("cat > /dev/null; head -c 64 /dev/urandom", ["wrote no"]),
])
@pytest.mark.parametrize("name", ["d.svg", "d.png", "d.pdf"])
def test_a_failing_dot_ends_in_one_error_line_and_no_file(run, tmp_path, monkeypatch, script, words, name):
    """Graphviz's `dot` failing, crashing or printing garbage: one line, exit 1, nothing written."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dot").write_text("#!/bin/sh\n" + script + "\n")
    (bin_dir / "dot").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    res = run("draw-encoder", "--config", "small", "-o", name)
    _one_error_line(res, "Graphviz could not draw the " + name[-3:], *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


@needs_dot
@pytest.mark.parametrize("args", [[], ["--unroll", "--detail", "layer"], ["--model", "mlm", "--hide-masks"]])
def test_format_dot_is_the_picture(run, tmp_path, args):
    """The DOT text --format dot writes is the picture: `dot -Tsvg` of it is the svg the command writes."""
    assert run("draw-encoder", "--config", "small", *args, "-o", "d.dot").exit_code == 0
    assert run("draw-encoder", "--config", "small", *args, "-o", "d.svg").exit_code == 0
    drawn = subprocess.run(["dot", "-Tsvg", "d.dot"], capture_output=True, check=True, cwd=tmp_path).stdout
    assert drawn == (tmp_path / "d.svg").read_bytes()


# ---------------------------------------------------------------------------- drawing options
def test_drawing_options_reach_the_drawing(run):
    def dot(*args):
        res = run("draw-encoder", "--config", "small", "--format", "dot", "-o", "-", *args)
        assert res.exit_code == 0, res.stderr
        return res.stdout
    plain = dot()
    assert '"self1/layer"' in plain and "cluster_block1" not in plain and "(B, M, 24)" in plain
    assert '"block1/self1/layer"' in dot("--unroll") and "cluster_block1" in dot("--unroll")
    assert 'PORT="self0.query"' in dot("--detail", "op") and 'PORT="self0.query"' not in dot("--detail", "layer")
    assert "(3, 9, 24)" in dot("--batch", "3", "--seq-len", "9")
    assert "(3, M, 24)" in dot("--batch", "3")
    hidden = dot("--hide-masks")
    assert not {"inputs_mask", "head_mask", "latent_mask", "attention_mask"} & set(re.findall(r"\w*mask\w*", hidden))


@pytest.mark.parametrize("args", [["--batch", "0"], ["--seq-len", "-2"], ["--detail", "ops"], ["--format", "gif"],
                                  []])
def test_usage_errors_exit_2(run, args):
    res = run("draw-encoder", *(["--config", "small"] if args else []), *args)
    assert res.exit_code == 2


# ---------------------------------------------------------------------------- explain
def assert_rows_are_the_steps(stdout: str, steps) -> None:
    """One table row per step, in order: its number, HF module, output shape and mask."""
    rows = [line for line in stdout.splitlines() if line[:1].isdigit()]
    assert len(rows) == len(steps)
    for i, (row, s) in enumerate(zip(rows, steps)):
        cells = row.split()
        assert cells[0] == str(i) and cells[1] == s.module
        assert f"({', '.join(map(str, s.shape))}{',' if len(s.shape) == 1 else ''})" in row
        assert s.mask in row if s.mask else True


def test_explain_lists_every_step_in_order(run):
    res = run("explain", "--config", "small", "--batch", "2", "--seq-len", "5", "--full")
    assert res.exit_code == 0, res.stderr
    assert_rows_are_the_steps(res.stdout, encoder_steps(npp.load_preset("small"), batch=2, seq_len=5))
    assert "head_mask[1]" in res.stdout and "-- encoder.self_attends.1, block 2 of 2" in res.stdout


def test_explain_symbolic_by_default(run):
    res = run("explain", "--config", "language-perceiver", "--full")
    assert res.exit_code == 0 and "(B, 8, 256, M)" in res.stdout and "sqrt(32)" in res.stdout


# ---------------------------------------------------------------------------- --model mlm
def test_mlm_drawing_defaults_to_layer_detail_and_its_own_name(run, tmp_path):
    res = run("draw-encoder", "--config", "small", "--model", "mlm", "--format", "dot")
    assert res.exit_code == 0, res.stderr
    assert "wrote small-mlm.dot" in res.stderr
    dot = (tmp_path / "small-mlm.dot").read_text()
    for text in ('"decoder/layer"', '"self0/layer"', 'PORT="text.input_ids"', '"output/logits" [',
                 "no mask: HF passes query_mask", "(B, 64, 262)", "(8 heads,"):
        assert text in dot, text
    assert 'PORT="decoder.softmax"' not in dot and "latent_mask" not in dot
    op = run("draw-encoder", "--config", "small", "--model", "mlm", "--detail", "op", "--format", "dot", "-o", "-")
    assert op.exit_code == 0 and 'PORT="decoder.softmax"' in op.stdout and 'PORT="cross.inputs_mask"' in op.stdout
    numeric = run("draw-encoder", "--config", "small", "--model", "mlm", "--batch", "2", "--seq-len", "7",
                  "--format", "dot", "-o", "-")
    assert "(2, 7, 24)" in numeric.stdout and "(2, 64, 262)" in numeric.stdout


@needs_dot
def test_mlm_picture(run, tmp_path):
    res = run("draw-encoder", "--config", "small.json", "--model", "mlm")
    assert res.exit_code == 0 and (tmp_path / "small-mlm.svg").read_bytes().startswith(b"<?xml")


def test_mlm_refuses_unsuitable_configs_in_one_line(run, tmp_path):
    cfg = npp.load_preset("small").to_dict() | {"d_model": 20}
    (tmp_path / "odd.json").write_text(json.dumps(cfg))
    for cmd in ("draw-encoder", "explain"):
        _one_error_line(run(cmd, "--config", "odd.json", "--model", "mlm", *(["--format", "dot"] * (cmd != "explain"))),
                        "odd.json", "d_model", "divisible by 8", "20")
        assert run(cmd, "--config", "odd.json", *(["--format", "dot"] * (cmd != "explain"))).exit_code == 0
    _one_error_line(run("explain", "--config", "small", "--model", "mlm", "--seq-len", "65"),
                    "seq_len", "max_position_embeddings = 64")
    assert not list(tmp_path.glob("*-mlm.*"))
    assert run("draw-encoder", "--config", "small", "--model", "gpt").exit_code == 2


def test_explain_mlm_lists_every_step_in_order(run):
    res = run("explain", "--config", "small", "--model", "mlm", "--batch", "2", "--seq-len", "5", "--full")
    assert res.exit_code == 0, res.stderr
    assert_rows_are_the_steps(res.stdout, mlm_steps(npp.load_preset("small"), batch=2, seq_len=5))
    out = res.stdout
    assert out.startswith("Perceiver IO masked language model forward pass: small.json") and "V=262 P=64" in out
    for heading in ("-- perceiver.input_preprocessor", "-- perceiver.decoder: the output queries",
                    "-- perceiver.decoder.decoding_cross_attention", "-- embedding_decoder", "-- the encoder's result"):
        assert heading in out, heading
    assert "(2, 64, 262)" in out and "attention_mask," not in out  # no latent mask in the MLM
