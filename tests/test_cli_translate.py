"""``npperceiver train-translate`` and ``npperceiver translate``.

A smoke run on a tiny model must lower the loss and leave a checkpoint that translate loads; --resume must
continue exactly (bit for bit) where an interrupted run stopped; translate reads TEXT arguments or standard
input, forgives what is unambiguous, and gives one error line for anything else.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import npperceiver as npp
from npperceiver import pretraining, translation
from npperceiver.tasks import get_task
from npperceiver_cli.cli import main

from helpers import interrupt_update
from test_translation import TINY_ENCODER, tiny_config

TINY = dict(encoder=TINY_ENCODER, d_decoder=16, num_decoder_heads=2)


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def assert_one_error_line(result, code: int, pattern: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), result.stderr
    assert result.stdout == ""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def train(tmp_path, tiny, out: str, *extra):
    return run("train-translate", "--task", "digits-to-words", "--config", tiny, "-o", tmp_path / out,
               "--batch-size", 16, "--seed", 5, *extra)


def checkpoint(path, task: str = "digits-to-words", decoder: str = "autoregressive") -> None:
    """An untrained translation checkpoint of the tiny model."""
    settings = dict(task=task, decoder=decoder, steps=1, lr=2e-3, weight_decay=0.01)
    state = translation.new_state(task, decoder, 0, settings, tiny_config(task, decoder))
    npp.save_weights(path, translation.checkpoint_tensors(state), translation.checkpoint_metadata(state))


# ---------------------------------------------------------------------- train-translate
def test_smoke_run_lowers_the_loss_and_translate_loads_it(tmp_path, tiny):
    result = train(tmp_path, tiny, "m.safetensors", "--steps", 40, "--lr", 3e-3, "--eval-every", 20)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("held-out exact match") == 3  # before, at 20, at 40
    assert "trained steps 0-40 of 40" in result.stdout and "wrote" in result.stdout
    tensors, metadata = npp.load_weights(tmp_path / "m.safetensors"), npp.load_metadata(tmp_path / "m.safetensors")
    state = translation.restore(tensors, metadata)
    assert state.step == 40 and len(state.train_loss) == 40
    assert [row[0] for row in state.evaluations] == [0, 20, 40]
    assert np.mean(state.train_loss[-5:]) < np.mean(state.train_loss[:5]) - 0.5, state.train_loss
    assert state.model.config.to_dict() == tiny_config().to_dict()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left

    translated = run("translate", "--weights", tmp_path / "m.safetensors", "7", "42", "700005")
    assert translated.exit_code == 0, translated.output
    expected = translation.translate_numbers(state.model, get_task("digits-to-words"), np.array([7, 42, 700005]))
    assert translated.stdout == "".join(get_task("digits-to-words").decode_target(r) + "\n" for r in expected)


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, tiny, monkeypatch):
    options = ("--steps", 8, "--eval-every", 3, "--decoder", "autoregressive")
    whole = train(tmp_path, tiny, "whole.safetensors", *options)
    assert whole.exit_code == 0, whole.output

    interrupt_update(monkeypatch, translation, 5)  # Ctrl-C during the fifth update: the checkpoint holds step 3
    stopped = train(tmp_path, tiny, "part.safetensors", *options)
    assert_one_error_line(stopped, 130, r"interrupted at step 4; .*part.safetensors holds step 3, the last "
                                        r"checkpoint.*--resume")
    monkeypatch.undo()
    resumed = run("train-translate", "--resume", tmp_path / "part.safetensors", "-o", tmp_path / "part.safetensors")
    assert resumed.exit_code == 0, resumed.output
    assert "trained steps 3-8 of 8" in resumed.stdout
    a, b = npp.load_weights(tmp_path / "whole.safetensors"), npp.load_weights(tmp_path / "part.safetensors")
    assert list(a) == list(b)
    for name in a:  # weights, AdamW moments, step count, history: bit for bit
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert npp.load_metadata(tmp_path / "whole.safetensors") == npp.load_metadata(tmp_path / "part.safetensors")

    args = ("train-translate", "--resume", tmp_path / "part.safetensors", "-o", tmp_path / "x.safetensors")
    assert_one_error_line(run(*args), 1, r"at step 8, the end of its 8 steps: nothing to do")
    assert_one_error_line(run(*args, "--steps", 9, "--batch-size", 4), 1,
                          r"--batch-size 4 differs from the resumed run's 16")
    with_config = run(*args, "--steps", 9, "--config", tiny)
    assert with_config.exit_code == 2 and "at most one of --config" in with_config.stderr
    assert_one_error_line(run(*args, "--steps", 9, "--task", "words-to-digits"), 1,
                          r"--task words-to-digits differs from the resumed run's digits-to-words")


def test_stop_at_target_stops_after_two_evaluations_at_the_target(tmp_path, tiny, monkeypatch):
    perfect = translation.Evaluation(1.0, {d: 1.0 for d in range(1, 7)}, 1611)
    monkeypatch.setattr(translation, "evaluate", lambda *args, **kwargs: perfect)
    result = train(tmp_path, tiny, "m.safetensors", "--steps", 20, "--eval-every", 2, "--stop-at-target")
    assert result.exit_code == 0, result.output
    assert "trained steps 0-2 of 20" in result.stdout and "stopped at the target" in result.stdout
    assert "first met at step 0" in result.stdout
    assert translation.restore(npp.load_weights(tmp_path / "m.safetensors"),
                               npp.load_metadata(tmp_path / "m.safetensors")).step == 2


def test_train_translate_usage_errors(tmp_path, tiny):
    out = tmp_path / "m.safetensors"
    missing = run("train-translate", "-o", out)
    assert missing.exit_code == 2 and "Missing option '--task'" in missing.stderr
    npz = run("train-translate", "--task", "digits-to-words", "-o", tmp_path / "m.npz")
    assert npz.exit_code == 2 and "must end in .safetensors" in npz.stderr
    assert_one_error_line(run("train-translate", "--task", "digits-to-words", "--steps", 5, "--warmup", 6, "-o", out),
                          1, r"--warmup 6 is longer than --steps 5")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "d_decoder": 15}))
    assert_one_error_line(run("train-translate", "--task", "digits-to-words", "--config", bad, "-o", out), 1,
                          r"--config .*bad.json: d_decoder \(15\) must be divisible by num_decoder_heads \(2\)")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**TINY, "decoder": "queries"}))
    assert_one_error_line(run("train-translate", "--task", "digits-to-words", "--config", wrong, "-o", out), 1,
                          r"its decoder is 'queries', but --decoder is 'autoregressive'")
    assert not out.exists()


def test_resume_refuses_a_file_that_is_not_a_train_translate_checkpoint(tmp_path):
    tiny = npp.PerceiverConfig(**{**TINY_ENCODER, "max_position_embeddings": 32})
    mlm = npp.PerceiverForMaskedLM.init(tiny)
    state = pretraining.TrainingState(mlm, npp.AdamW(mlm), np.random.default_rng(0), 0, {}, [], [])
    npp.save_weights(tmp_path / "mlm.safetensors", pretraining.checkpoint_tensors(state),
                     pretraining.checkpoint_metadata(state))
    result = run("train-translate", "--resume", tmp_path / "mlm.safetensors", "-o", tmp_path / "o.safetensors")
    assert_one_error_line(result, 1, r"--resume .*mlm.safetensors: it is a train-mlm checkpoint")


# ---------------------------------------------------------------------- translate
@pytest.fixture
def oracle(monkeypatch):
    """translate with a perfect translator in place of the model's greedy decoding: the CLI's reading and
    writing of texts, measured against the task's own answers."""
    def perfect(model, task, numbers, chunk=512):
        return task.batch(numbers).target_ids
    monkeypatch.setattr(translation, "translate_numbers", perfect)


