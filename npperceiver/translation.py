"""Training the sequence-to-sequence Perceiver on a toy translation task: the pieces ``npperceiver
train-translate`` and ``translate`` are made of.

The recipe is docs/translation.md's, found in torch and checked in NumPy: the model of
:meth:`Seq2SeqConfig.for_task <npperceiver.seq2seq.Seq2SeqConfig.for_task>`, HF's initialisation, AdamW
(lr 2e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every parameter), a linear warmup over 100 steps
then a cosine decay to 0, batches of 128 training numbers from :meth:`NumberSplit.sample
<npperceiver.tasks.NumberSplit.sample>` (every digit length equally likely), teacher forcing, no gradient
clipping. The held-out evaluation decodes the fixed held-out set greedily and counts *exact matches* -- the
whole target right, ``[EOS]`` included -- overall and for each digit length 1-6.

Everything here is pure: randomness comes from the ``np.random.Generator`` passed in (one
``NumberSplit.sample`` per batch, so a run resumed from the generator's saved state continues exactly),
files are read and written only through :mod:`npperceiver.weights`, and the command line does the printing.

Shapes: B batch, M source bytes, T target positions, V target vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from . import pretraining
from .optim import AdamW
from .pretraining import HISTORY_PREFIX, OPTIMIZER_PREFIX, TrainingState, describe_weights, restore_training
from .seq2seq import PerceiverSeq2Seq, Seq2SeqConfig
from .tasks import MAX_DIGITS, NumberSplit, Task, TranslationBatch, digit_length
from .weights import load_metadata, load_weights

#: What a train-translate checkpoint says it is (``__metadata__["format"]`` of its .safetensors file).
CHECKPOINT_FORMAT = "npperceiver.train-translate"
CHECKPOINT_VERSION = "1"
#: The target of issue 12: exact match on the held-out set and on every digit length 1-6 at least this.
TARGET = 0.99
#: Columns of the stored evaluation history: step, exact match overall, then by digit length 1..6.
EVALUATION_COLUMNS = 2 + MAX_DIGITS


# ---------------------------------------------------------------------------- one step
@dataclass(frozen=True)
class Schedule(pretraining.Schedule):
    """train-mlm's :class:`~npperceiver.pretraining.Schedule` with the recipe's defaults: AdamW at lr 2e-3,
    warmup 100, cosine to 0 at ``total_steps``, no gradient clipping."""

    lr: float = 2e-3
    max_grad_norm: Optional[float] = None


def training_batch(task: Task, split: NumberSplit, rng: np.random.Generator, batch_size: int) -> TranslationBatch:
    """``batch_size`` training numbers (never a held-out one; every digit length equally likely) as a batch:
    source ids and mask (B, M), right-padded as HF pads, target ids (B, T)."""
    return task.batch(split.sample(rng, batch_size))


def train_step(
    model: PerceiverSeq2Seq, optimizer: AdamW, batch: TranslationBatch, lr: float,
    max_grad_norm: Optional[float] = None, dropout_rng: Optional[np.random.Generator] = None,
) -> tuple[float, float]:
    """One update: teacher-forced forward and backward (``model.loss_and_grads``), optional clipping of the
    gradients' global norm, AdamW at learning rate ``lr``.

    Returns the loss (before the update) and the gradients' global norm (before clipping)."""
    loss, grads = model.loss_and_grads(batch.source_ids, batch.source_mask, batch.target_ids,
                                       dropout_rng=dropout_rng)
    return float(loss), pretraining.update(optimizer, grads, lr, max_grad_norm)


# ---------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Evaluation:
    """Exact match on a set of numbers: overall, and by digit length (``by_length[d]``, d = 1..6, for the
    lengths present), with the misses as ``(number, what the model wrote)``."""

    exact: float
    by_length: dict
    count: int
    misses: tuple = field(default=())

    def meets(self, threshold: float = TARGET) -> bool:
        """Whether exact match reaches ``threshold`` overall and on every digit length."""
        return self.exact >= threshold and all(v >= threshold for v in self.by_length.values())

    def row(self, step: int) -> list[float]:
        """The history row: step, exact match overall, then by length 1..6 (NaN for an absent length)."""
        return [step, self.exact] + [self.by_length.get(d, float("nan")) for d in range(1, MAX_DIGITS + 1)]


