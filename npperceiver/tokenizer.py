"""PerceiverTokenizer: text <-> raw UTF-8 byte ids, in plain Python.

Mirrors HF ``PerceiverTokenizer`` (``tokenization_perceiver.py``, transformers 4.57.6) together with the
parts of ``PreTrainedTokenizer`` / ``PreTrainedTokenizerBase`` it relies on (special-token splitting,
truncation, padding, decoding). The Perceiver IO language model has no learned vocabulary: a text is
its UTF-8 bytes.

* ids 0-5 are the special tokens ``[PAD] [BOS] [EOS] [MASK] [CLS] [SEP]``;
* byte ``b`` (0-255) is id ``b + 6``, so the model's vocabulary has 262 entries;
* a text is framed as ``[CLS] bytes [SEP]``;
* the six special-token strings are recognised *inside* the text: ``"a[MASK]b"`` -> ``[4, 103, 3, 104, 5]``
  (so a text cannot contain the literal characters ``[MASK]`` as bytes);
* decoding joins the bytes (special tokens as their strings) and decodes them with
  ``errors="replace"``: an invalid UTF-8 sequence becomes U+FFFD.

>>> tok = PerceiverTokenizer()
>>> tok("hi é", padding="max_length", max_length=12)
{'input_ids': [4, 110, 111, 38, 201, 175, 5, 0, 0, 0, 0, 0], 'attention_mask': [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]}
>>> tok.decode([110, 111, 3, 3])
'hi[MASK][MASK]'

HF QUIRKS reproduced here:

* ``tok.vocab_size`` is 256 (the bytes only) while ``len(tok)`` and the model's ``config.vocab_size`` are 262;
* with ``max_length`` given, ``padding=False`` and ``truncation`` left at ``None``, the text *is*
  truncated (HF warns "Truncation was not explicitly activated..."); ``truncation=False`` stops it, and
  so does ``padding="do_not_pad"`` (HF tests ``padding is False``);
* ``padding="max_length"`` without truncation leaves a longer text untouched (longer than ``max_length``);
* ``padding="max_length"`` or ``truncation=True`` without ``max_length`` use ``model_max_length`` (2048).

One deliberate difference: where HF would have to remove the whole text (and more) to truncate to
``max_length`` -- ``max_length`` of 2 or less with a non-empty text -- HF logs an error and returns the
text *untruncated*; npperceiver raises a ``ValueError`` instead.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

#: The special tokens, in id order (HF ``PerceiverTokenizer._added_tokens_decoder``).
SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]")
PAD_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID = range(6)
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)  # byte b has id b + 6
#: ``len(tokenizer)``: 6 special tokens + 256 bytes (= ``PerceiverConfig.vocab_size``).
VOCAB_SIZE = NUM_SPECIAL_TOKENS + 256

# HF splits the text on its added tokens with a trie; no special token overlaps another (each starts
# with "[" and ends with "]"), so a left-to-right regex finds the same pieces.
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
_PADDING = {False: "do_not_pad", "do_not_pad": "do_not_pad", True: "longest", "longest": "longest",
            "max_length": "max_length"}
_TRUNCATION = {None: None, False: False, "do_not_truncate": False, True: True, "longest_first": True,
               "only_first": True}


class BatchEncoding(dict):
    """What the tokenizer returns: a dict ``{"input_ids": ..., "attention_mask": ...}`` whose keys
    can also be read as attributes (``enc.input_ids``), like HF's ``BatchEncoding``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class PerceiverTokenizer:
    """HF ``PerceiverTokenizer``: UTF-8 bytes + 6 special tokens. Call it like HF's tokenizer.

    Parameters
    ----------
    model_max_length : the length used by ``padding="max_length"`` and ``truncation=True`` when no
        ``max_length`` is given (HF's default, 2048 = the language model's ``max_position_embeddings``).
    """

    pad_token, bos_token, eos_token, mask_token, cls_token, sep_token = SPECIAL_TOKENS
    pad_token_id, bos_token_id, eos_token_id, mask_token_id, cls_token_id, sep_token_id = range(6)
    all_special_tokens = list(SPECIAL_TOKENS)
    all_special_ids = list(range(NUM_SPECIAL_TOKENS))
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, model_max_length: int = 2048) -> None:
        if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 2:
            raise ValueError(f"model_max_length must be an integer >= 2, got {model_max_length!r}")
        self.model_max_length = model_max_length

    @property
    def vocab_size(self) -> int:
        """HF QUIRK: 256, the bytes only; ``len(tokenizer)`` (262) is what the model's vocabulary needs."""
        return 256

    def __len__(self) -> int:
        return VOCAB_SIZE

    def __repr__(self) -> str:
        return f"PerceiverTokenizer(model_max_length={self.model_max_length})"

    # ------------------------------------------------------------------ text -> ids
    def tokenize(self, text: str) -> list[int]:
        """The ids of ``text`` without ``[CLS]``/``[SEP]``: special-token strings -> 0..5, other bytes -> b + 6.

        HF ``PreTrainedTokenizer.tokenize`` + ``convert_tokens_to_ids`` (tokens are single bytes there).
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        start = 0
        for match in _SPECIAL_RE.finditer(text):
            ids.extend(_byte_ids(text[start:match.start()]))
            ids.append(SPECIAL_TOKENS.index(match.group()))
            start = match.end()
        ids.extend(_byte_ids(text[start:]))
        return ids

    def build_inputs_with_special_tokens(self, ids: Sequence[int]) -> list[int]:
        """HF's single-sequence framing: ``[CLS] ids [SEP]``."""
        return [CLS_ID, *ids, SEP_ID]

    def __call__(
        self,
        text: Union[str, Sequence[str]],
        padding: Union[bool, str] = False,
        max_length: Optional[int] = None,
        truncation: Union[bool, str, None] = None,
        add_special_tokens: bool = True,
        return_tensors: Optional[str] = None,
    ) -> BatchEncoding:
        """Encode one text or a list of texts -- HF ``PreTrainedTokenizerBase.__call__``.

        Parameters
        ----------
        text : a str, or a list of str (a batch).
        padding : ``False`` / ``"do_not_pad"``; ``True`` / ``"longest"`` (to the longest text of the batch);
            ``"max_length"`` (to ``max_length``, default ``model_max_length``). Padding goes on the right
            with ``[PAD]`` (id 0) and attention-mask 0.
        max_length : the length to pad or truncate to, special tokens included.
        truncation : ``True`` / ``"longest_first"`` / ``"only_first"`` cut the text on the right so that
            ``[CLS] text [SEP]`` fits in ``max_length``; ``False`` / ``"do_not_truncate"`` never cut;
            ``None`` (HF's default) cuts only when ``max_length`` is given and ``padding`` is ``False``.
        add_special_tokens : frame with ``[CLS]`` ... ``[SEP]`` (HF's default ``True``).
        return_tensors : ``None`` (lists) or ``"np"``: int64 arrays of shape (B, L), B = 1 for a single text
            (texts of a batch must then have equal lengths).

        Returns a :class:`BatchEncoding` with ``input_ids`` and ``attention_mask`` (1 = real token, 0 = padding):
        lists of ints for one text, lists of such lists for a batch.
        """
        if not _is_option(padding, _PADDING):
            raise ValueError(f"padding must be False, True, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if not _is_option(truncation, _TRUNCATION):
            raise ValueError(
                f"truncation must be None, True, False, 'longest_first', 'only_first' or 'do_not_truncate', "
                f"got {truncation!r}"
            )
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 0):
            raise ValueError(f"max_length must be a non-negative integer or None, got {max_length!r}")
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be None or 'np', got {return_tensors!r}")
        pad_mode, truncate = _PADDING[padding], _TRUNCATION[truncation]

        # HF _get_padding_truncation_strategies: max_length alone switches truncation on (only with
        # padding=False itself, not "do_not_pad") ...
        if max_length is not None and padding is False and truncate is None:
            truncate = True
        # ... and a strategy without a length falls back to model_max_length.
        if max_length is None and (pad_mode == "max_length" or truncate):
            max_length = self.model_max_length

        batched = not isinstance(text, str)
        if batched:
            if not isinstance(text, (list, tuple)) or not text or not all(isinstance(t, str) for t in text):
                raise ValueError("text must be a str or a non-empty list of str")
            texts = list(text)
        else:
            texts = [text]

        sequences = []
        for t in texts:
            ids = self.tokenize(t)
            n_special = 2 if add_special_tokens else 0
            if truncate and max_length and len(ids) + n_special > max_length:  # HF: `max_length and ...`
                remove = len(ids) + n_special - max_length
                if remove >= len(ids):  # HF logs an error and does not truncate; we refuse
                    raise ValueError(
                        f"max_length={max_length} leaves no room for the text: [CLS] and [SEP] take 2 of it, "
                        f"and truncation would have to drop all {len(ids)} text token(s); use max_length >= 3"
                    )
                ids = ids[:-remove]  # truncation_side "right"
            sequences.append(self.build_inputs_with_special_tokens(ids) if add_special_tokens else list(ids))

        if pad_mode == "longest":
            target = max((len(s) for s in sequences), default=0)
        elif pad_mode == "max_length":
            target = max_length
        else:
            target = 0
        input_ids = [s + [PAD_ID] * max(0, target - len(s)) for s in sequences]  # padding_side "right"
        attention_mask = [[1] * len(s) + [0] * max(0, target - len(s)) for s in sequences]

        if return_tensors == "np":  # (B, L) arrays; one text gets a batch axis of 1, as in HF
            if len({len(s) for s in input_ids}) > 1:
                raise ValueError("return_tensors='np' needs texts of equal length: use padding=True")
            return BatchEncoding(input_ids=np.array(input_ids, dtype=np.int64).reshape(len(input_ids), -1),
                                 attention_mask=np.array(attention_mask, dtype=np.int64).reshape(len(input_ids), -1))
        if not batched:
            input_ids, attention_mask = input_ids[0], attention_mask[0]
        return BatchEncoding(input_ids=input_ids, attention_mask=attention_mask)

    # ------------------------------------------------------------------ ids -> text
    def convert_ids_to_tokens(self, ids: Union[int, Iterable[int]]) -> Union[str, list[str]]:
        """HF ``convert_ids_to_tokens``: special ids -> ``"[MASK]"`` etc., byte ids -> ``chr(byte)``."""
        if isinstance(ids, (int, np.integer)):
            return self.convert_ids_to_tokens([ids])[0]
        return [SPECIAL_TOKENS[i] if i < NUM_SPECIAL_TOKENS else chr(i - NUM_SPECIAL_TOKENS)
                for i in _check_ids(ids)]

    def decode(self, token_ids: Union[int, Iterable[int]], skip_special_tokens: bool = False) -> str:
        """HF ``decode``: join the bytes (special tokens as their strings) and decode UTF-8 with
        ``errors="replace"`` -- invalid byte sequences become U+FFFD. Ids outside 0..261 are a ``ValueError``.
        """
        if isinstance(token_ids, (int, np.integer)):
            token_ids = [token_ids]
        out = bytearray()
        for i in _check_ids(token_ids):
            if i >= NUM_SPECIAL_TOKENS:
                out.append(i - NUM_SPECIAL_TOKENS)
            elif not skip_special_tokens:
                out += SPECIAL_TOKENS[i].encode("ascii")
        return out.decode("utf-8", errors="replace")

    def batch_decode(self, sequences: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
        """:meth:`decode` for each sequence."""
        return [self.decode(s, skip_special_tokens=skip_special_tokens) for s in sequences]


def _is_option(value: Any, options: dict) -> bool:
    """``value`` is one of the keys of ``options`` (``1`` is not ``True`` here)."""
    return (value is None or isinstance(value, (bool, str))) and value in options


def _byte_ids(text: str) -> list[int]:
    """The ids of ``text``'s UTF-8 bytes (HF ``_tokenize`` + ``_convert_token_to_id``)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates cannot be UTF-8
        raise ValueError(f"text cannot be encoded as UTF-8: {e}") from None
    return [b + NUM_SPECIAL_TOKENS for b in data]


def _check_ids(ids: Iterable[Any]) -> list[int]:
    """Ids as Python ints, each in 0..261, else a ``ValueError`` naming the first bad one."""
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.size == 0:
        return []
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"token ids must be a 1-D sequence of integers, got {arr.dtype} array of shape {arr.shape}")
    bad = (arr < 0) | (arr >= VOCAB_SIZE)
    if bad.any():
        raise ValueError(f"token id {int(arr[bad][0])} is out of range: ids run from 0 to {VOCAB_SIZE - 1}")
    return [int(i) for i in arr]