def test_translate_arguments_and_stdin(tmp_path, oracle):
    checkpoint(tmp_path / "d2w.safetensors", "digits-to-words")
    checkpoint(tmp_path / "w2d.safetensors", "words-to-digits", "queries")
    d2w = run("translate", "--weights", tmp_path / "d2w.safetensors", "0", "15", "42", "3412", "700005", " 007 ",
              "12,345")
    assert d2w.exit_code == 0, d2w.output
    assert d2w.stdout == ("zero\nfifteen\nforty two\nthree thousand four hundred twelve\nseven hundred thousand five\n"
                          "seven\ntwelve thousand three hundred forty five\n")
    piped = run("translate", "--weights", tmp_path / "d2w.safetensors",
                input="0\n15\n42\n3412\n700005\n 007 \n12,345\n")
    assert piped.exit_code == 0 and piped.stdout == d2w.stdout
    w2d = run("translate", "--weights", tmp_path / "w2d.safetensors",
              input="forty two\nSeven Hundred  Thousand five\r\nforty-two\none hundred and five\nzero\n")
    assert w2d.exit_code == 0, w2d.output
    assert w2d.stdout == "42\n700005\n42\n105\n0\n"


def test_translate_untrained_model_prints_its_own_greedy_output(tmp_path):
    checkpoint(tmp_path / "d2w.safetensors", "digits-to-words")
    first = run("translate", "--weights", tmp_path / "d2w.safetensors", "42", "999999", "1")
    second = run("translate", "--weights", tmp_path / "d2w.safetensors", input="42\n999999\n1\n")
    assert first.exit_code == 0 and second.exit_code == 0, first.output
    assert first.stdout == second.stdout and first.stdout.count("\n") == 3
    words = set(get_task("digits-to-words").target_vocab.tokens)
    for line in first.stdout.splitlines():  # words from the vocabulary, single spaces
        assert line == " ".join(line.split()) and set(line.split()) <= words