def translate_numbers(model: PerceiverSeq2Seq, task: Task, numbers: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Greedy decoding of the sources of ``numbers`` (K,), ``chunk`` at a time: target ids (K, T)."""
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer (numbers decoded at a time), got {chunk!r}")
    out = []
    for start in range(0, len(numbers), chunk):
        batch = task.batch(numbers[start:start + chunk])
        out.append(model.generate(batch.source_ids, batch.source_mask))  # (b, T)
    return np.concatenate(out, axis=0) if out else np.zeros((0, task.max_target_length), dtype=np.int64)


def evaluate(model: PerceiverSeq2Seq, task: Task, numbers: np.ndarray, chunk: int = 512) -> Evaluation:
    """Exact match of greedy decoding on ``numbers`` (K,): a translation counts when every target position is
    right (the tokens, then ``[EOS]``; :meth:`PerceiverSeq2Seq.generate` pads after its first ``[EOS]``)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.size == 0:
        raise ValueError("no numbers to evaluate on")
    predicted = translate_numbers(model, task, numbers, chunk)  # (K, T)
    expected = task.batch(numbers).target_ids  # (K, T)
    right = (predicted == expected).all(axis=1)  # (K,)
    lengths = digit_length(numbers)  # (K,)
    by_length = {int(d): float(right[lengths == d].mean()) for d in np.unique(lengths)}
    misses = tuple((int(n), task.decode_target(p)) for n, p, ok in zip(numbers, predicted, right) if not ok)
    return Evaluation(float(right.mean()), by_length, int(numbers.size), misses)


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_tensors(state: TrainingState) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint (:func:`npperceiver.pretraining.checkpoint_tensors`): the model's weights
    (``PerceiverSeq2Seq.state_dict()`` names), the optimizer's state under ``optimizer.``, the history under
    ``history.`` (evaluations as :meth:`Evaluation.row` rows)."""
    return pretraining.checkpoint_tensors(state, EVALUATION_COLUMNS)


def checkpoint_metadata(state: TrainingState) -> dict[str, str]:
    """The strings of a checkpoint's ``__metadata__``: its format, the model's config (with its task), the
    step, the generator's state and the run's settings (JSON where not a plain string)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model": "PerceiverSeq2Seq",
        "task": str(state.model.config.task),
        "config": json.dumps(state.model.config.to_dict(), sort_keys=True),
        "step": str(state.step),
        "rng": json.dumps(state.rng.bit_generator.state),
        "settings": json.dumps(state.settings, sort_keys=True),
    }


def is_checkpoint(metadata: Mapping[str, str]) -> bool:
    """Whether a weight file's ``__metadata__`` says it is a train-translate checkpoint."""
    return metadata.get("format") == CHECKPOINT_FORMAT


def model_from_checkpoint(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> PerceiverSeq2Seq:
    """The translation model of a train-translate checkpoint. A ``ValueError`` names what the file is when
    it is not one: a train-mlm checkpoint, plain weights (no config inside), a model without a task."""
    if not is_checkpoint(metadata):
        if metadata.get("format") == "npperceiver.train-mlm":
            raise ValueError("it is a train-mlm checkpoint (a masked language model), not a translation model: "
                             "train one with `npperceiver train-translate`")
        kind = "PerceiverSeq2Seq" if "decoder.lm_head.weight" in tensors else describe_weights(tensors)
        what = {"PerceiverSeq2Seq": "sequence-to-sequence (PerceiverSeq2Seq) weights",
                "PerceiverForMaskedLM": "masked-language-model (PerceiverForMaskedLM) weights",
                "PerceiverModel": "encoder-only (PerceiverModel) weights"}.get(kind, "weights of an unknown model")
        raise ValueError(f"it holds {what} without a train-translate checkpoint's metadata (format "
                         f"'{CHECKPOINT_FORMAT}': its config and task), not a translation model it can use: train one "
                         "with `npperceiver train-translate`")
    if metadata.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"its checkpoint format version is {metadata.get('format_version')!r}; this npperceiver "
                         f"reads version {CHECKPOINT_VERSION}")
    try:
        config = Seq2SeqConfig.from_dict(json.loads(metadata["config"]))
    except KeyError:
        raise ValueError("its metadata has no model config") from None
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"its metadata 'config' is not a JSON config: {e}") from None
    if config.task is None:
        raise ValueError("its config names no task, so there is no way to read or write its texts")
    weights = pretraining.model_weights(tensors)  # the tensors without the optimizer state and the history
    return PerceiverSeq2Seq.from_state_dict(config, weights)


def load_model(path: str) -> PerceiverSeq2Seq:
    """The translation model saved in the train-translate checkpoint at ``path`` (``.safetensors``). A
    ``ValueError`` for a missing or malformed file, or a file of another kind (see
    :func:`model_from_checkpoint`)."""
    metadata = load_metadata(path)
    return model_from_checkpoint(load_weights(path), metadata)


def restore(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> TrainingState:
    """A :class:`TrainingState` from a checkpoint's tensors and metadata (what :func:`checkpoint_tensors` and
    :func:`checkpoint_metadata` wrote). A ``ValueError`` says what is missing or wrong."""
    model = model_from_checkpoint(tensors, metadata)
    optimizer, rng, step, settings, train_loss = restore_training(model, tensors, metadata, default_lr=2e-3)
    history = tensors.get(HISTORY_PREFIX + "evaluations", np.zeros((0, EVALUATION_COLUMNS)))  # (K, 8)
    evaluations = [[int(row[0])] + [float(x) for x in row[1:]] for row in history]
    return TrainingState(model, optimizer, rng, step, settings, train_loss, evaluations)


def new_state(task: str, decoder: str, seed: int, settings: Mapping[str, Any],
              config: Optional[Seq2SeqConfig] = None) -> TrainingState:
    """A fresh run: the recipe's model for ``task`` and ``decoder`` (or ``config``), HF's initialisation from
    ``seed``, AdamW with ``settings["lr"]`` and ``settings["weight_decay"]``, a generator seeded ``seed``."""
    config = config or Seq2SeqConfig.for_task(task, decoder)  # a ValueError for an unknown task or decoder
    if config.task != task or config.decoder != decoder:
        raise ValueError(f"the config is a {config.decoder} model of task {config.task!r}; this run trains a "
                         f"{decoder} model of task {task!r}")
    model = PerceiverSeq2Seq.init(config, seed=seed)
    optimizer = AdamW(model, lr=settings["lr"], weight_decay=settings["weight_decay"])
    return TrainingState(model, optimizer, np.random.default_rng(seed), 0, dict(settings), [], [])
