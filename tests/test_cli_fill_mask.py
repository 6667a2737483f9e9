"""``npperceiver fill-mask`` and ``npperceiver convert-checkpoint``: output, weights paths, and errors
(one line on stderr, exit 1 -- 2 for usage -- and never a traceback)."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import npperceiver as npp
from npperceiver_cli.cli import main

SMALL = npp.load_preset("small")  # d_model 24, max_position_embeddings 64
HF_EXAMPLE = "This is an incomplete sentence where some words are" + "[MASK]" * 9  # HF's " missing." masked


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_clean_error(result, code: int, pattern: str) -> None:
    """Exit ``code``, nothing on stdout, exactly one error line on stderr matching ``pattern`` (besides the
    notice saying which config was used)."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no uncaught exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("config: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), result.stderr
    assert result.stdout == ""


def _peaked_weights(config, seed: int) -> dict[str, np.ndarray]:
    """O(1) random weights: predictions are peaked, so the top-1 of each position is well defined."""
    rng = np.random.default_rng(seed)
    model = npp.PerceiverForMaskedLM.init(config)
    return {k: (rng.standard_normal(v.shape) / (1 if v.ndim == 1 else np.sqrt(v.shape[-1]))).astype(np.float32)
            for k, v in model.state_dict().items()}


def _expected_greedy(config, state_dict, text: str) -> tuple[list[int], np.ndarray]:
    """The masked positions and the argmax of the model's logits there, computed without the CLI."""
    tok = npp.PerceiverTokenizer()
    ids = np.array(tok(text)["input_ids"])
    logits = npp.PerceiverForMaskedLM.from_state_dict(config, state_dict)(ids[None]).logits[0]
    positions = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    return positions, logits[positions].argmax(-1)


# ---------------------------------------------------------------------- fill-mask
def test_random_init_runs_and_says_so():
    result = run("fill-mask", "--config", "small", "--random-init", "--seed", "3", "--top-k", "4", HF_EXAMPLE)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("note: random weights") and "seed 3" in lines[0]
    model = npp.PerceiverForMaskedLM.init(SMALL, seed=3)
    _, greedy = _expected_greedy(SMALL, model.state_dict(), HF_EXAMPLE)
    assert lines[1] == "filled: " + repr(HF_EXAMPLE[:-54] + npp.PerceiverTokenizer().decode(greedy))
    assert lines[2].startswith("span 1: input positions 52-60 (9 masked bytes)")  # HF's example: ids 52:61
    rows = lines[3:]
    assert [int(r.split(":")[0]) for r in rows] == list(range(52, 61))
    assert all(len(r.split(":", 1)[1].split()) == 2 * 4 for r in rows)  # 4 (token, probability) pairs


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_weights_file_gives_the_models_predictions(tmp_path, suffix):
    sd = _peaked_weights(SMALL, seed=1)
    path = tmp_path / f"mlm{suffix}"
    npp.save_weights(path, sd)
    text = "ab[MASK][MASK]cd[MASK]e"
    result = run("fill-mask", "--weights", str(path), "--config", "small", "--top-k", "2", text)
    assert result.exit_code == 0, result.output
    assert "random" not in result.stdout
    positions, greedy = _expected_greedy(SMALL, sd, text)
    assert positions == [3, 4, 7]
    spans = [line for line in result.stdout.splitlines() if line.startswith("span")]
    assert [s.split(",")[0] for s in spans] == ["span 1: input positions 3-4 (2 masked bytes)",
                                               "span 2: input positions 7-7 (1 masked bytes)"]
    tok = npp.PerceiverTokenizer()
    assert spans[0].endswith(f"greedy {tok.decode(greedy[:2])!r}")
    assert spans[1].endswith(f"greedy {tok.decode(greedy[2:])!r}")


def test_config_json_path(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(SMALL.to_dict(), max_position_embeddings=16)))
    assert run("fill-mask", "--config", str(path), "--random-init", "[MASK]").exit_code == 0
    assert_clean_error(run("fill-mask", "--config", str(path), "--random-init", "x" * 15 + "[MASK]"),
                       1, r"18 tokens long .* at most 16 \(max_position_embeddings\)")


def test_missing_weights_file(tmp_path):
    assert_clean_error(run("fill-mask", "--weights", str(tmp_path / "nope.safetensors"), "--config", "small", "a[MASK]"),
                       1, "nope.safetensors")


@pytest.mark.parametrize("name, content", [("bad.safetensors", b"not a safetensors file"),
                                           ("bad.npz", b"PK\x03\x04 truncated zip")])