@pytest.mark.parametrize("task, text, pattern", [
    ("digits-to-words", "4a2", r"TEXT '4a2': .* character\(s\) 'a' outside the digits-to-words source alphabet"),
    ("digits-to-words", "-5", r"character\(s\) '-' outside"),
    ("digits-to-words", "1000000", r"out of range: the model translates 0 to 999,999"),
    ("digits-to-words", "1,00", r"commas may only separate groups of three digits"),
    ("digits-to-words", "  ", r"TEXT '  ': it is empty"),
    ("words-to-digits", "forty 2", r"character\(s\) '2' outside the words-to-digits source alphabet"),
    ("words-to-digits", "fourty two", r"'fourty' is not a number word"),
    ("words-to-digits", "twenty zero", r"'twenty zero' is not how a number"),
    ("words-to-digits", "two hundreds", r"'hundreds' is not a number word"),
    ("words-to-digits", "and", r"has no number word"),
])
def test_translate_bad_text(tmp_path, task, text, pattern):
    checkpoint(tmp_path / "m.safetensors", task)
    assert_one_error_line(run("translate", "--weights", tmp_path / "m.safetensors", "--",
                              "1" if task[0] == "d" else "one", text), 1, pattern)


def test_translate_bad_stdin(tmp_path):
    checkpoint(tmp_path / "m.safetensors")
    weights = ("translate", "--weights", tmp_path / "m.safetensors")
    assert_one_error_line(run(*weights, input="12\n\n13\n"), 1, r"line 2 of standard input: it is empty")
    assert_one_error_line(run(*weights, input=""), 1, r"standard input is empty")
    assert_one_error_line(run(*weights, input=b"12\n\xff\n"), 1, r"standard input is not UTF-8")


