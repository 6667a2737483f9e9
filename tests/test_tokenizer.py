"""PerceiverTokenizer: ids, padding, truncation and decoding, checked against HF's PerceiverTokenizer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npperceiver.tokenizer import SPECIAL_TOKENS, PerceiverTokenizer

# ------------------------------------------------------------------ strategies
# Arbitrary unicode (hypothesis' default alphabet: every code point but surrogates, so 1- to 4-byte UTF-8),
# with the special-token strings and near misses of them embedded.
_special_like = st.sampled_from(SPECIAL_TOKENS + ("[MASK", "MASK]", "[mask]", "[ MASK]", "[", "]", "[[CLS]]", "[SEP"))
texts = st.lists(st.one_of(st.text(max_size=8), _special_like), max_size=6).map("".join)
paddings = st.sampled_from([False, True, "longest", "max_length", "do_not_pad"])
truncations = st.sampled_from([None, True, False, "longest_first", "only_first", "do_not_truncate"])
max_lengths = st.one_of(st.none(), st.integers(0, 40))
batches = st.one_of(texts, st.lists(texts, min_size=1, max_size=4))


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()  # HF warns about implicit truncation; we test what it does
    return transformers.PerceiverTokenizer(model_max_length=24)


@pytest.fixture(scope="module")
def tok():
    return PerceiverTokenizer(model_max_length=24)


def _hf_call(hf, text, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = hf(text, **kwargs)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# ------------------------------------------------------------------ known values
def test_bytes_specials_and_framing():
    tok = PerceiverTokenizer()
    # "é" is the two bytes C3 A9 -> ids 195+6, 169+6; "€" is E2 82 AC; "😀" is F0 9F 98 80.
    assert tok("é€😀")["input_ids"] == [4, 201, 175, 232, 136, 178, 246, 165, 158, 134, 5]
    assert tok("a[MASK]b")["input_ids"] == [4, 103, 3, 104, 5]
    assert tok("[PAD][BOS][EOS][MASK][CLS][SEP]")["input_ids"] == [4, 0, 1, 2, 3, 4, 5, 5]
    assert tok("[mask]")["input_ids"] == [4] + [b + 6 for b in b"[mask]"] + [5]  # case matters
    assert tok("")["input_ids"] == [4, 5]
    assert tok("ab", add_special_tokens=False)["input_ids"] == [103, 104]


def test_padding_truncation_and_mask_known_values():
    tok = PerceiverTokenizer()
    enc = tok("hi é", padding="max_length", max_length=12)  # measured on HF 4.57.6
    assert enc["input_ids"] == [4, 110, 111, 38, 201, 175, 5, 0, 0, 0, 0, 0]
    assert enc.attention_mask == [1] * 7 + [0] * 5
    enc = tok("hello", max_length=4, truncation=True)
    assert enc["input_ids"] == [4, 110, 107, 5]  # [CLS] and [SEP] survive truncation
    batch = tok(["ab", "c"], padding=True, return_tensors="np")
    np.testing.assert_array_equal(batch["input_ids"], [[4, 103, 104, 5], [4, 105, 5, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 1], [1, 1, 1, 0]])
    assert batch["input_ids"].dtype == np.int64


def test_hf_quirks():
    tok = PerceiverTokenizer()
    assert tok.vocab_size == 256 and len(tok) == 262
    assert tok("hello", max_length=4)["input_ids"] == [4, 110, 107, 5]  # max_length alone truncates ...
    assert len(tok("hello", max_length=4, padding="max_length")["input_ids"]) == 7  # ... but not when padding
    assert len(tok("x", padding="max_length")["input_ids"]) == 2048  # model_max_length
    assert len(tok("x" * 3000, truncation=True)["input_ids"]) == 2048


def test_decode_known_values():
    tok = PerceiverTokenizer()
    assert tok.decode([110, 111, 3, 3, 0]) == "hi[MASK][MASK][PAD]"
    assert tok.decode([110, 111, 3, 3, 0], skip_special_tokens=True) == "hi"
    assert tok.decode([0xC3 + 6, 0x28 + 6, 0xC2 + 6]) == "\ufffd(\ufffd"  # invalid UTF-8 -> U+FFFD
    assert tok.decode(np.array([201, 175])) == "é"
    assert tok.decode(110) == "h"


def test_errors():
    tok = PerceiverTokenizer()
    for bad in (262, -1):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode([110, bad])
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="max")
    with pytest.raises(ValueError, match="truncation"):
        tok("a", truncation=1)
    with pytest.raises(ValueError, match="UTF-8"):
        tok("a\ud800")
    with pytest.raises(ValueError, match="max_length=2"):
        tok("abc", max_length=2, truncation=True)
    with pytest.raises(ValueError, match="text must be"):
        tok(["a", 3])
    with pytest.raises(ValueError, match="non-empty"):
        tok([])


# ------------------------------------------------------------------ parity with HF
@settings(max_examples=300, deadline=None)
@given(text=batches, padding=paddings, truncation=truncations, max_length=max_lengths)
def test_call_matches_hf(hf, tok, text, padding, truncation, max_length):
    kwargs = dict(padding=padding, truncation=truncation, max_length=max_length)
    expected = _hf_call(hf, text, **kwargs)
    try:
        got = tok(text, **kwargs)
    except ValueError as e:
        # We refuse exactly where HF cannot truncate (it logs an error and returns the text untruncated).
        assert "leaves no room" in str(e)
        rows = expected["input_ids"] if not isinstance(text, str) else [expected["input_ids"]]
        assert any(len(r) > max_length for r in rows)
        return
    assert dict(got) == expected


@settings(max_examples=100, deadline=None)
@given(text=texts, add_special_tokens=st.booleans())
def test_ids_match_hf_without_specials_framing(hf, tok, text, add_special_tokens):
    assert tok(text, add_special_tokens=add_special_tokens)["input_ids"] == \
        _hf_call(hf, text, add_special_tokens=add_special_tokens)["input_ids"]


@settings(max_examples=50, deadline=None)
@given(text=batches, padding=st.sampled_from([True, "max_length"]))
def test_numpy_tensors_match_hf(hf, tok, text, padding):
    got = tok(text, padding=padding, max_length=30, truncation=True, return_tensors="np")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = hf(text, padding=padding, max_length=30, truncation=True, return_tensors="np")
    for key in ("input_ids", "attention_mask"):
        assert got[key].dtype == np.int64 and got[key].shape == expected[key].shape
        np.testing.assert_array_equal(got[key], expected[key])


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.integers(0, 261), max_size=20), skip=st.booleans())
def test_decode_matches_hf(hf, tok, ids, skip):
    assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=30))
def test_decode_inverts_encode(tok, text):
    # Every text without special-token strings survives the round trip.
    if any(s in text for s in SPECIAL_TOKENS):
        return
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
