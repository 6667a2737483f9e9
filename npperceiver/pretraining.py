"""Masked-language-model pretraining on a byte corpus: the pieces ``npperceiver train-mlm`` is made of.

Jaegle et al., "Perceiver IO" (2021), section 4.1 and appendix F: the language model reads raw UTF-8 bytes
and is pretrained with BERT's masked-language-modelling objective, masking whole *words* -- a word being a
space-delimited run of characters -- rather than single bytes (predicting one byte of a word from its
neighbours is too easy to teach much). DeepMind released no training code for it, so the rest follows BERT
(Devlin et al., 2019) and is chosen here, in :func:`mask_words`:

* a *word* is a run of whitespace bytes and the run of other bytes after it (``" missing."``, ``"\\n\\nAlice"``):
  the space before a word belongs to it, as in HF's documented fill-mask example, which masks the nine
  bytes of ``" missing."``;
* each word is chosen with probability 15%; every byte of a chosen word is in the loss;
* a chosen word becomes ``[MASK]`` bytes 80% of the time, random bytes 10% of the time, and stays as it is
  10% of the time (BERT's 80/10/10, at the word level, as whole-word masking does it).

Everything here is pure: randomness comes from the ``np.random.Generator`` passed in (a fixed number of
draws per batch, so that a run resumed from the generator's saved state continues exactly), the corpus
arrives as bytes, and the command line does the reading, the writing and the printing.

Shapes: B batch, M tokens per window (``[CLS]``, M - 2 bytes, ``[SEP]``), P = ``max_position_embeddings``
(the model predicts all P positions; the labels have P columns, -100 past M), V = 262.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from .config import PerceiverConfig
from .optim import AdamW, clip_grad_norm, global_norm, warmup_cosine_lr
from .text import IGNORE_INDEX, PerceiverForMaskedLM
from .tokenizer import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS, SEP_ID

#: The share of words chosen for the loss (BERT's and the Perceiver IO paper's 15%).
MASK_PROBABILITY = 0.15
#: Of the chosen words: the share replaced by ``[MASK]`` bytes, then the share replaced by random bytes
#: (the rest, 10%, is left as it is).
REPLACE_WITH_MASK, REPLACE_WITH_RANDOM = 0.8, 0.1
#: Bytes that separate words (ASCII whitespace).
WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)
#: The held-out windows are masked with a generator of this seed, whatever the run's ``--seed``: every run
#: (and every evaluation of one run) is scored on the same masked bytes.
HELDOUT_SEED = 20211
#: What a train-mlm checkpoint says it is (``__metadata__["format"]`` of its .safetensors file).
CHECKPOINT_FORMAT = "npperceiver.train-mlm"
CHECKPOINT_VERSION = "1"
OPTIMIZER_PREFIX = "optimizer."
HISTORY_PREFIX = "history."


# ---------------------------------------------------------------------------- the corpus
def split_corpus(data: bytes, holdout: float) -> tuple[bytes, bytes]:
    """A fixed split of a text into training and held-out parts: the held-out part is the last ``holdout``
    share of the bytes, moved forward to the start of the next paragraph (after a blank line) or, failing
    that, the next line, so that it starts at the beginning of a sentence. ``holdout=0`` holds out nothing.

    The same text and share always give the same split (nothing random), so held-out numbers from
    different runs compare.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"the corpus must be bytes, got {type(data).__name__}")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must lie in [0, 1), got {holdout!r}")
    if holdout == 0:
        return bytes(data), b""
    cut = int(len(data) * (1 - holdout))
    for separator in (b"\n\n", b"\n"):
        found = data.find(separator, cut)
        if found != -1:
            cut = found + len(separator)
            break
    return bytes(data[:cut]), bytes(data[cut:])


def byte_ids(data: bytes) -> np.ndarray:
    """The token ids of raw bytes, ``byte + 6`` (no special-token splitting: a corpus is bytes), shape (len,)."""
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64) + NUM_SPECIAL_TOKENS


def frame(windows: np.ndarray) -> np.ndarray:
    """``[CLS] window [SEP]`` for every row: (B, M - 2) byte ids -> (B, M), as the tokenizer frames a text."""
    B = windows.shape[0]
    return np.concatenate([np.full((B, 1), CLS_ID), windows, np.full((B, 1), SEP_ID)], axis=1)  # (B, M)