def test_translate_refuses_files_that_are_not_translation_models(tmp_path):
    tiny = npp.PerceiverConfig(**{**TINY_ENCODER, "max_position_embeddings": 32})
    npp.save_weights(tmp_path / "mlm.safetensors", npp.PerceiverForMaskedLM.init(tiny).state_dict())
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    for name, pattern in [("mlm", r"masked-language-model \(PerceiverForMaskedLM\) weights .*not a translation model"),
                          ("junk", r"junk.safetensors"), ("missing", r"does not exist")]:
        assert_one_error_line(run("translate", "--weights", tmp_path / f"{name}.safetensors", "1"), 1,
                              rf"--weights .*{name}.safetensors: .*{pattern}")


# ---------------------------------------------------------------------- draw-attention on a translation checkpoint
def test_draw_attention_reads_a_checkpoints_config_and_weights(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint(path, "words-to-digits", "queries")
    result = run("draw-attention", "--model", "seq2seq", "--weights", path, "--text", "forty two", "--head", "0",
                 "--format", "text")
    assert result.exit_code == 0, result.output
    # the checkpoint's own model -- the queries decoder of words-to-digits: its 7 output queries are the rows
    assert result.stdout.startswith("decoder.decoding_cross_attention")
    assert "rows: 7 target positions" in result.stdout
    # and its own weights: the first row is the checkpoint model's head-0 probabilities for this source
    model = translation.load_model(str(path))
    task = get_task("words-to-digits")
    ids, keep = task.encode_sources(["forty two"])
    out = model(ids, keep, task.encode_targets([task.target_tokens(42)]), output_attentions=True)
    probs = out.cross_attentions[-1][0, 0, 0]  # (N,): query 0 over the latents
    table = result.stdout.split("head 0\n", 1)[1].splitlines()
    first_row = [float(x) for x in table[1].split()[1:]]
    np.testing.assert_allclose(first_row, probs, atol=6e-4)


def test_draw_attention_refuses_a_file_that_is_not_a_translation_checkpoint(tmp_path):
    path = tmp_path / "w.safetensors"
    npp.save_weights(path, {"x": np.zeros(2, np.float32)})
    result = run("draw-attention", "--model", "seq2seq", "--weights", path, "--text", "42", "--format", "text")
    assert_one_error_line(result, 1, r"--weights .*w\.safetensors: .*not a translation model.*--task/--config")


def test_resume_refuses_a_model_saved_without_its_optimizer(tmp_path):
    # docs/models/digits-to-words.safetensors is such a file: a checkpoint with the optimizer state left out
    path = tmp_path / "m.safetensors"
    checkpoint(path)
    tensors = {k: v for k, v in npp.load_weights(path).items() if not k.startswith(pretraining.OPTIMIZER_PREFIX)}
    npp.save_weights(path, tensors, npp.load_metadata(path))
    assert translation.load_model(str(path)).config.task == "digits-to-words"  # usable to translate
    result = run("train-translate", "--resume", path, "-o", tmp_path / "out.safetensors")
    assert_one_error_line(result, 1, r"--resume .*: it holds the model but no optimizer state .*nothing to resume")
    assert not (tmp_path / "out.safetensors").exists()


def test_draw_attention_with_task_reads_a_checkpoints_weights_without_its_optimizer(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint(path, "digits-to-words", "autoregressive")
    config = tmp_path / "tiny-config.json"
    config.write_text(json.dumps(dict(translation.load_model(str(path)).config.to_dict())))
    result = run("draw-attention", "--model", "seq2seq", "--config", config, "--weights", path, "--text", "42",
                 "--format", "text")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("decoder.layers.0.cross_attention")


def test_train_translate_checks_its_output_folder_and_batch_size_first(tmp_path, tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(translation, "train_step", lambda *a, **k: calls.append(1) or (0.0, 0.0))
    result = train(tmp_path, tiny, "no-such-folder/m.safetensors")
    assert_one_error_line(result, 1, r"no folder .*no-such-folder")
    assert calls == []
    result = run("train-translate", "--task", "digits-to-words", "--batch-size", 10**9,
                 "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 2 and "not in the range 1<=x<=4096" in result.output
