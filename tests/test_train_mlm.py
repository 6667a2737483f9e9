"""``npperceiver train-mlm`` and the pretraining pieces under it (``npperceiver/pretraining.py``).

A smoke run on a tiny config must lower the loss and leave a checkpoint that fill-mask loads without
--config; --resume must continue exactly (bit for bit) where an interrupted run stopped; Ctrl-C (SIGINT)
must leave the last checkpoint intact and no temporary file; bad input gets one error line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import npperceiver as npp
from npperceiver import pretraining
from npperceiver.tokenizer import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS, SEP_ID
from npperceiver_cli.cli import main

from helpers import interrupt_update

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_latents=8, d_latents=16, d_model=16, num_blocks=1, num_self_attends_per_block=1,
            num_self_attention_heads=2, num_cross_attention_heads=2, max_position_embeddings=32, vocab_size=262)
SENTENCES = ["the cat sat on the mat.", "a dog ran to the park.", "the bird sang in the tree.",
             "she read a book by the fire.", "he drank tea in the garden."]


def corpus(n: int = 400) -> bytes:
    """A repetitive English-like text (a tiny model can learn its words fast), one sentence per line."""
    rng = np.random.default_rng(0)
    return "\n".join(SENTENCES[i] for i in rng.integers(0, len(SENTENCES), n)).encode() + b"\n"


@pytest.fixture
def files(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(corpus())
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    return tmp_path, text, config


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def train(files, out: str, *extra: str):
    folder, text, config = files
    return run("train-mlm", "--config", config, "--text", text, "-o", folder / out, "--batch-size", 8,
               "--eval-windows", 16, "--seed", 3, *extra)


def history(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def assert_one_error_line(result, code: int, pattern: str) -> None:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), result.stderr


def no_temporary_files(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------- the pieces
def test_words_are_whitespace_then_other_bytes():
    ids = pretraining.frame(pretraining.byte_ids(b"ab  cd\ne")[None])  # [CLS] a b _ _ c d \n e [SEP]
    assert pretraining.word_index(ids).tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2, 2]]


def test_mask_words_masks_whole_words_80_10_10():
    text = corpus(4000)
    windows = pretraining.sample_windows(pretraining.byte_ids(text), 512, 30, np.random.default_rng(0))
    masked, labels = pretraining.mask_words(windows, 32, np.random.default_rng(1))  # (512, 30), (512, 32)
    assert masked.shape == (512, 30) and labels.shape == (512, 32)
    assert np.all(labels[:, 30:] == -100) and np.all(labels[:, [0, 29]] == -100)  # beyond M, [CLS], [SEP]
    assert np.all(masked[:, 0] == CLS_ID) and np.all(masked[:, 29] == SEP_ID)
    chosen = labels[:, :30] != -100
    np.testing.assert_array_equal(labels[:, :30][chosen], windows[chosen])  # labels are the original bytes
    assert np.all(masked[~chosen] == windows[~chosen])  # unchosen bytes are untouched
    word = pretraining.word_index(windows)
    for row in range(50):  # every byte of a word shares its fate: all chosen or none, one replacement kind
        for w in np.unique(word[row, 1:-1]):
            at = (word[row] == w) & (windows[row] >= NUM_SPECIAL_TOKENS)
            assert len(set(chosen[row, at])) == 1
            if chosen[row, at].all():
                kinds = {"mask" if m == MASK_ID else "same" if m == o else "random"
                         for m, o in zip(masked[row, at], windows[row, at])}
                assert kinds in ({"mask"}, {"same"}, {"random"}, {"random", "same"})  # a random byte may hit
    words = [(r, w) for r in range(512) for w in np.unique(word[r, 1:-1])]
    picked = [(r, w) for r, w in words if chosen[r, (word[r] == w) & (windows[r] >= NUM_SPECIAL_TOKENS)].all()]
    assert 0.12 < len(picked) / len(words) < 0.18  # 15% of the words
    as_mask = [p for p in picked if (masked[p[0]][word[p[0]] == p[1]] == MASK_ID).any()]
    assert 0.74 < len(as_mask) / len(picked) < 0.86  # 80% become [MASK]


def test_masking_draws_the_same_amount_whatever_the_text():
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    pretraining.mask_words(pretraining.frame(np.full((4, 10), 40)), 12, a)  # one long word
    pretraining.mask_words(pretraining.frame(pretraining.byte_ids(b"a b c d e ")[None].repeat(4, 0)), 12, b)
    assert a.random() == b.random()


def test_split_corpus_starts_the_heldout_part_at_a_paragraph():
    text = b"one two.\n\nthree four.\nfive six.\n\nseven eight nine.\n"
    train, heldout = pretraining.split_corpus(text, 0.4)
    assert train + heldout == text and heldout == b"seven eight nine.\n"
    assert pretraining.split_corpus(text, 0.0) == (text, b"")
    assert pretraining.split_corpus(text, 0.4) == (train, heldout)  # fixed: nothing random


def test_evaluate_matches_the_models_loss():
    model = npp.PerceiverForMaskedLM.init(npp.PerceiverConfig.from_dict(TINY), seed=0)
    ids, labels = pretraining.heldout_set(corpus(50), 20, 32, count=6)
    result = pretraining.evaluate(model, ids, labels, batch_size=4)  # two batches, weighted by their bytes
    assert result.count == int((labels != -100).sum())
    assert result.loss == pytest.approx(float(model(ids, labels=labels).loss), rel=1e-5)


# ---------------------------------------------------------------------- the command
def test_smoke_run_lowers_the_loss_and_fill_mask_loads_it(files):
    folder, _, _ = files
    result = train(files, "mlm.safetensors", "--steps", 40, "--lr", 3e-3, "--eval-every", 20, "--log",
                   folder / "log.csv")
    assert result.exit_code == 0, result.output
    assert "held-out loss" in result.stdout and "masked-byte accuracy" in result.stdout
    rows = history(folder / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(41))
    heldout = [float(r["heldout_loss"]) for r in rows if r["heldout_loss"]]
    assert len(heldout) == 3 and heldout[-1] < heldout[0] - 0.5, heldout
    train_loss = [float(r["train_loss"]) for r in rows[1:]]
    assert np.mean(train_loss[-5:]) < np.mean(train_loss[:5]) - 0.5
    assert no_temporary_files(folder)

    metadata = npp.load_metadata(folder / "mlm.safetensors")
    assert pretraining.is_checkpoint(metadata) and metadata["step"] == "40"
    config = pretraining.config_from_metadata(metadata)
    assert config.to_dict() == npp.PerceiverConfig.from_dict(TINY).to_dict()
    weights = pretraining.model_weights(npp.load_weights(folder / "mlm.safetensors"))
    model = npp.PerceiverForMaskedLM.from_state_dict(config, weights)  # the HF key names, nothing else

    masked = "the cat sat on the" + "[MASK]" * 4
    filled = run("fill-mask", "--weights", folder / "mlm.safetensors", "--top-k", 1, masked)
    assert filled.exit_code == 0, filled.output
    assert "config: saved in" in filled.stderr
    ids = np.array([npp.PerceiverTokenizer()(masked)["input_ids"]])
    greedy = model(ids).logits[0, 19:23].argmax(-1)
    assert f"greedy {npp.PerceiverTokenizer().decode(greedy)!r}" in filled.stdout

    drawn = run("draw-attention", "--config", files[2], "--weights", folder / "mlm.safetensors", "--text", "the cat",
                "--format", "text")  # another loader of MLM weights: the training state is left out
    assert drawn.exit_code == 0 and "latents attend to the inputs" in drawn.stdout, drawn.output

    mismatch = run("fill-mask", "--weights", folder / "mlm.safetensors", "--config", "small", "a[MASK]")
    assert_one_error_line(mismatch, 1, r"--config small differs from the config saved in .*mlm.safetensors")


def test_resume_continues_exactly_where_the_run_stopped(files, monkeypatch):
    folder, _, _ = files
    options = ("--steps", 10, "--save-every", 4, "--eval-every", 3)
    whole = train(files, "whole.safetensors", *options, "--log", folder / "whole.csv")
    assert whole.exit_code == 0, whole.output

    interrupt_update(monkeypatch, pretraining, 6)  # Ctrl-C during the sixth update: the checkpoint holds step 4
    stopped = train(files, "part.safetensors", *options, "--log", folder / "part.csv")
    assert_one_error_line(stopped, 130, r"interrupted at step 5; .*part.safetensors holds step 4, the last checkpoint.*--resume")
    assert npp.load_metadata(folder / "part.safetensors")["step"] == "4"
    assert no_temporary_files(folder)
    monkeypatch.undo()

    resumed = run("train-mlm", "--text", files[1], "--resume", folder / "part.safetensors",
                  "-o", folder / "part.safetensors", "--log", folder / "part.csv")
    assert resumed.exit_code == 0, resumed.output
    assert "trained steps 4-10 of 10" in resumed.stdout
    a, b = npp.load_weights(folder / "whole.safetensors"), npp.load_weights(folder / "part.safetensors")
    assert list(a) == list(b)
    for name in a:  # weights, AdamW moments, step count, history: bit for bit
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    ma, mb = npp.load_metadata(folder / "whole.safetensors"), npp.load_metadata(folder / "part.safetensors")
    assert ma == mb  # same step, random state and settings
    assert (folder / "whole.csv").read_text() == (folder / "part.csv").read_text()


def test_sigint_leaves_the_last_checkpoint_intact_and_no_temporary_file(files):
    folder, text, config = files
    out = folder / "mlm.safetensors"
    process = subprocess.Popen(
        [sys.executable, "-m", "npperceiver", "train-mlm", "--config", str(config), "--text", str(text),
         "-o", str(out), "--steps", "100000", "--save-every", "1", "--eval-every", "1000", "--batch-size", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert out.exists(), process.communicate()[1].decode()
        time.sleep(0.3)  # a few more checkpoints: the signal is likely to land during a write
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = stderr.decode()
    assert process.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "interrupted at step" in errors[0] and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in folder.iterdir()) == ["corpus.txt", "mlm.safetensors", "tiny.json"]
    metadata = npp.load_metadata(out)
    state = pretraining.restore(npp.load_weights(out), metadata)  # complete and consistent
    assert state.step >= 1 and f"holds step {state.step}" in errors[0]


@pytest.mark.parametrize("content, pattern", [
    (None, r"--text .*missing.txt: no such file"),
    (b"", r"--text .* is empty"),
    (b"  \n\n ", r"--text .* is empty \(whitespace only\)"),
    (b"a short text.\n", r"training part has .* bytes, fewer than one window of 30 bytes"),
])
def test_bad_text(files, content, pattern):
    folder, _, config = files
    path = folder / "missing.txt"
    if content is not None:
        path.write_bytes(content)
    result = run("train-mlm", "--config", config, "--text", path, "-o", folder / "m.safetensors", "--steps", 2)
    assert_one_error_line(result, 1, pattern)
    assert not (folder / "m.safetensors").exists()


def test_resume_refuses_a_file_of_the_wrong_kind(files):
    folder, text, config = files
    tiny = npp.PerceiverConfig.from_dict(TINY)
    npp.save_weights(folder / "weights.safetensors", npp.PerceiverForMaskedLM.init(tiny).state_dict())
    npp.save_weights(folder / "encoder.safetensors", npp.PerceiverModel.init(tiny).state_dict())
    args = ("train-mlm", "--text", text, "-o", folder / "out.safetensors")
    assert_one_error_line(run(*args, "--resume", folder / "weights.safetensors"), 1,
                          r"not a train-mlm checkpoint \(PerceiverForMaskedLM weights without optimizer state\); "
                          r"to start a new run from its weights, use --weights")
    assert_one_error_line(run(*args, "--resume", folder / "encoder.safetensors"), 1,
                          r"not a train-mlm checkpoint \(PerceiverModel weights")
    assert_one_error_line(run(*args, "--resume", folder / "nope.safetensors"), 1, "no such file")
    assert_one_error_line(run(*args, "--weights", folder / "encoder.safetensors", "--config", config), 1,
                          r"holds PerceiverModel \(encoder-only\) weights, not a masked language model's")
    assert_one_error_line(run(*args, "--weights", folder / "weights.safetensors"), 1,
                          r"carries no config .* pass --config")
    assert not (folder / "out.safetensors").exists()


def test_resume_keeps_the_runs_settings_and_text(files):
    folder, text, _ = files
    assert train(files, "run.safetensors", "--steps", 4).exit_code == 0
    args = ("train-mlm", "--resume", folder / "run.safetensors", "-o", folder / "run.safetensors", "--steps", 6)
    assert_one_error_line(run(*args, "--text", text, "--batch-size", 16), 1,
                          r"--batch-size 16 differs from the resumed run's 8")
    other = folder / "other.txt"
    other.write_bytes(corpus()[::-1])
    assert_one_error_line(run(*args, "--text", other), 1, r"--text is not the text the run was trained on")
    done = run("train-mlm", "--resume", folder / "run.safetensors", "-o", folder / "run.safetensors", "--text", text)
    assert_one_error_line(done, 1, r"at step 4, the end of its 4 steps: nothing to do")


def test_output_must_be_safetensors(files):
    folder, text, config = files
    result = run("train-mlm", "--config", config, "--text", text, "-o", folder / "m.npz")
    assert result.exit_code == 2 and "must end in .safetensors" in result.stderr


# ---------------------------------------------------------------------- the bundled text and the loss curve
def test_bundled_text_is_the_documented_file():
    import hashlib

    data = (ROOT / "data" / "alice.txt").read_bytes()
    assert hashlib.sha256(data).hexdigest() == "f17aa0bf7466424a8b357b688678666bad7a0148963ef349016a3098faa6bd1e"
    train_part, heldout = pretraining.split_corpus(data, 0.1)
    assert len(train_part) == 136_244 and heldout.startswith("“I’m glad I’ve seen that done,”".encode())


def test_loss_curve_is_read_from_the_log_and_drawn(files):
    from npperceiver.viz.training import read_history, render_history

    folder, _, _ = files
    assert train(files, "m.safetensors", "--steps", 6, "--eval-every", 3, "--log", folder / "log.csv").exit_code == 0
    history = read_history((folder / "log.csv").read_text())
    assert history.steps == [1, 2, 3, 4, 5, 6] and history.eval_steps == [0, 3, 6]
    assert len(history.train_loss) == 6 and all(0 <= a <= 1 for a in history.heldout_accuracy)
    with pytest.raises(ValueError, match="a train-mlm log has the columns"):
        read_history("step,loss\n1,2\n")
    pytest.importorskip("matplotlib")
    svg = render_history(history, smoothing=2)
    assert svg.startswith(b"<?xml") and b"held-out loss" in svg


def test_adamw_finiteness_check_is_exact():
    """AdamW checks gradients with one dot product first; entries whose squares overflow float32 are still
    finite (accepted), and a single NaN or inf anywhere is still refused, naming the count."""
    model = npp.PerceiverForMaskedLM.init(npp.PerceiverConfig.from_dict(TINY), seed=0)
    grads = {k: np.zeros_like(v) for k, v in model.state_dict().items()}
    name = "embedding_decoder.bias"
    grads[name][0] = 3e30  # its square overflows float32
    with np.errstate(over="ignore"):  # AdamW's own second moment overflows too, as torch's would
        npp.AdamW(model).step(grads)
    for bad in (np.nan, np.inf, -np.inf):
        grads[name][1] = bad
        with pytest.raises(ValueError, match=f"gradient of {name} has 1 non-finite value"):
            npp.AdamW(model).step(grads)


def test_a_missing_output_folder_is_refused_before_any_training(files, monkeypatch):
    folder, _, _ = files
    calls = []
    monkeypatch.setattr(pretraining, "train_step", lambda *a, **k: calls.append(1) or (0.0, 0.0))
    result = train(files, "no-such-folder/m.safetensors")
    assert_one_error_line(result, 1, r"cannot write .*m\.safetensors: no folder .*no-such-folder")
    assert calls == []  # refused before the first update, not at the first checkpoint


def test_batch_size_has_a_bound(files):
    result = train(files, "m.safetensors", "--batch-size", 10**9)
    assert result.exit_code == 2 and "not in the range 1<=x<=4096" in result.output


def test_held_out_windows_without_a_masked_byte_are_one_error_line(tmp_path):
    text = tmp_path / "short.txt"
    text.write_bytes((ROOT / "data" / "alice.txt").read_bytes()[:3000])
    result = run("train-mlm", "--config", "small", "--text", text, "--steps", 1, "--batch-size", 2, "--seq-len", 16,
                 "--eval-windows", 2, "-o", tmp_path / "m.safetensors")
    assert_one_error_line(result, 1, r"held-out windows \(--eval-windows 2\) have no masked byte to score")
    assert not (tmp_path / "m.safetensors").exists()


def test_resume_names_a_train_translate_checkpoint(files):
    from test_cli_translate import checkpoint  # a translation checkpoint of the tiny model

    folder, _, _ = files
    checkpoint(folder / "t.safetensors")
    result = run("train-mlm", "--text", files[1], "--resume", folder / "t.safetensors", "-o", folder / "m.safetensors")
    assert_one_error_line(result, 1, r"is a train-translate checkpoint .*train-translate --resume")
