"""The loss curve of a ``npperceiver train-mlm`` run, drawn from its ``--log`` CSV with matplotlib.

matplotlib is imported when a picture is drawn (the optional extra ``plot``: ``pip install 'npperceiver[plot]'``);
reading the log needs nothing but the standard library. ``benchmarks/plot_training.py`` is the command line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingHistory:
    """A run's history as the log has it: the training loss of every update, the held-out numbers where they
    were measured (step 0 is before the first update)."""

    steps: list
    train_loss: list
    eval_steps: list
    heldout_loss: list
    heldout_accuracy: list


def read_history(text: str) -> TrainingHistory:
    """Parse train-mlm's ``--log`` CSV (step, lr, train_loss, heldout_loss, heldout_accuracy)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    expected = {"step", "lr", "train_loss", "heldout_loss", "heldout_accuracy"}
    if not rows or not expected <= set(rows[0]):
        raise ValueError(f"a train-mlm log has the columns {', '.join(sorted(expected))}; "
                         f"got {', '.join(rows[0]) if rows else 'no rows'}")
    trained = [r for r in rows if r["train_loss"]]
    evaluated = [r for r in rows if r["heldout_loss"]]
    return TrainingHistory(
        steps=[int(r["step"]) for r in trained], train_loss=[float(r["train_loss"]) for r in trained],
        eval_steps=[int(r["step"]) for r in evaluated], heldout_loss=[float(r["heldout_loss"]) for r in evaluated],
        heldout_accuracy=[float(r["heldout_accuracy"]) for r in evaluated])


def smooth(values: list, window: int) -> list:
    """The running mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def render_history(history: TrainingHistory, fmt: str = "svg", title: str = "", smoothing: int = 50) -> bytes:
    """The loss curve: the training loss of each update (faint) and its running mean, the held-out loss
    (dots), and the held-out masked-byte accuracy on a second axis. Returns the picture's bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 3.6), dpi=110)
    ax = figure.add_subplot()
    ax.plot(history.steps, history.train_loss, color="#9ecae1", linewidth=0.6, label="training loss (each update)")
    ax.plot(history.steps, smooth(history.train_loss, smoothing), color="#2171b5", linewidth=1.4,
            label=f"training loss (mean of {smoothing})")
    ax.plot(history.eval_steps, history.heldout_loss, "o-", color="#d94801", markersize=3.5, linewidth=1.2,
            label="held-out loss")
    ax.set_xlabel("update")
    ax.set_ylabel("cross-entropy, nats per masked byte")
    ax.grid(alpha=0.3)
    accuracy = ax.twinx()
    accuracy.plot(history.eval_steps, [100 * a for a in history.heldout_accuracy], "s--", color="#238b45",
                  markersize=3, linewidth=1, label="held-out masked-byte accuracy")
    accuracy.set_ylabel("masked-byte accuracy, %", color="#238b45")
    accuracy.set_ylim(0, 100)
    handles = ax.get_legend_handles_labels()[0] + accuracy.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=7.5, framealpha=0.9)
    if title:
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()