def test_corrupt_weights_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert_clean_error(run("fill-mask", "--weights", str(path), "--config", "small", "a[MASK]"), 1, name)


def test_weights_for_another_config(tmp_path):
    path = tmp_path / "encoder.safetensors"
    npp.save_weights(path, npp.PerceiverModel.init(SMALL).state_dict())  # an encoder, not an MLM
    assert_clean_error(run("fill-mask", "--weights", str(path), "--config", "small", "a[MASK]"),
                       1, r"PerceiverModel \(encoder-only\) weights")


def test_text_longer_than_the_model_accepts():
    assert_clean_error(run("fill-mask", "--config", "small", "--random-init", "x" * 70 + "[MASK]"),
                       1, r"73 tokens long \(\[CLS\] \+ 71 bytes \+ \[SEP\]\) .* at most 64")


def test_text_without_mask():
    assert_clean_error(run("fill-mask", "--config", "small", "--random-init", "no mask here"), 1, "no \\[MASK\\]")


@pytest.mark.parametrize("args", [["a[MASK]"], ["--random-init", "--weights", "w.npz", "a[MASK]"]])
def test_weights_xor_random_init_is_a_usage_error(args):
    result = run("fill-mask", "--config", "small", *args)
    assert result.exit_code == 2 and "exactly one of --weights FILE and --random-init" in result.stderr


@pytest.mark.parametrize("config, pattern", [("no-such-preset", "no bundled preset of that name"),
                                             ("missing/config.json", "no such file")])
def test_bad_config(config, pattern):
    assert_clean_error(run("fill-mask", "--config", config, "--random-init", "a[MASK]"), 1, pattern)


def test_config_that_cannot_be_an_mlm(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(dict(SMALL.to_dict(), d_model=12)))
    assert_clean_error(run("fill-mask", "--config", str(path), "--random-init", "a[MASK]"), 1, "divisible by 8")


# ---------------------------------------------------------------------- convert-checkpoint
@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A random HF PerceiverForMaskedLM saved the way the Hub's pytorch_model.bin is (torch.save of the
    state dict), with its config.json."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.PerceiverConfig(**{k: v for k, v in SMALL.to_dict().items()})
    hf = transformers.PerceiverForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) / (1 if p.ndim == 1 else p.shape[-1] ** 0.5))
    folder = tmp_path_factory.mktemp("hub")
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    cfg.to_json_file(folder / "config.json")
    return folder, hf


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_convert_checkpoint_then_fill_mask_matches_hf(hf_checkpoint, tmp_path, suffix):
    import torch

    folder, hf = hf_checkpoint
    out = tmp_path / f"language-perceiver{suffix}"
    result = run("convert-checkpoint", str(folder / "pytorch_model.bin"), str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {len(hf.state_dict())} tensors")
    loaded = npp.load_weights(out)
    assert list(loaded) == list(hf.state_dict())
    for k, v in hf.state_dict().items():
        np.testing.assert_array_equal(loaded[k], v.numpy())
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind

    text = "The [MASK][MASK][MASK] sat on the mat."
    result = run("fill-mask", "--weights", str(out), "--config", str(folder / "config.json"), "--top-k", "1", text)
    assert result.exit_code == 0, result.output
    tok = npp.PerceiverTokenizer()
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        hf_greedy = hf(input_ids=ids).logits[0, 5:8].argmax(-1).tolist()
    assert f"greedy {tok.decode(hf_greedy)!r}" in result.stdout


def test_convert_checkpoint_errors(tmp_path, hf_checkpoint):
    folder, _ = hf_checkpoint
    result = run("convert-checkpoint", str(folder / "pytorch_model.bin"), str(tmp_path / "out.pt"))
    assert result.exit_code == 2 and "must end in .safetensors or .npz" in result.stderr
    assert_clean_error(run("convert-checkpoint", str(tmp_path / "nope.bin"), str(tmp_path / "o.npz")),
                       1, "does not exist")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"garbage, not a zip or a pickle")
    assert_clean_error(run("convert-checkpoint", str(bad), str(tmp_path / "o.npz")), 1, "cannot read .*bad.bin")
    assert not (tmp_path / "o.npz").exists()


def test_convert_checkpoint_without_torch(tmp_path, monkeypatch):
    source = tmp_path / "pytorch_model.bin"
    source.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert_clean_error(run("convert-checkpoint", str(source), str(tmp_path / "o.safetensors")),
                       1, "needs PyTorch.*pip install torch")
