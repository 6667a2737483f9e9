"""The toy translation tasks: integers 0 <= n <= 999,999 between two unrelated tokenisations.

``digits-to-words``: the source is the decimal digits of n as UTF-8 bytes (no leading zeros, no
separators); the target is n in English words, one token per word -- lowercase, no "and", no hyphens,
tens and units as separate words, ``zero`` for 0::

    15     -> fifteen
    42     -> forty two
    3412   -> three thousand four hundred twelve
    700005 -> seven hundred thousand five

``words-to-digits`` is the reverse: the source is the words as UTF-8 bytes, joined by single spaces; the
target is one token per digit.

Everything here is deterministic and needs numpy and the standard library only.

Tokenisations
-------------
Sources are bytes, with the ids of :class:`~npperceiver.tokenizer.PerceiverTokenizer` (byte b is id b + 6,
``[PAD]`` is 0; vocabulary 262) and no ``[CLS]``/``[SEP]`` framing: the encoder reads the raw bytes, and a
keep-mask marks the padding. Targets are word or digit tokens of a small :class:`Vocabulary` that shares
the tokenizer's first three special ids: ``[PAD]`` 0, ``[BOS]`` 1 (starts an autoregressive decoder's
input), ``[EOS]`` 2 (ends every target). The word vocabulary has 30 words (33 ids), the digit vocabulary
10 digits (13 ids).

The held-out set, and why it looks the way it does
--------------------------------------------------
Users type short numbers as often as long ones, so accuracy is measured on every digit length 1-6 -- on
numbers the model never saw in training. The difficulty is the short lengths: there are only 10 one-digit
and 90 two-digit numbers. :data:`HELD_OUT_STRATA` fixes the split:

* length 1: 2 of the nine numbers 1-9. Zero is never held out: ``zero`` occurs in no other number, so a
  model that never saw 0 could not know the word (or, in the other direction, read it);
* length 2: one number from each decade 10-19, 20-29, ..., 90-99 (9 in all), so the teens and every tens
  word are tested once;
* lengths 3-6: 100, 500, 500 and 500 numbers.

Within each stratum the numbers held out are the ones with the smallest :func:`number_hash` (a fixed
integer hash, the same on every machine and numpy version). 1,611 numbers in all; both directions hold out
the same numbers.

This makes short lengths a test of generalisation, not of memory: a held-out "7" was never a training
source, but ``seven`` is learnt from "27", "107", "7000" and many more, and the teens and tens words from
the hundreds and thousands that end or start with them. The price is granularity: 99 % of 2 or 9 or 100
examples means every one of them, so on lengths 1-3 the target is no error at all. The rest of each short
length is trained on (8 one-digit and 81 two-digit numbers), so a model that reaches the target also
translates every short number correctly -- tests and docs report the exhaustive accuracy on lengths 1-2
as well.

Training numbers
----------------
:meth:`NumberSplit.sample` draws the digit length uniformly from 1-6, then a number uniformly among the
*training* numbers of that length (never a held-out one, without rejection). A uniform draw from 0..999,999
would be 90 % six-digit numbers, and the short ones would hardly be seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .tokenizer import NUM_SPECIAL_TOKENS, PAD_ID, VOCAB_SIZE

TASKS = ("digits-to-words", "words-to-digits")
MAX_NUMBER = 999_999
MAX_DIGITS = 6  # digit lengths run 1 .. MAX_DIGITS

#: Target special ids, shared with ``PerceiverTokenizer``'s ``[PAD]``, ``[BOS]`` and ``[EOS]``.
BOS_ID, EOS_ID = 1, 2
NUM_TARGET_SPECIALS = 3
#: The source vocabulary: ``PerceiverTokenizer``'s byte ids (6 special tokens + 256 bytes).
SOURCE_VOCAB_SIZE = VOCAB_SIZE

_SMALL = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")  # 20, 30, ..., 90
WORDS = _SMALL + _TENS + ("hundred", "thousand")  # the 30 words of the word vocabulary, in id order
DIGITS = tuple("0123456789")


# ---------------------------------------------------------------------- numbers <-> words
def _below_thousand(k: int) -> list[str]:
    """1 <= k <= 999 in words: ``[units, "hundred"]`` then the last two digits (teen, or tens [units])."""
    hundreds, rest = divmod(k, 100)
    words = [_SMALL[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        tens, units = divmod(rest, 10)
        words.append(_TENS[tens - 2])
        if units:
            words.append(_SMALL[units])
    elif rest:
        words.append(_SMALL[rest])
    return words


def _check_number(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"n must be an integer in [0, {MAX_NUMBER:,}], got {n!r}")
    return int(n)


def number_to_words(n: int) -> list[str]:
    """n (0 <= n <= 999,999) in English words: ``number_to_words(3412)`` ->
    ``['three', 'thousand', 'four', 'hundred', 'twelve']``."""
    n = _check_number(n)
    if n == 0:
        return ["zero"]
    thousands, rest = divmod(n, 1000)
    words = _below_thousand(thousands) + ["thousand"] if thousands else []
    return words + (_below_thousand(rest) if rest else [])


def words_to_number(words: "str | Sequence[str]") -> int:
    """The inverse of :func:`number_to_words`, for the canonical spelling only.

    ``words`` is a list of words or a string of words separated by single spaces. Anything that
    :func:`number_to_words` would not produce ("one hundred and five", "twenty zero", "ten hundred",
    two spaces) is a ``ValueError``.
    """
    tokens = words.split(" ") if isinstance(words, str) else list(words)
    value = {w: i for i, w in enumerate(_SMALL)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
    total, group = 0, 0
    for word in tokens:
        if word in value:
            group += value[word]
        elif word == "hundred":
            group *= 100
        elif word == "thousand":
            total, group = total + group * 1000, 0
        else:
            raise ValueError(f"{word!r} is not a number word (expected one of: {', '.join(WORDS)})")
    n = total + group
    if n > MAX_NUMBER or number_to_words(n) != tokens:
        shown = " ".join(tokens)
        raise ValueError(f"{shown!r} is not how a number 0-{MAX_NUMBER:,} is written in this task")
    return n


def digit_length(n: "int | np.ndarray") -> "int | np.ndarray":
    """The number of decimal digits of n (0 has one); works elementwise on integer arrays."""
    if isinstance(n, np.ndarray):
        return 1 + (n >= 10) + (n >= 100) + (n >= 1000) + (n >= 10_000) + (n >= 100_000)
    return len(str(_check_number(n)))


def length_range(length: int) -> tuple[int, int]:
    """The numbers with ``length`` digits, as ``range`` bounds: 1 -> (0, 10), 2 -> (10, 100), ..."""
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_DIGITS:
        raise ValueError(f"length must be an integer in [1, {MAX_DIGITS}], got {length!r}")
    return (0 if length == 1 else 10 ** (length - 1)), 10 ** length


# ---------------------------------------------------------------------- target vocabularies
@dataclass(frozen=True)
class Vocabulary:
    """A target vocabulary: ``[PAD]`` 0, ``[BOS]`` 1, ``[EOS]`` 2, then ``tokens`` from id 3."""

    tokens: tuple[str, ...]
    separator: str  # how decoded tokens are joined into text: " " for words, "" for digits

    @property
    def size(self) -> int:
        """Number of ids, the special ones included."""
        return NUM_TARGET_SPECIALS + len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Tokens -> ids, with ``[EOS]`` appended."""
        index = {t: i + NUM_TARGET_SPECIALS for i, t in enumerate(self.tokens)}
        ids = []
        for t in tokens:
            if t not in index:
                raise ValueError(f"{t!r} is not in the target vocabulary ({', '.join(self.tokens)})")
            ids.append(index[t])
        return ids + [EOS_ID]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> tokens, up to (not including) the first ``[EOS]``; ``[PAD]`` and ``[BOS]`` are skipped."""
        tokens = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if NUM_TARGET_SPECIALS <= i < self.size:
                tokens.append(self.tokens[i - NUM_TARGET_SPECIALS])
            elif i not in (PAD_ID, BOS_ID):
                raise ValueError(f"id {i} is not in the target vocabulary (0..{self.size - 1})")
        return tokens


WORD_VOCAB = Vocabulary(WORDS, " ")
DIGIT_VOCAB = Vocabulary(DIGITS, "")


# ---------------------------------------------------------------------- the two tasks
@dataclass
class TranslationBatch:
    """A batch of examples as the model reads them.

    ``source_ids`` (B, M) byte ids padded with ``[PAD]`` to the longest source of the batch;
    ``source_mask`` (B, M) 1 for a real byte, 0 for padding (the encoder's ``attention_mask``);
    ``target_ids`` (B, T) target ids, ``[EOS]`` after the last token, then ``[PAD]`` up to
    T = ``max_target_length``; ``numbers`` (B,) the integers they spell.
    """

    source_ids: np.ndarray
    source_mask: np.ndarray
    target_ids: np.ndarray
    numbers: np.ndarray


@dataclass(frozen=True)
class Task:
    """One direction of the toy task: how a number becomes a source text and a target token list."""

    name: str
    source_alphabet: str  # every character a source text may contain
    target_vocab: Vocabulary
    max_source_length: int  # bytes of the longest source text
    max_target_length: int  # tokens of the longest target, [EOS] included

    def source_text(self, n: int) -> str:
        """The source text of n: its digits, or its words joined by single spaces."""
        return str(_check_number(n)) if self.name == "digits-to-words" else " ".join(number_to_words(n))

    def target_tokens(self, n: int) -> list[str]:
        """The target tokens of n: its words, or its digits."""
        return number_to_words(n) if self.name == "digits-to-words" else list(str(_check_number(n)))

    def target_text(self, n: int) -> str:
        """The target as text: words joined by single spaces, digits joined without."""
        return self.target_vocab.separator.join(self.target_tokens(n))

    def encode_sources(self, texts: Sequence[str], padding_side: str = "right") -> tuple[np.ndarray, np.ndarray]:
        """Source texts -> byte ids (B, M) padded with ``[PAD]`` and the keep-mask (B, M).

        ``padding_side="right"``: M is the longest text, bytes from position 0, padding after them.
        ``"left"``: M is :attr:`max_source_length`, padding first, so every text *ends* at position M - 1
        (the last digit, the last word always sit at the same positions).
        A text that is empty, too long, or has a character outside :attr:`source_alphabet` is a
        ``ValueError`` naming it.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        encoded = []
        for text in texts:
            bad = sorted(set(text) - set(self.source_alphabet))
            if bad:
                raise ValueError(f"{text!r} has character(s) {''.join(bad)!r} outside the {self.name} source "
                                 f"alphabet {self.source_alphabet!r}")
            if not text or len(text) > self.max_source_length:
                raise ValueError(f"a {self.name} source must have 1 to {self.max_source_length} characters, "
                                 f"got {len(text)} ({text!r})")
            encoded.append([b + NUM_SPECIAL_TOKENS for b in text.encode("utf-8")])
        if not encoded:
            raise ValueError("no source texts to encode")
        M = max(len(ids) for ids in encoded) if padding_side == "right" else self.max_source_length
        ids = np.full((len(encoded), M), PAD_ID, dtype=np.int64)  # (B, M)
        for row, seq in zip(ids, encoded):
            if padding_side == "right":
                row[: len(seq)] = seq
            else:
                row[M - len(seq):] = seq
        return ids, (ids != PAD_ID).astype(np.int64)  # (B, M), (B, M)

    def encode_targets(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """Target token lists -> ids (B, T) with ``[EOS]`` then ``[PAD]`` up to T = ``max_target_length``."""
        ids = np.full((len(token_lists), self.max_target_length), PAD_ID, dtype=np.int64)  # (B, T)
        for row, tokens in zip(ids, token_lists):
            seq = self.target_vocab.encode(tokens)
            if len(seq) > self.max_target_length:
                raise ValueError(f"target {tokens!r} is longer than {self.max_target_length - 1} tokens")
            row[: len(seq)] = seq
        return ids

    def decode_target(self, ids: Iterable[int]) -> str:
        """Target ids -> text, up to the first ``[EOS]`` (words joined by spaces, digits without)."""
        return self.target_vocab.separator.join(self.target_vocab.decode(ids))

    def batch(self, numbers: Iterable[int], padding_side: str = "right") -> TranslationBatch:
        """Source and target ids of the given numbers (see :class:`TranslationBatch`); ``padding_side`` as in
        :meth:`encode_sources`."""
        numbers = np.asarray([_check_number(n) for n in numbers], dtype=np.int64)  # (B,)
        source_ids, source_mask = self.encode_sources([self.source_text(n) for n in numbers], padding_side)
        target_ids = self.encode_targets([self.target_tokens(n) for n in numbers])
        return TranslationBatch(source_ids, source_mask, target_ids, numbers)


def get_task(name: str) -> Task:
    """The task called ``name`` (``"digits-to-words"`` or ``"words-to-digits"``)."""
    # The longest word form: its thousands group and its last three digits are each the longest group.
    longest_group = max(range(1, 1000), key=lambda k: len(" ".join(_below_thousand(k))))
    longest_words = longest_group * 1000 + longest_group  # 64 bytes
    if name == "digits-to-words":
        most_words = max(range(1, 1000), key=lambda k: len(_below_thousand(k)))
        return Task(name, "0123456789", WORD_VOCAB, MAX_DIGITS, len(number_to_words(most_words * 1001)) + 1)
    if name == "words-to-digits":
        alphabet = "".join(sorted(set("".join(WORDS)))) + " "
        return Task(name, alphabet, DIGIT_VOCAB, len(" ".join(number_to_words(longest_words))), MAX_DIGITS + 1)
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")


# ---------------------------------------------------------------------- held-out set and sampler
#: How many numbers of each stratum are held out: ``(first, stop, count)`` per digit length.
HELD_OUT_STRATA: dict[int, tuple[tuple[int, int, int], ...]] = {
    1: ((1, 10, 2),),  # 2 of 1-9; zero is always trained (no other number says "zero")
    2: tuple((10 * t, 10 * t + 10, 1) for t in range(1, 10)),  # one from each decade 10-19, ..., 90-99
    3: ((100, 1000, 100),),
    4: ((1000, 10_000, 500),),
    5: ((10_000, 100_000, 500),),
    6: ((100_000, 1_000_000, 500),),
}
HELD_OUT_SALT = 0x5EED_0012


def number_hash(numbers: np.ndarray, salt: int = HELD_OUT_SALT) -> np.ndarray:
    """A fixed 64-bit hash of each integer (SplitMix64's finaliser of ``n + salt * golden``), as uint64.

    Plain integer arithmetic modulo 2**64, so every machine and numpy version gives the same values.
    """
    offset = np.uint64(salt * 0x9E3779B97F4A7C15 % 2**64)  # reduced in Python: numpy scalars warn on overflow
    z = np.asarray(numbers, dtype=np.uint64) + offset  # uint64 arrays wrap modulo 2**64 silently
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class NumberSplit:
    """The fixed split of 0..999,999 into held-out numbers (never trained on) and training numbers.

    ``held_out[length]`` holds the sorted held-out numbers of each digit length (see the module docstring);
    :meth:`sample` draws training numbers with every length equally likely.
    """

    def __init__(self) -> None:
        self.held_out: dict[int, np.ndarray] = {}
        for length, strata in HELD_OUT_STRATA.items():
            picked = []
            for first, stop, count in strata:
                candidates = np.arange(first, stop, dtype=np.int64)
                order = np.lexsort((candidates, number_hash(candidates)))  # by hash, ties by value
                picked.append(candidates[order[:count]])
            self.held_out[length] = np.sort(np.concatenate(picked))

    def all_held_out(self) -> np.ndarray:
        """Every held-out number, sorted, shape (1611,)."""
        return np.concatenate([self.held_out[length] for length in range(1, MAX_DIGITS + 1)])

    def is_held_out(self, numbers: "int | np.ndarray") -> np.ndarray:
        """Elementwise: is the number in the held-out set?"""
        return np.isin(np.asarray(numbers, dtype=np.int64), self.all_held_out())

    def training_count(self, length: int) -> int:
        """How many numbers of this digit length are trained on."""
        lo, hi = length_range(length)
        return hi - lo - len(self.held_out[length])

    def training_number(self, length: int, rank: np.ndarray) -> np.ndarray:
        """The training number of rank ``rank`` (from 0, in increasing order) among those of ``length`` digits.

        Elementwise on an integer array; a bijection from ``range(training_count(length))`` onto the numbers
        of that length that are not held out.
        """
        lo, _ = length_range(length)
        held = self.held_out[length] - lo  # sorted offsets of the held-out numbers in [lo, hi)
        # The k-th offset (from 0) not in `held` is k plus the number of held-out offsets at or below it;
        # held[j] - j counts the training offsets below held[j], so that number is a searchsorted on it.
        rank = np.asarray(rank, dtype=np.int64)
        return lo + rank + np.searchsorted(held - np.arange(len(held)), rank, side="right")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` training numbers: a digit length uniform in 1-6, then a number uniform among the training
        numbers of that length. Shape (size,), int64; never a held-out number."""
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        lengths = rng.integers(1, MAX_DIGITS + 1, size=size)  # (size,) uniform digit lengths
        numbers = np.empty(size, dtype=np.int64)
        for length in range(1, MAX_DIGITS + 1):
            rows = np.flatnonzero(lengths == length)
            ranks = rng.integers(0, self.training_count(length), size=len(rows))  # uniform among training numbers
            numbers[rows] = self.training_number(length, ranks)
        return numbers