def sample_windows(ids: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """``batch_size`` windows of ``seq_len - 2`` consecutive bytes at random offsets, framed: (B, M) ids."""
    width = seq_len - 2
    if len(ids) < width:
        raise ValueError(f"the text has {len(ids)} bytes, fewer than one window of {width} (seq_len - 2)")
    starts = rng.integers(0, len(ids) - width + 1, size=batch_size)  # (B,)
    return frame(ids[starts[:, None] + np.arange(width)])  # (B, 1) + (M - 2,) -> (B, M - 2) -> (B, M)


def heldout_windows(ids: np.ndarray, seq_len: int, count: int) -> np.ndarray:
    """Up to ``count`` windows spread evenly over the held-out ids, first and last included: (K, M) ids."""
    width = seq_len - 2
    if len(ids) < width:
        raise ValueError(f"the held-out text has {len(ids)} bytes, fewer than one window of {width} (seq_len - 2)")
    starts = np.unique(np.linspace(0, len(ids) - width, num=max(1, count)).round().astype(np.int64))  # (K,)
    return frame(ids[starts[:, None] + np.arange(width)])  # (K, M)


# ---------------------------------------------------------------------------- masking
def word_index(input_ids: np.ndarray) -> np.ndarray:
    """For each position, the number of the word it belongs to within its row (0, 1, ...): a new word starts
    at every whitespace byte that follows a non-whitespace token, so a word is ``whitespace* other+``.
    ``[CLS]``/``[SEP]`` count as non-whitespace. (B, M) ids -> (B, M) word numbers."""
    space = np.isin(input_ids, WHITESPACE.astype(np.int64) + NUM_SPECIAL_TOKENS)  # (B, M)
    starts = np.zeros_like(space)
    starts[:, 1:] = space[:, 1:] & ~space[:, :-1]  # whitespace after non-whitespace opens a word
    return np.cumsum(starts, axis=1)  # (B, M)


def mask_words(
    input_ids: np.ndarray, num_positions: int, rng: np.random.Generator, mask_probability: float = MASK_PROBABILITY,
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-word masking of framed byte windows (see the module docstring): returns the model's
    ``input_ids`` (B, M), with the chosen words replaced, and ``labels`` (B, P), the original ids at every
    byte of a chosen word and -100 elsewhere (``[CLS]``, ``[SEP]``, unchosen words, positions M .. P-1).

    Draws exactly three (B, M) arrays from ``rng`` whatever the text (one entry per possible word number,
    used or not), so a run consumes its generator at a fixed rate.
    """
    B, M = input_ids.shape
    if num_positions < M:
        raise ValueError(f"num_positions ({num_positions}) must be at least the window length M = {M}")
    word = word_index(input_ids)  # (B, M): word numbers < M
    rows = np.arange(B)[:, None]  # (B, 1)
    chosen_word = rng.random((B, M)) < mask_probability  # (B, M): one draw per possible word number
    how = rng.random((B, M))  # (B, M): per word, [MASK] / random / unchanged
    random_bytes = rng.integers(0, 256, size=(B, M)) + NUM_SPECIAL_TOKENS  # (B, M): per position
    is_byte = (input_ids >= NUM_SPECIAL_TOKENS)  # (B, M): not [CLS] / [SEP]
    chosen = chosen_word[rows, word] & is_byte  # (B, M): every byte of a chosen word
    word_how = how[rows, word]  # (B, M): the word's draw, the same for all its bytes
    masked = np.where(chosen & (word_how < REPLACE_WITH_MASK), MASK_ID, input_ids)  # (B, M)
    randomised = chosen & (word_how >= REPLACE_WITH_MASK) & (word_how < REPLACE_WITH_MASK + REPLACE_WITH_RANDOM)
    masked = np.where(randomised, random_bytes, masked)  # (B, M)
    labels = np.full((B, num_positions), IGNORE_INDEX, dtype=np.int64)  # (B, P)
    labels[:, :M] = np.where(chosen, input_ids, IGNORE_INDEX)  # (B, M) -> the first M columns
    return masked, labels


# ---------------------------------------------------------------------------- one step, one evaluation
@dataclass(frozen=True)
class Schedule:
    """The optimisation settings of a run: AdamW with a warmup + cosine learning rate, gradient clipping."""

    lr: float = 1e-3
    warmup_steps: int = 100
    total_steps: int = 2000
    min_lr: float = 0.0
    weight_decay: float = 0.01
    max_grad_norm: Optional[float] = 1.0

    def lr_at(self, step: int) -> float:
        """The learning rate of update ``step`` (counted from 0)."""
        return warmup_cosine_lr(step, self.lr, min(self.warmup_steps, self.total_steps), self.total_steps,
                                self.min_lr)


def train_step(
    model: PerceiverForMaskedLM, optimizer: AdamW, input_ids: np.ndarray, labels: np.ndarray, lr: float,
    max_grad_norm: Optional[float] = None, dropout_rng: Optional[np.random.Generator] = None,
) -> tuple[float, float]:
    """One update: forward, backward, gradient clipping, AdamW at learning rate ``lr``.

    Returns the loss (before the update) and the gradients' global norm (before clipping)."""
    loss, grads = model.loss_and_grads(input_ids, labels, dropout_rng=dropout_rng)
    return float(loss), update(optimizer, grads, lr, max_grad_norm)


def update(optimizer: AdamW, grads: Mapping[str, np.ndarray], lr: float, max_grad_norm: Optional[float] = None,
           ) -> float:
    """The update of a training step, after its backward (train-mlm's and train-translate's): clip the
    gradients' global norm to ``max_grad_norm`` (if given), then AdamW at learning rate ``lr``. Returns the
    global norm before clipping."""
    norm = clip_grad_norm(grads, max_grad_norm) if max_grad_norm else global_norm(grads)
    optimizer.lr = lr
    optimizer.step(grads)  # rejects a non-finite gradient before touching any weight
    return float(norm)


@dataclass(frozen=True)
class Evaluation:
    """Held-out numbers: the mean cross-entropy over the masked bytes (nats per byte), the share of them
    whose most likely byte is right, and how many bytes that is."""

    loss: float
    accuracy: float
    count: int


def evaluate(
    model: PerceiverForMaskedLM, input_ids: np.ndarray, labels: np.ndarray, batch_size: int = 64,
) -> Evaluation:
    """Loss and masked-byte accuracy of ``model`` (no dropout) on fixed masked windows, in batches.

    input_ids (K, M), labels (K, P) as :func:`mask_words` gives them."""
    total, correct, count = 0.0, 0, 0
    for start in range(0, len(input_ids), batch_size):
        ids, lab = input_ids[start:start + batch_size], labels[start:start + batch_size]
        logits = model(ids).logits  # (b, P, V)
        keep = lab != IGNORE_INDEX  # (b, P)
        kept = logits[keep]  # (k, V)
        shifted = kept - kept.max(axis=-1, keepdims=True)  # (k, V)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # (k, V)
        total -= float(log_probs[np.arange(len(kept)), lab[keep]].sum(dtype=np.float64))
        correct += int((kept.argmax(axis=-1) == lab[keep]).sum())
        count += int(keep.sum())
    if count == 0:
        raise ValueError("the held-out windows have no masked byte to score")
    return Evaluation(total / count, correct / count, count)


def heldout_set(
    heldout: bytes, seq_len: int, num_positions: int, count: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed held-out evaluation set of a corpus: :func:`heldout_windows`, masked with a generator of
    seed :data:`HELDOUT_SEED`. Returns input_ids (K, M) and labels (K, P)."""
    windows = heldout_windows(byte_ids(heldout), seq_len, count)
    return mask_words(windows, num_positions, np.random.default_rng(HELDOUT_SEED))


# ---------------------------------------------------------------------------- checkpoints
@dataclass
class TrainingState:
    """Everything a run needs to continue exactly: the model, the optimizer's moments and step count, the
    generator's state, the settings, and the history so far (train loss per step; held-out evaluations).
    train-translate's runs use it too (model: a ``PerceiverSeq2Seq``; evaluations: its own rows)."""

    model: Any  # PerceiverForMaskedLM (train-mlm) or PerceiverSeq2Seq (train-translate)
    optimizer: AdamW
    rng: np.random.Generator
    step: int
    settings: dict
    train_loss: list
    evaluations: list  # train-mlm: [(step, loss, accuracy), ...]


def checkpoint_tensors(state: TrainingState, evaluation_columns: int = 3) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint: the model's weights under its ``state_dict()`` names (HF's
    ``PerceiverForMaskedLM`` names for train-mlm, so that any weight loader reads them), the optimizer's state
    under ``optimizer.``, the history under ``history.`` (evaluations as rows of ``evaluation_columns``)."""
    tensors = dict(state.model.state_dict())
    optimizer_state = state.optimizer.state_dict()
    optimizer_state["step"] = optimizer_state["step"].reshape(1)  # (1,): weight files store no 0-d arrays
    tensors.update({OPTIMIZER_PREFIX + k: v for k, v in optimizer_state.items()})
    tensors[HISTORY_PREFIX + "train_loss"] = np.asarray(state.train_loss, dtype=np.float32).reshape(-1)  # (steps,)
    tensors[HISTORY_PREFIX + "evaluations"] = np.asarray(state.evaluations, dtype=np.float64).reshape(
        -1, evaluation_columns)  # (K, columns)
    return tensors


def checkpoint_metadata(state: TrainingState) -> dict[str, str]:
    """The strings of a checkpoint's ``__metadata__``: its format, the model's config, the step, the
    generator's state and the run's settings (JSON where not a plain string)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model": "PerceiverForMaskedLM",
        "config": json.dumps(state.model.config.to_dict(), sort_keys=True),
        "step": str(state.step),
        "rng": json.dumps(state.rng.bit_generator.state),
        "settings": json.dumps(state.settings, sort_keys=True),
    }


def is_checkpoint(metadata: Mapping[str, str]) -> bool:
    """Whether a weight file's ``__metadata__`` says it is a train-mlm checkpoint."""
    return metadata.get("format") == CHECKPOINT_FORMAT


def config_from_metadata(metadata: Mapping[str, str]) -> Optional[PerceiverConfig]:
    """The model config a weight file carries in its ``__metadata__["config"]``, or None if it has none."""
    if "config" not in metadata:
        return None
    try:
        return PerceiverConfig.from_dict(json.loads(metadata["config"]))
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"its metadata 'config' is not a JSON config: {e}") from None


def model_weights(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's tensors of a checkpoint (without the optimizer's state and the history)."""
    return {k: v for k, v in tensors.items() if not k.startswith((OPTIMIZER_PREFIX, HISTORY_PREFIX))}


def restore(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> TrainingState:
    """A :class:`TrainingState` from a checkpoint's tensors and metadata (what :func:`checkpoint_tensors` and
    :func:`checkpoint_metadata` wrote). A ``ValueError`` says what is missing or wrong."""
    if not is_checkpoint(metadata):
        raise ValueError("it is not a train-mlm checkpoint (its metadata has no format "
                         f"'{CHECKPOINT_FORMAT}'): it holds no optimizer state to resume from")
    if metadata.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"its checkpoint format version is {metadata.get('format_version')!r}; this npperceiver "
                         f"reads version {CHECKPOINT_VERSION}")
    config = config_from_metadata(metadata)
    if config is None:
        raise ValueError("its metadata has no model config")
    model = PerceiverForMaskedLM.from_state_dict(config, model_weights(tensors))
    optimizer, rng, step, settings, train_loss = restore_training(model, tensors, metadata, default_lr=1e-3)
    history = tensors.get(HISTORY_PREFIX + "evaluations", np.zeros((0, 3)))  # (K, 3): step, loss, accuracy
    evaluations = [(int(step), float(loss), float(acc)) for step, loss, acc in history]
    return TrainingState(model, optimizer, rng, step, settings, train_loss, evaluations)


def restore_training(
    model: Any, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str], default_lr: float,
) -> tuple[AdamW, np.random.Generator, int, dict, list[float]]:
    """What a checkpoint (train-mlm's or train-translate's) holds besides the model and its evaluations:
    AdamW's state for ``model``, the random generator's state, the step, the run's settings and its training
    losses so far. A ``ValueError`` says what is missing or wrong."""
    optimizer_state = {k[len(OPTIMIZER_PREFIX):]: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    if not optimizer_state:
        raise ValueError("it holds the model but no optimizer state (saved to be used, not resumed): "
                         "there is nothing to resume from")
    if np.shape(optimizer_state.get("step")) == (1,):
        optimizer_state["step"] = optimizer_state["step"].reshape(())  # stored as (1,)
    try:
        settings = json.loads(metadata["settings"])
        if not isinstance(settings, dict):
            raise ValueError(f"'settings' is {type(settings).__name__}, not a JSON object")
        step = int(metadata["step"])
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(metadata["rng"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"its metadata is incomplete or damaged ({type(e).__name__}: {e})") from None
    optimizer = AdamW(model, lr=settings.get("lr", default_lr), weight_decay=settings.get("weight_decay", 0.01))
    optimizer.load_state_dict(optimizer_state)
    if optimizer.step_count != step:
        raise ValueError(f"its optimizer has taken {optimizer.step_count} steps but its metadata says {step}")
    train_loss = [float(x) for x in tensors.get(HISTORY_PREFIX + "train_loss", np.zeros(0))]
    return optimizer, rng, step, settings, train_loss[:step]


def describe_weights(tensors: Mapping[str, Any]) -> str:
    """What a weight file holds, judged from its tensor names: ``"PerceiverForMaskedLM"`` (an HF masked language
    model, ``perceiver.`` keys and the embedding decoder), ``"PerceiverModel"`` (an encoder alone) or ``"unknown"``."""
    keys = set(tensors)
    if "embedding_decoder.bias" in keys and any(k.startswith("perceiver.input_preprocessor.") for k in keys):
        return "PerceiverForMaskedLM"
    if "embeddings.latents" in keys or "perceiver.embeddings.latents" in keys:
        return "PerceiverModel"
    return "unknown"
