"""The ``npperceiver`` command: parses, calls npperceiver/viz, and reports. The only place that prints.

Each command is one function; shared helpers (finding a config, writing a file safely, reporting an error
in one line) sit at the bottom. Errors a user can cause end in :class:`CliError`: one line on stderr,
exit code 1, no traceback (click's own usage errors exit with 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

import click
import numpy as np

import npperceiver
from npperceiver import pretraining, seq2seq, tasks, translation
from npperceiver.config import MAX_CONFIG_BYTES, PerceiverConfig, parse_json
from npperceiver.presets import available_presets, load_preset
from npperceiver.seq2seq import DECODERS, PerceiverSeq2Seq, Seq2SeqConfig, shift_right
from npperceiver.tasks import TASKS, get_task, words_to_number
from npperceiver.text import IGNORE_INDEX
from npperceiver.trace import (
    encoder_steps, format_shape, layer_summary, mask_label, mask_summary, mlm_steps, scope_title, seq2seq_steps,
)
from npperceiver.viz import attention as attention_viz
from npperceiver.viz.encoder_graph import build_encoder_graph, build_mlm_graph, build_seq2seq_graph
from npperceiver.viz.render import RenderError, dot_available, render, to_dot


class CliError(click.ClickException):
    """A problem the user can fix: printed as one line, ``error: ...``, exit code 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {_one_line(self.format_message())}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(npperceiver.__version__, prog_name="npperceiver")
def main() -> None:
    """npperceiver: the Perceiver encoder of HF transformers, in NumPy, explained and drawn.

    \b
    Examples:
      npperceiver draw-encoder --config small.json
      npperceiver explain --config language-perceiver --seq-len 2048
    """


# ---------------------------------------------------------------------------- draw-encoder
FORMATS = ("svg", "png", "pdf", "dot")
MODELS = ("encoder", "mlm", "seq2seq")


def _model_options(command):
    """The options naming the model a drawing or a table shows: --config and --model, and for the
    translation model (--model seq2seq) --task and --decoder (or a Seq2SeqConfig JSON as --config)."""
    options = [
        click.option("--config", "config_name", metavar="PATH_OR_PRESET",
                     help="A JSON config (an HF config.json works), or a bundled preset: small, language-perceiver. "
                          "With --model seq2seq: a Seq2SeqConfig JSON (e.g. configs/seq2seq-digits-to-words.json), "
                          "or give --task instead."),
        click.option("--model", type=click.Choice(MODELS), default="encoder", show_default=True,
                     help="encoder: PerceiverModel; mlm: PerceiverForMaskedLM (text preprocessor, encoder, decoder); "
                          "seq2seq: the translation model (encoder, decoder, loss)."),
        click.option("--task", type=click.Choice(TASKS),
                     help="With --model seq2seq: the translation model made for this task "
                          "(Seq2SeqConfig.for_task, the recipe of docs/translation.md)."),
        click.option("--decoder", type=click.Choice(DECODERS),
                     help="With --task: autoregressive (T5-like) or queries (Perceiver IO).  "
                          "[default: autoregressive]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("draw-encoder")
@_model_options
@click.option("--output", "-o", metavar="FILE|-",
              help="Where to write the diagram; '-' for standard output. Default: <config>-<model>.<format>.")
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="Output format. Default: from the output's extension, else svg.")
@click.option("--detail", type=click.Choice(["layer", "op"]),
              help="op: every operation; layer: one box per PerceiverLayer. "
                   "Default: op up to 8 drawn layers, layer beyond; layer for --model mlm and seq2seq.")
@click.option("--unroll", is_flag=True, help="Draw every application of the self-attention block.")
@click.option("--batch", type=click.IntRange(min=1), help="A number for B in the shapes (default: the letter B).")
@click.option("--seq-len", type=click.IntRange(min=1), help="A number for M in the shapes (default: the letter M).")
@click.option("--hide-masks", is_flag=True, help="Leave the masks out of the drawing.")
def draw_encoder(config_name: Optional[str], model: str, task: Optional[str], decoder: Optional[str],
                 output: Optional[str], fmt: Optional[str], detail: Optional[str], unroll: bool, batch: Optional[int],
                 seq_len: Optional[int], hide_masks: bool) -> None:
    """Draw the encoder of a config: its layers, and how data and each mask flow through them.

    Every box shows the shape of what it outputs, as a real forward pass makes it. With --model mlm, the
    masked language model: the text preprocessor, the encoder, the decoder's output queries and their
    cross-attention to the latents, and the logits, tied to the token embedding. With --model seq2seq, the
    translation model: the encoder and the decoder framed, the source padding, causal and target padding
    masks, and the latents' edge into each decoder cross-attention, where the source enters the decoder.
    svg, png and pdf need Graphviz's `dot` program; --format dot needs nothing.

    \b
    Examples:
      npperceiver draw-encoder --config small.json
      npperceiver draw-encoder --config configs/small.json --detail layer --unroll -o small.png
      npperceiver draw-encoder --config language-perceiver --seq-len 2048 --format dot -o -
      npperceiver draw-encoder --config small.json --model mlm -o small-mlm.svg
      npperceiver draw-encoder --model seq2seq --task digits-to-words --decoder queries -o queries.svg
    """

    config, name = _model_config(model, config_name, task, decoder)
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output and output != "-" else ""
        fmt = suffix if suffix in FORMATS else "svg"
    if output is None:
        output = f"{Path(name).stem}-{model}.{fmt}"
    if fmt != "dot" and not dot_available():
        raise CliError(
            f"{fmt} output needs Graphviz's `dot` program, which is not on PATH: install Graphviz "
            "(apt-get install graphviz, brew install graphviz, or https://graphviz.org/download), "
            "or use --format dot, which needs no Graphviz")
    if model == "mlm":
        _check_mlm(config, name)
    title = task if model == "seq2seq" and task else name  # the title names the decoder already
    options = dict(unroll=unroll, batch=batch or "B", seq_len=seq_len or "M", masks=not hide_masks, name=title)
    try:
        if model == "seq2seq":
            graph = build_seq2seq_graph(config, detail=detail or "layer", **options)
        elif model == "mlm":
            graph = build_mlm_graph(config, detail=detail or "layer", **options)
        else:
            graph = build_encoder_graph(config, detail=detail, **options)
    except ValueError as e:
        raise CliError(str(e)) from None
    try:
        data = render(to_dot(graph), fmt)  # the DOT text that --format dot writes is the one drawn
    except ImportError as e:
        raise CliError(f"the graphviz Python package is needed to write DOT ({_one_line(e)}): "
                       "pip install graphviz") from None
    except RenderError as e:  # dot missing, failing, killed, or writing no picture
        raise CliError(f"Graphviz could not draw the {fmt}: {e}") from None
    _write(output, data)
    if output != "-":
        click.echo(f"wrote {output}", err=True)


# ---------------------------------------------------------------------------- explain
@main.command("explain")
@_model_options
@click.option("--batch", type=click.IntRange(min=1), help="A number for B in the shapes (default: the letter B).")
@click.option("--seq-len", type=click.IntRange(min=1), help="A number for M in the shapes (default: the letter M).")
@click.option("--full", is_flag=True, help="Every operation, one row each, with its HF module (default: one row "
                                           "per layer).")
def explain(config_name: Optional[str], model: str, task: Optional[str], decoder: Optional[str], batch: Optional[int],
            seq_len: Optional[int], full: bool) -> None:
    """Print the encoder's forward pass, in order: each layer, what it computes, its output shape, and the
    masks acting there; then what becomes of each mask. --full lists every operation with the HF module it
    mirrors. The text twin of draw-encoder.

    \b
    Examples:
      npperceiver explain --config small.json
      npperceiver explain --config language-perceiver --batch 1 --seq-len 2048
      npperceiver explain --config small.json --model mlm --full | less
      npperceiver explain --model seq2seq --task words-to-digits --decoder queries
    """

    config, name = _model_config(model, config_name, task, decoder)
    if model == "mlm":
        _check_mlm(config, name)
    trace = {"encoder": encoder_steps, "mlm": mlm_steps, "seq2seq": seq2seq_steps}[model]
    try:
        steps = trace(config, batch=batch or "B", seq_len=seq_len or "M")
    except ValueError as e:
        raise CliError(str(e)) from None
    enc = config.encoder if model == "seq2seq" else config
    sizes = (f"N={enc.num_latents} D={enc.d_latents} C={enc.d_model} "
             f"Hc={enc.num_cross_attention_heads} Hs={enc.num_self_attention_heads} "
             f"S={enc.num_self_attends_per_block} num_blocks={enc.num_blocks}")
    if model == "mlm":
        sizes += f" V={config.vocab_size} P={config.max_position_embeddings}"
    if model == "seq2seq":
        sizes += (f"; decoder {config.decoder}: T={config.max_target_length} E={config.d_decoder} "
                  f"Hd={config.num_decoder_heads} V={config.target_vocab_size}"
                  + (f" layers={config.num_decoder_layers}" if config.decoder == "autoregressive" else ""))
    what = {"encoder": "Perceiver encoder", "mlm": "Perceiver IO masked language model",
            "seq2seq": "Perceiver encoder-decoder (translation)"}[model]
    lines = [f"{what} forward pass: {name} ({sizes})"]
    if full:
        rows = [("#", "HF module", "operation", "output shape", "mask")]
        rows += [(str(i), s.module, f"{s.name}: {s.op}" if s.name != s.module else s.op, format_shape(s.shape),
                  mask_label(s.mask)) for i, s in enumerate(steps)]
        lines.append("")
        headings = {i + 1: scope_title(s, config, model) for i, s in enumerate(steps)
                    if i == 0 or s.scope != steps[i - 1].scope}
        lines += _table(rows, headings)
    else:
        summary = layer_summary(steps, config, model)
        lines.append(f"One row per layer; --full lists all {len(steps)} steps, operation by operation.")
        lines.append("")
        rows = [("HF module", "what it computes", "output shape", "masks acting")]
        rows += [(r.module, r.what, format_shape(r.shape), ", ".join(r.masks)) for r in summary]
        lines += _table(rows)
        lines += ["", *mask_summary(steps, config, model)]
    click.echo("\n".join(lines))


def _table(rows: list[tuple[str, ...]], headings: "dict[int, str] | None" = None) -> list[str]:
    """Rows as aligned columns, a rule under the first; ``headings[i]`` ('-- ...') goes before row i."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        if headings and i in headings:
            lines.append(f"-- {headings[i]}")
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


# ---------------------------------------------------------------------------- draw-attention
ATTENTION_FORMATS = ("svg", "png", "pdf", "text")


@main.command("draw-attention")
@click.option("--config", "config_name", metavar="PATH_OR_PRESET",
              help="A JSON config (an HF config.json works), or a bundled preset: small, language-perceiver. "
                   "With --model seq2seq: a Seq2SeqConfig JSON, or give --task instead.")
@click.option("--model", type=click.Choice(["seq2seq"]),
              help="seq2seq: the translation model (PerceiverSeq2Seq) of --task or --config, reading the source "
                   "--text. Default: PerceiverForMaskedLM with --text, PerceiverModel without.")
@click.option("--task", type=click.Choice(TASKS), help="With --model seq2seq: the recipe model of this task.")
@click.option("--decoder", type=click.Choice(DECODERS),
              help="With --task: autoregressive (T5-like) or queries (Perceiver IO).  [default: autoregressive]")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Weights (.safetensors or .npz): PerceiverForMaskedLM's with --text, else PerceiverModel's "
                   "(an MLM checkpoint works too: its encoder is used).")
@click.option("--random-init", is_flag=True, help="No weights: a seeded random model.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random weights (--random-init) and of the random inputs (--seq-len).")
@click.option("--text", help="A text for the masked language model (PerceiverForMaskedLM), tokenized as "
                             "[CLS] UTF-8 bytes [SEP]; columns are labelled with its bytes. With --model seq2seq: "
                             "the source (e.g. 3412 for digits-to-words), its translation the target (teacher "
                             "forcing).")
@click.option("--pad-to", type=click.IntRange(min=1), metavar="N",
              help="With --text: pad to N tokens (a translation source: N bytes) with [PAD], masked.")
@click.option("--seq-len", type=click.IntRange(min=1), metavar="M",
              help="Without --text: M random inputs of width d_model for PerceiverModel.  [default: 8]")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Without --text: the batch size B of the random inputs.")
@click.option("--example", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which batch row to draw.")
@click.option("--attention-mask", metavar="MASK",
              help="Over the inputs, 1 keeps, 0 drops: '1,1,1,0,0' (every batch row), rows split by ';' "
                   "('1,1,0;1,1,1'), or a file (.npy, or text with one row per line).")
@click.option("--head-mask", metavar="MASK",
              help="Over the self-attention heads: one row '1,0,1,1' for every layer, or L rows split by ';' "
                   "(L = num_blocks x num_self_attends_per_block), or a file. 0 silences a head, 0.5 halves it.")
@click.option("--latent-mask", metavar="MASK",
              help="Without --text: over the latents, 1 keeps, 0 drops (npperceiver's; acts in every "
                   "self-attention layer). Same syntax as --attention-mask.")
@click.option("--layer", metavar="LAYER",
              help="cross | self:I (encoder.self_attends.I, block 1) | self:I:block J | decoder (with --text). "
                   "With --model seq2seq also decoder:J (a decoder cross-attention) and causal[:J] (a causal "
                   "self-attention).  [default: cross; decoder with --model seq2seq]")
@click.option("--head", default="all", show_default=True, metavar="H|all",
              help="One head, or all of them (a grid, one panel per head).")
@click.option("--output", "-o", metavar="FILE|-",
              help="Where to write; '-' for standard output. Default: <config>-attention-<layer>.<format>, "
                   "and standard output for --format text.")
@click.option("--format", "fmt", type=click.Choice(ATTENTION_FORMATS),
              help="svg, png, pdf (need matplotlib: pip install 'npperceiver[plot]'), or text: the same numbers "
                   "as a table. Default: from the output's extension, else svg.")
def draw_attention(config_name: Optional[str], model: Optional[str], task: Optional[str], decoder: Optional[str],
                   weights: Optional[str], random_init: bool, seed: int, text: Optional[str],
                   pad_to: Optional[int], seq_len: Optional[int], batch: int, example: int,
                   attention_mask: Optional[str], head_mask: Optional[str], latent_mask: Optional[str],
                   layer: Optional[str], head: str, output: Optional[str], fmt: Optional[str]) -> None:
    """Draw the attention probabilities of a real forward pass, and what each mask does to them.

    One panel per head: queries (latents, or the decoder's output queries) down, keys (inputs, or latents)
    across. Key columns a mask removed are hatched and labelled in red, a head scaled by head_mask says
    its factor, a row whose every key is masked is called out (HF makes it uniform, padding included),
    and notes say which of the masks you passed do not act in this layer, and why. With --model seq2seq,
    the translation model reading --text: its decoder cross-attention (target positions down, latents
    across) or its causal self-attention (each row's later positions marked as masked).

    \b
    Examples:
      npperceiver draw-attention --config small --random-init --seq-len 5 --attention-mask 1,1,1,0,0
      npperceiver draw-attention --config small --random-init --layer 'self:0:block 2' --head-mask 1,0,0.5,1
      npperceiver draw-attention --config small --random-init --text "Hi there" --pad-to 12 --format text
      npperceiver draw-attention --config language-perceiver --weights model.safetensors \\
        --text "This is a sentence." --layer decoder --head 3 -o decoder.png
      npperceiver draw-attention --model seq2seq --task digits-to-words --random-init --text 3412 --layer causal
      npperceiver draw-attention --model seq2seq --weights d2w.safetensors --text 3412 --layer decoder
    """
    if (weights is None) == (not random_init):
        raise click.UsageError("pass exactly one of --weights FILE and --random-init")
    if model == "seq2seq":
        if text is None:
            raise click.UsageError("--model seq2seq needs --text: the source to translate")
        for option, value in (("--seq-len", seq_len), ("--latent-mask", latent_mask), ("--head-mask", head_mask)):
            if value is not None:
                raise click.UsageError(f"{option} is not for --model seq2seq (the translation model takes a source "
                                       "--text, and no latent mask nor head_mask)")
        if batch != 1:
            raise click.UsageError("--batch is for random inputs; --text makes one row")
        trained = None
        if weights is not None and config_name is None and task is None and decoder is None:
            try:  # a train-translate checkpoint carries its config and task
                trained = translation.load_model(weights)
            except (OSError, ValueError) as e:
                raise CliError(f"--weights {weights}: {_one_line(e)} (or give the model's --task/--config)") from None
            config, name = trained.config, Path(weights).name
        else:
            config, name = _model_config("seq2seq", config_name, task, decoder)
        amap, slug = _seq2seq_attention(config, name, weights, seed, text, pad_to, attention_mask,
                                        layer or "decoder", head, example, trained)
        _write_attention(amap, f"{Path(name).stem}-attention-{slug}", output, fmt)
        return
    if task is not None or decoder is not None:
        raise click.UsageError("--task and --decoder describe a translation model: add --model seq2seq")
    if config_name is None:
        raise click.UsageError("Missing option '--config'.")
    layer = layer or "cross"
    if text is not None and (seq_len is not None or batch != 1):
        raise click.UsageError("--seq-len and --batch are for random inputs; --text makes one row of tokens")
    if pad_to is not None and text is None:
        raise click.UsageError("--pad-to pads a --text")
    config, name = _load_config(config_name)
    try:
        ref = attention_viz.parse_layer(layer, config)
        attention_viz.select_heads(head, ref, config)
    except ValueError as e:
        raise CliError(str(e)) from None
    if ref.kind == "decoder" and text is None:
        raise CliError("--layer decoder needs --text: the decoding cross-attention belongs to the masked "
                       "language model (PerceiverForMaskedLM); PerceiverModel has none")
    if text is not None and latent_mask is not None:
        raise CliError("--latent-mask: PerceiverForMaskedLM takes no latent mask (nor does HF's); draw the encoder "
                       "with --seq-len to see one")
    stem = f"{Path(name).stem}-attention-{ref.slug()}"
    fmt, output = _attention_output(fmt, output, stem)

    L, Hs, N = config.num_self_attention_layers, config.num_self_attention_heads, config.num_latents
    hm = None
    if head_mask is not None:
        hm = _mask_option("--head-mask", head_mask)
        if hm.shape[1] != Hs or hm.shape[0] not in (1, L):
            raise CliError(f"--head-mask has {hm.shape[0]} row(s) of {hm.shape[1]} values; give one row of Hs = {Hs} "
                           f"values (every layer) or L = {L} rows (num_blocks x num_self_attends_per_block)")
        hm = hm[0] if hm.shape[0] == 1 else hm  # (Hs,) or (L, Hs)

    try:
        if text is not None:
            _check_utf8(text)
            _check_text_model(config, name, "draw-attention --text")
            P = config.max_position_embeddings
            tokenizer = npperceiver.PerceiverTokenizer()
            encoded = tokenizer(text, padding="max_length" if pad_to else False, max_length=pad_to,
                                truncation=False)
            ids = encoded["input_ids"]
            what = f"[CLS] + {len(text.encode())} bytes + [SEP]" + (f" + {len(ids) - len(text.encode()) - 2} [PAD]"
                                                                  if pad_to else "")
            if pad_to is not None and pad_to < len(ids):
                raise CliError(f"--pad-to {pad_to} is shorter than the text ({len(ids)} tokens: {what})")
            if len(ids) > P:
                raise CliError(f"the text is {len(ids)} tokens long ({what}) but this model accepts at most {P} "
                               "(max_position_embeddings); shorten it")
            B, M = 1, len(ids)
            am = _keep_option("--attention-mask", attention_mask, B, M, f"the text's {M} tokens ({what})")
            if am is None and pad_to is not None:
                am = np.array([encoded["attention_mask"]], np.float32)  # the tokenizer's: 0 on [PAD]
            model = (npperceiver.PerceiverForMaskedLM.init(config, seed=seed) if random_init else
                     npperceiver.PerceiverForMaskedLM.from_state_dict(config, _model_tensors(weights)))
            out = model(np.array([ids]), attention_mask=am, head_mask=hm, output_attentions=True)
            tokens, lm = attention_viz.token_labels(ids), None
        else:
            B, M = batch, seq_len or 8
            am = _keep_option("--attention-mask", attention_mask, B, M, f"the {M} inputs (--seq-len)")
            lm = _keep_option("--latent-mask", latent_mask, B, N, f"the {N} latents (num_latents)")
            model = (npperceiver.PerceiverModel.init(config, seed=seed) if random_init else
                     npperceiver.PerceiverModel.from_state_dict(config, npperceiver.load_weights(weights),
                                                                strict=False))
            inputs = np.random.default_rng(seed).standard_normal((B, M, config.d_model)).astype(np.float32)
            out = model(inputs, attention_mask=am, head_mask=hm, latent_mask=lm, output_attentions=True)
            tokens = None
        if example >= B:
            raise CliError(f"--example {example} does not exist: the batch has {B} row{'s' * (B != 1)} "
                           f"(0 .. {B - 1}; --batch sets B)")
        amap = attention_viz.attention_map(out, config, ref, head=head, example=example, attention_mask=am,
                                           head_mask=hm, latent_mask=lm, tokens=tokens)
    except (OSError, ValueError) as e:
        raise CliError(_one_line(e)) from None
    _write_attention(amap, stem, output, fmt)


def _attention_output(fmt: Optional[str], output: Optional[str], stem: str) -> tuple[str, str]:
    """draw-attention's format (from --format, else the output's extension, else svg) and output (default:
    ``stem``.format, standard output for text); a picture format needs matplotlib."""
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output and output != "-" else ""
        fmt = {"txt": "text"}.get(suffix, suffix) if suffix in (*ATTENTION_FORMATS, "txt") else "svg"
    if output is None:
        output = "-" if fmt == "text" else f"{stem}.{fmt}"
    if fmt != "text":
        try:
            attention_viz.require_matplotlib()
        except ImportError:
            raise CliError(f"{fmt} output needs matplotlib, which is not installed: "
                           f"{attention_viz.INSTALL_HINT}; or use --format text, which needs nothing") from None
    return fmt, output


def _write_attention(amap, stem: str, output: Optional[str], fmt: Optional[str]) -> None:
    """Write draw-attention's picture or table (see :func:`_attention_output`)."""
    fmt, output = _attention_output(fmt, output, stem)
    data = attention_viz.attention_table(amap).encode() if fmt == "text" else attention_viz.render_attention(amap, fmt)
    _write(output, data)
    if output != "-":
        click.echo(f"wrote {output}", err=True)


def _seq2seq_attention(config: Seq2SeqConfig, name: str, weights: Optional[str], seed: int, text: str,
                       pad_to: Optional[int], attention_mask: Optional[str], layer: str, head: str, example: int,
                       trained: Optional[PerceiverSeq2Seq] = None):
    """draw-attention --model seq2seq: the translation model (``trained``, read from a train-translate
    checkpoint, or built from ``config`` and ``weights`` / ``seed``) reads the source ``text`` and,
    teacher-forced, its translation in the model's task; the figure model of ``layer``, and the layer's slug."""
    if config.task is None:
        raise CliError(f"--config {name}: the config names no task, so --text cannot be read as a source: add "
                       "\"task\" (digits-to-words or words-to-digits) to it")
    if example != 0:
        raise CliError(f"--example {example} does not exist: --text makes one row (0)")
    task = get_task(config.task)
    try:
        ref = attention_viz.parse_layer(layer, config)
        attention_viz.select_heads(head, ref, config)
        _check_utf8(text)
        ids, keep = task.encode_sources([text])  # (1, M), (1, M): the task's alphabet and lengths
        number = int(text) if task.name == "digits-to-words" and text.isdigit() and str(int(text)) == text else \
            words_to_number(text) if task.name == "words-to-digits" else None
        if number is None:
            raise ValueError(f"--text {text!r} is not a {task.name} source: a number 0-999999 in digits, no leading "
                             "zeros or separators")
        M, P = ids.shape[1], config.encoder.max_position_embeddings
        if pad_to is not None:
            if pad_to < M or pad_to > P:
                raise ValueError(f"--pad-to {pad_to}: the source has {M} bytes and the encoder reads at most {P} "
                                 "(max_position_embeddings): give M to P")
            ids = np.pad(ids, ((0, 0), (0, pad_to - M)))  # [PAD] = 0, after the source
            keep = np.pad(keep, ((0, 0), (0, pad_to - M)))
        am = _keep_option("--attention-mask", attention_mask, 1, ids.shape[1], f"the source's {ids.shape[1]} bytes")
        am = keep.astype(np.float32) if am is None else am
        target = task.encode_targets([task.target_tokens(number)])  # (1, T): the translation, [EOS], [PAD]
        model = (trained if trained is not None else PerceiverSeq2Seq.init(config, seed=seed) if weights is None
                 else PerceiverSeq2Seq.from_state_dict(
                     config, pretraining.model_weights(npperceiver.load_weights(weights))))  # no optimizer state
        out = model(ids, am, target, output_attentions=True)
        rows = shift_right(target)[0] if config.decoder == "autoregressive" else target[0]  # what each row reads
        amap = attention_viz.attention_map(
            out, config, ref, head=head, attention_mask=am, tokens=attention_viz.token_labels(ids[0]),
            target_tokens=attention_viz.target_token_labels(rows, task.target_vocab))
    except (OSError, ValueError) as e:
        raise CliError(_one_line(e)) from None
    return amap, ref.slug()


def _mask_option(option: str, value: str) -> np.ndarray:
    """A mask given on the command line, as a float32 (rows, columns) array: '1,1,0' is one row, ';' splits
    rows ('1,0;1,1'); a path to a .npy file, or to a text file with one row per line, is read instead."""
    path = Path(value)
    if path.is_file():
        if path.suffix.lower() == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CliError(f"{option} {value}: cannot read it as a .npy file: {_one_line(e)}") from None
            if arr.ndim not in (1, 2) or arr.size == 0 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise CliError(f"{option} {value}: expected a 1-D or 2-D array of numbers, got {arr.dtype} {arr.shape}")
            return np.atleast_2d(arr).astype(np.float32)
        try:
            rows = [r for r in path.read_text(encoding="utf-8").splitlines() if r.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"{option} {value}: cannot read it: {_one_line(e)}") from None
    else:
        rows = value.split(";")
    parsed = []
    for row in rows:
        cells = [c for c in re.split(r"[,\s]+", row.strip()) if c]
        if not cells:
            raise CliError(f"{option} {value!r}: an empty row (write values like 1,1,0; rows split by ';')")
        try:
            parsed.append([float(c) for c in cells])
        except ValueError:
            bad = next(c for c in cells if not _is_number(c))
            hint = "no such file, and" if "," not in value and ";" not in value and not _is_number(value) else "but"
            raise CliError(f"{option} {value!r}: {hint} {bad!r} is not a number (write values like 1,1,0; rows "
                           f"split by ';'; or give a file)") from None
    if len({len(r) for r in parsed}) > 1:
        raise CliError(f"{option} {value!r}: rows of different lengths ({', '.join(str(len(r)) for r in parsed)})")
    return np.array(parsed, np.float32)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _keep_option(option: str, value: Optional[str], B: int, K: int, what: str) -> Optional[np.ndarray]:
    """A 0/1 keep-mask option as (B, K): one row is used for every batch row."""
    if value is None:
        return None
    mask = _mask_option(option, value)
    if mask.shape[1] != K:
        raise CliError(f"{option} has {mask.shape[1]} values per row but there are {K} keys: {what}")
    if mask.shape[0] not in (1, B):
        raise CliError(f"{option} has {mask.shape[0]} rows; give one (used for every example) or B = {B}")
    if not np.all((mask == 0) | (mask == 1)):
        raise CliError(f"{option}: values must be 1 (keep) or 0 (drop), found {mask[(mask != 0) & (mask != 1)][0]:g}")
    return np.broadcast_to(mask, (B, K)).copy()


def _check_mlm(config, name: str) -> None:
    """--model mlm: the config must suit PerceiverForMaskedLM (d_model divisible by 8)."""
    try:
        npperceiver.text.check_mlm_config(config)
    except ValueError as e:
        raise CliError(f"--config {name}: {e}") from None


def _check_text_model(config, name: str, command: str) -> None:
    """A command that feeds text through the byte tokenizer: the config must suit PerceiverForMaskedLM and
    its vocabulary must be the tokenizer's 262 ids."""
    _check_mlm(config, name)
    if config.vocab_size != npperceiver.tokenizer.VOCAB_SIZE:
        raise CliError(
            f"--config {name}: vocab_size is {config.vocab_size}, but {command} reads text with the byte tokenizer, "
            f"whose {npperceiver.tokenizer.VOCAB_SIZE} ids (6 special tokens + 256 bytes) must be the model's "
            "vocabulary: set vocab_size to 262"
        )


# ============================================================================ the text path: fill-mask, convert-checkpoint
def _one_line(error: Union[BaseException, str], limit: int = 2000) -> str:
    """The first line of an error message (library errors are one line; torch's unpickler's are not), cut
    to ``limit`` characters so that a huge value echoed in a message stays a readable line."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else (type(error).__name__ if isinstance(error, BaseException) else "")
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line) - limit:,} more characters)"


def _show_token(token_id: int) -> str:
    """A readable form of one id: ``[MASK]`` for a special token, ``'m'`` for a printable byte, ``\\xc3`` else."""
    if token_id < npperceiver.tokenizer.NUM_SPECIAL_TOKENS:
        return npperceiver.tokenizer.SPECIAL_TOKENS[token_id]
    byte = token_id - npperceiver.tokenizer.NUM_SPECIAL_TOKENS
    return repr(chr(byte)) if 32 <= byte < 127 else f"\\x{byte:02x}"


@main.command("fill-mask")
@click.argument("text")
@click.option("--weights", type=click.Path(dir_okay=False), help="PerceiverForMaskedLM weights: .safetensors or .npz.")
@click.option("--config", "config_name", metavar="PATH_OR_PRESET",
              help="A JSON config (an HF config.json works), or a bundled preset; must match the weights.  "
                   "[default: the config saved in the weights file (train-mlm), else language-perceiver]")
@click.option("--random-init", is_flag=True, help="No weights: a seeded random model (predictions are noise).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for --random-init.")
@click.option("--top-k", type=click.IntRange(1, 262), default=5, show_default=True,
              help="Predictions shown per masked byte.")
def fill_mask(text: str, weights: "str | None", config_name: str, random_init: bool, seed: int, top_k: int) -> None:
    """Predict the bytes hidden behind each [MASK] in TEXT (one [MASK] per byte).

    \b
    Example (HF's documented one; 9 masks hide the 9 bytes of " missing."):
      npperceiver fill-mask --weights model.safetensors \\
        "This is an incomplete sentence where some words are$(printf '[MASK]%.0s' {1..9})"
    """
    if (weights is None) == (not random_init):
        raise click.UsageError("pass exactly one of --weights FILE and --random-init")
    _check_utf8(text)
    state_dict = None
    if weights is not None:  # the file's own config when it carries one (train-mlm's checkpoints do)
        state_dict, metadata = _read_mlm_weights(weights, "--weights")
        config = _config_for_weights(weights, metadata, config_name, default="language-perceiver")
        name = config_name or weights
    else:
        config, name = _load_config(config_name or "language-perceiver")
    _check_text_model(config, name, "fill-mask")
    tokenizer = npperceiver.PerceiverTokenizer()
    input_ids = tokenizer(text)["input_ids"]  # [CLS] bytes [SEP]
    if len(input_ids) > config.max_position_embeddings:
        raise CliError(
            f"the text is {len(input_ids)} tokens long ([CLS] + {len(input_ids) - 2} bytes + [SEP]) but this model "
            f"accepts at most {config.max_position_embeddings} (max_position_embeddings); shorten it"
        )
    if tokenizer.mask_token_id not in input_ids:
        raise CliError("the text has no [MASK]: write one [MASK] for each byte to predict")

    try:
        if random_init:
            model = npperceiver.PerceiverForMaskedLM.init(config, seed=seed)
        else:
            model = npperceiver.PerceiverForMaskedLM.from_state_dict(config, state_dict)
        spans, filled = npperceiver.text.fill_mask(model, input_ids, top_k=top_k)
    except (OSError, ValueError) as e:
        raise CliError(_one_line(e)) from None
    except MemoryError:
        raise CliError(f"out of memory running the model of --config {name}") from None

    lines = []  # everything is worked out before anything is printed: an error never follows partial output
    if random_init:
        lines.append(f"note: random weights (--random-init, seed {seed}): the predictions are meaningless")
    lines.append(f"filled: {tokenizer.decode(filled[1:-1])!r}")
    for n, span in enumerate(spans, 1):
        lines.append(f"span {n}: input positions {span.start}-{span.stop - 1} ({span.stop - span.start} masked "
                     f"bytes), greedy {tokenizer.decode(span.greedy_ids)!r}")
        for position, ids, probs in zip(range(span.start, span.stop), span.top_ids, span.top_probs):
            choices = "  ".join(f"{_show_token(int(i))} {p:.3f}" for i, p in zip(ids, probs))
            lines.append(f"  {position:>5}: {choices}")
    click.echo("\n".join(lines))


def _check_utf8(text: str) -> None:
    """TEXT must be valid UTF-8: the model reads its bytes. (Python hands over undecodable bytes of a
    command line as lone surrogates; they are found here, and the first bad byte is named.)"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = text[:e.start].encode("utf-8", "surrogateescape")
        bad = text[e.start].encode("utf-8", "surrogateescape")
        what = f"byte 0x{bad[0]:02x} at byte position {len(raw)}" if len(bad) == 1 else f"character {text[e.start]!r}"
        raise CliError(f"TEXT is not valid UTF-8 ({what}): the model reads the text's UTF-8 bytes") from None


@main.command("convert-checkpoint", short_help="Turn a PyTorch checkpoint into .safetensors or .npz.")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
def convert_checkpoint(source: str, dest: str) -> None:
    """Turn a PyTorch checkpoint (SOURCE, e.g. pytorch_model.bin) into DEST (.safetensors or .npz).

    Needs PyTorch, imported by this command only; the tensors are read with
    torch.load(map_location="cpu", weights_only=True), floats stored as float32, names kept.
    Sparse, meta-device, quantized and complex tensors are refused, and DEST may not be SOURCE.
    """
    suffix = next((s for s in (".safetensors", ".npz") if dest.endswith(s)), None)
    if suffix is None:
        raise click.BadParameter(f"{dest} must end in .safetensors or .npz", param_hint="DEST")
    if not os.path.isfile(source):
        raise CliError(f"checkpoint {source} does not exist" if not os.path.exists(source)
                       else f"checkpoint {source} is not a regular file")
    if _same_file(source, dest):
        raise CliError(f"DEST {dest} is SOURCE: writing it would replace the checkpoint being converted; "
                       "choose another name")
    try:
        import torch
    except ImportError:
        raise CliError("convert-checkpoint needs PyTorch to read the checkpoint: pip install torch") from None
    try:
        state_dict = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (pickle, zip, runtime) for a file it cannot read
        raise CliError(f"cannot read {source} as a PyTorch checkpoint: {_one_line(e)}") from None
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise CliError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    arrays = {k: _tensor_to_array(torch, v, f"{source}: tensor {_one_line(repr(k), 200)}") for k, v in state_dict.items()}

    try:
        _write(dest, lambda path: npperceiver.save_weights(path, arrays), suffix=suffix)
    except ValueError as e:
        raise CliError(f"cannot write {dest}: {_one_line(e)}") from None
    click.echo(f"wrote {len(arrays)} tensors ({sum(a.size for a in arrays.values()):,} values) to {dest}")


def _same_file(a: str, b: str) -> bool:
    """``a`` and ``b`` name the same file (through a link, ``./``, or another spelling)."""
    try:
        return os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _tensor_to_array(torch, tensor, where: str):
    """One checkpoint tensor as a numpy array, floats as float32; a :class:`CliError` naming the tensor for
    what has no faithful numpy form (sparse, meta, quantized, complex tensors, float32 overflow)."""
    if tensor.layout != torch.strided:
        raise CliError(f"{where} is {str(tensor.layout).replace('torch.', '')}, not a dense tensor; "
                       "npperceiver stores dense arrays (save the checkpoint with .to_dense() first)")
    if tensor.is_meta:
        raise CliError(f"{where} is on the meta device: it has a shape but no values")
    if tensor.is_quantized:
        raise CliError(f"{where} is quantized ({tensor.dtype}); dequantize it first")
    if tensor.is_complex():
        raise CliError(f"{where} is complex ({tensor.dtype}); weights are real numbers")
    tensor = tensor.detach()
    try:
        if tensor.is_floating_point():
            as_float32 = tensor.to(torch.float32)
            if int(torch.isfinite(as_float32).sum()) != int(torch.isfinite(tensor).sum()):
                raise CliError(f"{where} holds {tensor.dtype} values beyond float32's range (about 3.4e38)")
            tensor = as_float32
        return tensor.cpu().numpy()
    except (RuntimeError, TypeError) as e:  # a dtype numpy does not have
        raise CliError(f"{where} cannot be turned into a numpy array: {_one_line(e, 200)}") from None


# ============================================================================ train-mlm
@main.command("train-mlm", short_help="Train a byte-level masked language model on a text file.")
@click.option("--text", "text_path", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="The training text (any bytes; UTF-8 text is what fill-mask reads). Its last --holdout share "
                   "is held out.")
@click.option("--output", "-o", required=True, metavar="FILE.safetensors",
              help="The checkpoint: model weights (HF names), optimizer state, step, random state and config. "
                   "Rewritten atomically every --save-every steps and at the end.")
@click.option("--config", "config_name", metavar="PATH_OR_PRESET",
              help="The model: a JSON config or a bundled preset.  [default: small; with --weights or "
                   "--resume, the file's own]")
@click.option("--weights", type=click.Path(dir_okay=False), metavar="FILE",
              help="Start from these PerceiverForMaskedLM weights (.safetensors or .npz) instead of a random init.")
@click.option("--resume", type=click.Path(dir_okay=False), metavar="CHECKPOINT",
              help="Continue the run saved in CHECKPOINT (often the same file as -o): weights, AdamW state, step "
                   "and random state, so it goes on exactly as if it had not stopped. Its settings are kept.")
@click.option("--steps", type=click.IntRange(1, 10_000_000), default=2000, show_default=True,
              help="Total number of updates (the learning-rate schedule spans them).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Windows of text per update.")
@click.option("--seq-len", type=click.IntRange(min=3), metavar="M",
              help="Tokens per window: [CLS], M-2 bytes, [SEP].  [default: max_position_embeddings, at most 512]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Peak learning rate of AdamW.")
@click.option("--warmup", type=click.IntRange(min=0), metavar="STEPS",
              help="Linear warmup steps, then a cosine decay to 0.  [default: 5% of --steps]")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="AdamW's decoupled weight decay.")
@click.option("--clip", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Clip the gradients' global norm to this (0: no clipping).")
@click.option("--mask-probability", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.15,
              show_default=True, help="Share of words masked (each masked word: 80% [MASK], 10% random bytes, "
                                      "10% unchanged).")
@click.option("--dropout/--no-dropout", default=True, show_default=True,
              help="Attention dropout with the config's attention_probs_dropout_prob, as HF's train() mode.")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of the text, at its end, held out for the held-out loss (0: none).")
@click.option("--eval-every", type=click.IntRange(min=1), default=100, show_default=True, metavar="STEPS",
              help="Measure the held-out loss and masked-byte accuracy this often (and before the first step).")
@click.option("--eval-windows", type=click.IntRange(min=1), default=128, show_default=True, metavar="N",
              help="Held-out windows scored each time (spread evenly over the held-out text).")
@click.option("--save-every", type=click.IntRange(min=1), default=200, show_default=True, metavar="STEPS",
              help="Write the checkpoint this often (and at the end).")
@click.option("--log", "log_path", metavar="FILE.csv",
              help="Also write the history as CSV: step, lr, train_loss, heldout_loss, heldout_accuracy "
                   "(rewritten with each checkpoint; `python benchmarks/plot_training.py FILE.csv` draws it).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random init, the windows, the masking and the dropout.")
@click.pass_context
def train_mlm(ctx: click.Context, text_path: str, output: str, config_name: Optional[str], weights: Optional[str],
              resume: Optional[str], steps: int, batch_size: int, seq_len: Optional[int], lr: float,
              warmup: Optional[int], weight_decay: float, clip: float, mask_probability: float, dropout: bool,
              holdout: float, eval_every: int, eval_windows: int, save_every: int, log_path: Optional[str],
              seed: int) -> None:
    """Train a byte-level masked language model (PerceiverForMaskedLM) on a text file, from a random init,
    from --weights, or continuing a run (--resume).

    Each update reads --batch-size random windows of the text and masks whole words, as the Perceiver IO
    paper's MLM does: 15% of the words (a word with the whitespace before it), each masked word's bytes
    becoming [MASK] (80%), random bytes (10%) or staying (10%); the loss is the cross-entropy on the
    bytes of the masked words. AdamW, a warmup + cosine learning rate, gradient clipping. The held-out
    loss and the masked-byte accuracy are measured on fixed masked windows of the held-out text.

    Ctrl-C stops the run and leaves the last checkpoint as it was (continue with --resume). The checkpoint
    is a .safetensors file with the config inside: `npperceiver fill-mask --weights FILE` needs no --config.
    Small configs run faster with one BLAS thread: OPENBLAS_NUM_THREADS=1 npperceiver train-mlm ...

    \b
    Examples:
      npperceiver train-mlm --config small --text data/alice.txt --steps 2000 -o mlm.safetensors
      npperceiver train-mlm --text data/alice.txt --resume mlm.safetensors -o mlm.safetensors
      npperceiver fill-mask --weights mlm.safetensors "Alice was beginning to get very[MASK][MASK][MASK][MASK][MASK]"
    """
    _check_checkpoint_output(output)
    if weights is not None and resume is not None:
        raise click.UsageError("pass at most one of --weights (start from weights) and --resume (continue a run)")
    corpus = _read_corpus(text_path)
    explicit = {name for name in ctx.params if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    corpus_id = {"bytes": len(corpus), "sha256": hashlib.sha256(corpus).hexdigest()}

    if resume is not None:
        state = _resume_state(resume, ctx.params, explicit, corpus_id)
        settings = state.settings
        settings["steps"] = steps if "steps" in explicit else settings["steps"]
        if settings["steps"] <= state.step:
            raise CliError(f"--resume {resume} is at step {state.step}, the end of its {settings['steps']} steps: "
                           f"nothing to do (pass a larger --steps to go on)")
        config = state.model.config
    else:
        if weights is not None:
            tensors, metadata = _read_mlm_weights(weights, "--weights")
            config = _config_for_weights(weights, metadata, config_name)
            try:
                model = npperceiver.PerceiverForMaskedLM.from_state_dict(config, tensors)
            except ValueError as e:
                raise CliError(f"--weights {weights}: {_one_line(e)}") from None
        else:
            config, name = _load_config(config_name or "small")
            _check_text_model(config, name, "train-mlm")
            model = npperceiver.PerceiverForMaskedLM.init(config, seed=seed)
        P = config.max_position_embeddings
        settings = dict(
            steps=steps, batch_size=batch_size, seq_len=seq_len or min(P, 512), lr=lr,
            warmup_steps=warmup if warmup is not None else max(1, steps // 20) if steps > 1 else 0,
            weight_decay=weight_decay, clip=clip, mask_probability=mask_probability, dropout=dropout,
            holdout=holdout, eval_every=eval_every, eval_windows=eval_windows, save_every=save_every, seed=seed,
            corpus=corpus_id, started_from=os.path.basename(weights) if weights else "random init",
        )
        if settings["seq_len"] > P:
            raise CliError(f"--seq-len {settings['seq_len']} is longer than the model's max_position_embeddings ({P})")
        if settings["warmup_steps"] > steps:
            raise CliError(f"--warmup {settings['warmup_steps']} is longer than --steps {steps}")
        state = pretraining.TrainingState(
            model=model, optimizer=npperceiver.AdamW(model, lr=lr, weight_decay=weight_decay),
            rng=np.random.default_rng(seed), step=0, settings=settings, train_loss=[], evaluations=[])

    M, P = settings["seq_len"], config.max_position_embeddings
    train_part, heldout_part = pretraining.split_corpus(corpus, settings["holdout"])
    width = M - 2
    if len(train_part) < width:
        raise CliError(f"--text {text_path}: its training part has {len(train_part):,} bytes, fewer than one window "
                       f"of {width} bytes (--seq-len {M} minus [CLS] and [SEP]); give a longer text or a smaller "
                       "--seq-len")
    if settings["holdout"] and len(heldout_part) < width:
        raise CliError(f"--text {text_path}: its held-out part (--holdout {settings['holdout']:g}) has "
                       f"{len(heldout_part):,} bytes, fewer than one window of {width} bytes; give a longer text, "
                       "a larger --holdout, or --holdout 0")
    train_ids = pretraining.byte_ids(train_part)
    heldout = (pretraining.heldout_set(heldout_part, M, P, settings["eval_windows"])
               if settings["holdout"] else None)
    if heldout is not None and not (heldout[1] != IGNORE_INDEX).any():
        raise CliError(f"--text {text_path}: its held-out windows (--eval-windows {settings['eval_windows']}) have no "
                       "masked byte to score; give a longer text, a larger --holdout or --eval-windows, or --holdout 0")
    schedule = pretraining.Schedule(lr=settings["lr"], warmup_steps=settings["warmup_steps"],
                                    total_steps=settings["steps"], weight_decay=settings["weight_decay"],
                                    max_grad_norm=settings["clip"] or None)
    _train_loop(state, schedule, train_ids, heldout, output, log_path, text_path)


def _train_loop(state, schedule, train_ids, heldout, output: str, log_path: Optional[str], text_path: str) -> None:
    """The updates, evaluations and checkpoints of train-mlm, with a progress bar on stderr."""
    settings, model = state.settings, state.model
    B, M, P = settings["batch_size"], settings["seq_len"], model.config.max_position_embeddings
    first_step = state.step
    first_eval = None if not state.evaluations else state.evaluations[0]

    def evaluate() -> None:
        if heldout is None:
            return
        result = pretraining.evaluate(model, *heldout)
        state.evaluations.append((state.step, result.loss, result.accuracy))
        recent = state.train_loss[-settings["eval_every"]:]
        train = f"; train loss {np.mean(recent):.3f}" if recent else ""
        end_bar_line = "\n" if sys.stderr.isatty() else ""  # the progress bar's line is still open there
        click.echo(f"{end_bar_line}step {state.step}: held-out loss {result.loss:.3f}, masked-byte accuracy "
                   f"{result.accuracy:.1%} ({result.count:,} bytes){train}", err=True)

    def save() -> None:
        tensors, metadata = pretraining.checkpoint_tensors(state), pretraining.checkpoint_metadata(state)
        _write(output, lambda path: npperceiver.save_weights(path, tensors, metadata), suffix=".safetensors")
        if log_path:
            _write(log_path, _history_csv(state, schedule).encode())

    started = time.perf_counter()
    try:
        if state.step == 0:
            evaluate()  # before the first update: the "before" of the run's numbers
            first_eval = state.evaluations[0] if state.evaluations else None
        with click.progressbar(length=settings["steps"] - first_step, label="train-mlm", file=sys.stderr,
                               item_show_func=lambda status: status, show_eta=True) as bar:
            while state.step < settings["steps"]:
                windows = pretraining.sample_windows(train_ids, B, M, state.rng)  # (B, M)
                input_ids, labels = pretraining.mask_words(windows, P, state.rng, settings["mask_probability"])
                loss, _ = pretraining.train_step(
                    model, state.optimizer, input_ids, labels, schedule.lr_at(state.step), schedule.max_grad_norm,
                    dropout_rng=state.rng if settings["dropout"] else None)
                state.step += 1
                state.train_loss.append(loss)
                done = state.step - first_step
                speed = done * B * (M - 2) / max(time.perf_counter() - started, 1e-9)
                bar.update(1, f"step {state.step} loss {loss:.3f} {_rate(speed)}")
                if state.step % settings["eval_every"] == 0 or state.step == settings["steps"]:
                    evaluate()
                if state.step % settings["save_every"] == 0 or state.step == settings["steps"]:
                    save()
    except KeyboardInterrupt:
        on_disk = _checkpoint_step(output)  # what the file holds (a signal may land after its move, before we knew)
        where = (f"{output} holds step {on_disk}, the last checkpoint" if on_disk is not None
                 else f"{output} was left as it was" + (" (it holds no train-mlm checkpoint)"
                                                        if os.path.exists(output) else " (nothing was written)"))
        interrupted = CliError(f"interrupted at step {state.step}; {where}. Continue with --resume {output}")
        interrupted.exit_code = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)
        raise interrupted from None
    elapsed = time.perf_counter() - started
    steps_done = state.step - first_step
    lines = [f"trained steps {first_step}-{state.step} of {settings['steps']} in {elapsed:.1f} s "
             f"({_rate(steps_done * B * (M - 2) / max(elapsed, 1e-9))}; batch {B} x {M - 2} bytes)"]
    if first_eval is not None and state.evaluations:
        _, loss0, acc0 = first_eval
        _, loss1, acc1 = state.evaluations[-1]
        lines.append(f"held-out loss {loss0:.3f} -> {loss1:.3f} nats per masked byte, "
                     f"masked-byte accuracy {acc0:.1%} -> {acc1:.1%}")
    lines.append(f"wrote {output} (step {state.step}; try: npperceiver fill-mask --weights {output} "
                 f"\"...[MASK][MASK]...\")")
    click.echo("\n".join(lines))


def _checkpoint_step(path: str) -> Optional[int]:
    """The step of the train-mlm checkpoint at ``path``, or None (no file, or not a readable checkpoint)."""
    try:
        metadata = npperceiver.load_metadata(path)
        return int(metadata["step"]) if pretraining.is_checkpoint(metadata) else None
    except (ValueError, KeyError):
        return None


def _rate(bytes_per_second: float) -> str:
    """``12.3 kB/s``: training bytes read per second."""
    return f"{bytes_per_second / 1e3:.1f} kB/s" if bytes_per_second < 1e6 else f"{bytes_per_second / 1e6:.2f} MB/s"


def _history_csv(state, schedule) -> str:
    """The run's history, one row per step (0 = before the first update): the learning rate of the update that
    led to it, its training loss, and the held-out numbers where they were measured."""
    evaluations = {step: (loss, acc) for step, loss, acc in state.evaluations}
    rows = ["step,lr,train_loss,heldout_loss,heldout_accuracy"]
    for step in range(state.step + 1):
        lr = f"{schedule.lr_at(step - 1):.6g}" if step else ""
        train = f"{state.train_loss[step - 1]:.6f}" if step else ""
        heldout = evaluations.get(step)
        rows.append(f"{step},{lr},{train}," + (f"{heldout[0]:.6f},{heldout[1]:.6f}" if heldout else ","))
    return "\n".join(rows) + "\n"


def _read_corpus(path: str) -> bytes:
    """The training text's bytes; one-line errors for a missing, unreadable or empty file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CliError(f"--text {path}: no such file") from None
    except OSError as e:
        raise CliError(f"--text {path}: cannot read it: {e.strerror or e}") from None
    if not data.strip():
        raise CliError(f"--text {path} is empty" + (" (whitespace only)" if data else "") + ": nothing to train on")
    return data


def _model_tensors(path: str) -> dict:
    """A weight file's model tensors: all of them, but a train-mlm checkpoint's optimizer state and history."""
    return pretraining.model_weights(npperceiver.load_weights(path))


def _read_mlm_weights(path: str, option: str) -> tuple[dict, dict]:
    """A PerceiverForMaskedLM weight file's model tensors (a train-mlm checkpoint's optimizer state and history
    left out) and its metadata; a one-line error for a file of another kind."""
    try:
        metadata = npperceiver.load_metadata(path)
        tensors = npperceiver.load_weights(path)
    except ValueError as e:
        raise CliError(f"{option} {path}: {_one_line(e)}") from None
    kind = metadata.get("model") or pretraining.describe_weights(tensors)
    if kind == "PerceiverModel":
        raise CliError(f"{option} {path} holds PerceiverModel (encoder-only) weights, not a masked language model's "
                       "(PerceiverForMaskedLM: text preprocessor, encoder, decoder)")
    if kind != "PerceiverForMaskedLM":
        raise CliError(f"{option} {path} does not hold PerceiverForMaskedLM weights (no perceiver.input_preprocessor.* "
                       "and embedding_decoder.bias tensors)")
    return pretraining.model_weights(tensors), metadata


def _config_for_weights(path: str, metadata: dict, config_name: Optional[str], default: Optional[str] = None):
    """The config of a weight file: the one it carries (a train-mlm checkpoint), which an explicit --config must
    match; else --config, else ``default`` (else an error)."""
    try:
        carried = pretraining.config_from_metadata(metadata)
    except ValueError as e:
        raise CliError(f"{path}: {e}") from None
    if carried is None:
        if config_name is None and default is None:
            raise CliError(f"{path} carries no config (it was not written by train-mlm): pass --config")
        config, name = _load_config(config_name or default)
        _check_mlm(config, name)
        return config
    if config_name is not None:
        config, name = _load_config(config_name)
        if config.to_dict() != carried.to_dict():
            changed = sorted(k for k, v in config.to_dict().items() if carried.to_dict().get(k) != v)
            raise CliError(f"--config {config_name} differs from the config saved in {path} "
                           f"({', '.join(changed[:4])}{'...' if len(changed) > 4 else ''}); leave --config out "
                           "to use the saved one")
    click.echo(f"config: saved in {path}", err=True)
    return carried


def _resume_state(path: str, params: dict, explicit: set, corpus_id: dict):
    """The training state saved in a train-mlm checkpoint; one-line errors for anything else, and for options
    that contradict the run's saved settings."""
    if not os.path.exists(path):
        raise CliError(f"--resume {path}: no such file")
    try:
        metadata = npperceiver.load_metadata(path)
        if translation.is_checkpoint(metadata):
            raise CliError(f"--resume {path} is a train-translate checkpoint (a translation model), not a "
                           "train-mlm one: resume it with `npperceiver train-translate --resume`")
        if not pretraining.is_checkpoint(metadata):
            kind = pretraining.describe_weights(npperceiver.load_weights(path))
            raise CliError(f"--resume {path} is not a train-mlm checkpoint ({kind} weights without optimizer "
                           f"state); to start a new run from its weights, use --weights {path}")
        state = pretraining.restore(npperceiver.load_weights(path), metadata)
    except ValueError as e:
        raise CliError(f"--resume {path}: {_one_line(e)}") from None
    if params.get("config_name") is not None:
        _config_for_weights(path, metadata, params["config_name"])
    renamed = {"warmup": "warmup_steps"}
    for option in sorted(explicit - {"text_path", "output", "resume", "steps", "log_path", "config_name"}):
        key = renamed.get(option, option)
        if key in state.settings and params[option] != state.settings[key]:
            flag = "--" + option.replace("_", "-")
            raise CliError(f"{flag} {params[option]} differs from the resumed run's {state.settings[key]}: a resumed "
                           "run keeps its settings (leave the option out)")
    trained_on = state.settings.get("corpus", {})
    if trained_on != corpus_id:
        raise CliError(f"--text is not the text the run was trained on ({corpus_id['bytes']:,} bytes, sha256 "
                       f"{corpus_id['sha256'][:12]}...; the run's: {trained_on.get('bytes', '?')} bytes, sha256 "
                       f"{str(trained_on.get('sha256', '?'))[:12]}...)")
    return state


# ============================================================================ translation: train-translate, translate
#: train-translate's default --steps per task: the recipe, checked in NumPy (docs/translation.md).
DEFAULT_STEPS = {"digits-to-words": 1000, "words-to-digits": 2000}


@main.command("train-translate", short_help="Train a Perceiver to translate numbers between digits and words.")
@click.option("--task", type=click.Choice(tasks.TASKS),
              help="digits-to-words (\"42\" -> \"forty two\") or words-to-digits (the reverse).  [required unless "
                   "--resume]")
@click.option("--decoder", type=click.Choice(seq2seq.DECODERS), default="autoregressive", show_default=True,
              help="autoregressive: T5-like, a causal self-attention and a cross-attention to the latents per "
                   "layer, one token at a time; queries: Perceiver IO's, learned output queries read the latents "
                   "once and predict every token at the same time.")
@click.option("--output", "-o", required=True, metavar="FILE.safetensors",
              help="The checkpoint: model weights, config and task, optimizer state, step, random state, "
                   "history. Rewritten atomically at every evaluation and at the end.")
@click.option("--resume", type=click.Path(dir_okay=False), metavar="CHECKPOINT",
              help="Continue the run saved in CHECKPOINT (often the same file as -o) exactly as if it had not "
                   "stopped. Its settings are kept; only --steps may grow.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE.json",
              help="Another model: a Seq2SeqConfig as JSON (Seq2SeqConfig.to_dict(); a 'task' or 'decoder' in it "
                   "must agree with --task and --decoder).  [default: the recipe's, Seq2SeqConfig.for_task]")
@click.option("--steps", type=click.IntRange(1, 10_000_000), metavar="N",
              help="Total number of updates; the learning-rate schedule spans them.  [default: "
                   f"{DEFAULT_STEPS['digits-to-words']} for digits-to-words, {DEFAULT_STEPS['words-to-digits']} "
                   "for words-to-digits]")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=128, show_default=True,
              help="Training numbers per update (every digit length 1-6 equally likely).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="Peak learning rate of AdamW.")
@click.option("--warmup", type=click.IntRange(min=0), metavar="STEPS",
              help="Linear warmup steps, then a cosine decay to 0.  [default: 100, at most a tenth of --steps]")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="AdamW's decoupled weight decay.")
@click.option("--clip", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Clip the gradients' global norm to this (0: no clipping).")
@click.option("--eval-every", type=click.IntRange(min=1), default=100, show_default=True, metavar="K",
              help="Decode the held-out set (1,611 numbers, every length 1-6) this often, and at the end; each "
                   "evaluation also writes the checkpoint.")
@click.option("--stop-at-target", is_flag=True,
              help="Stop early once exact match is >= 99% overall and on every digit length at two evaluations "
                   "in a row (the schedule stays the one --steps sets).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the random init and of the training numbers.")
@click.pass_context
def train_translate(ctx: click.Context, task: Optional[str], decoder: str, output: str, resume: Optional[str],
                    config_path: Optional[str], steps: Optional[int], batch_size: int, lr: float,
                    warmup: Optional[int], weight_decay: float,
                    clip: float, eval_every: int, stop_at_target: bool, seed: int) -> None:
    """Train a sequence-to-sequence Perceiver to translate numbers 0-999,999 between their digits and their
    English words, in NumPy: the byte-level Perceiver encoder and the --decoder of your choice.

    Each update reads --batch-size training numbers (the fixed held-out set is never trained on), teacher
    forcing, AdamW with a warmup + cosine learning rate -- the recipe of docs/translation.md. The progress
    bar shows the training loss and the last held-out exact match; every --eval-every steps the held-out set
    is decoded greedily and its exact match printed, overall and by digit length, and the checkpoint is
    written. The defaults reach >= 99% exact match overall and on every digit length, in both directions.

    Ctrl-C stops the run and leaves the last checkpoint as it was (continue with --resume). Small models run
    faster with one BLAS thread: OPENBLAS_NUM_THREADS=1 npperceiver train-translate ...

    \b
    Examples:
      npperceiver train-translate --task digits-to-words -o d2w.safetensors
      npperceiver translate --weights d2w.safetensors 42 700005
      npperceiver train-translate --task words-to-digits --decoder queries --seed 1 -o w2d.safetensors
      npperceiver train-translate --resume w2d.safetensors -o w2d.safetensors --steps 3000
    """
    _check_checkpoint_output(output)
    explicit = {name for name in ctx.params if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    if resume is not None:
        if config_path is not None:
            raise click.UsageError("pass at most one of --config (a new model) and --resume (a run's own model)")
        state = _resume_translation(resume, ctx.params, explicit)
        settings = state.settings
        settings["steps"] = steps if steps is not None else settings["steps"]
        if settings["steps"] <= state.step:
            raise CliError(f"--resume {resume} is at step {state.step}, the end of its {settings['steps']} steps: "
                           f"nothing to do (pass a larger --steps to go on)")
    else:
        if task is None:
            raise click.UsageError("Missing option '--task' (digits-to-words or words-to-digits; or --resume a "
                                   "run)")
        steps = steps if steps is not None else DEFAULT_STEPS[task]
        settings = dict(
            task=task, decoder=decoder, steps=steps, batch_size=batch_size, lr=lr,
            warmup_steps=warmup if warmup is not None else min(100, steps // 10),
            weight_decay=weight_decay, clip=clip, eval_every=eval_every, stop_at_target=stop_at_target, seed=seed,
        )
        if settings["warmup_steps"] > steps:
            raise CliError(f"--warmup {settings['warmup_steps']} is longer than --steps {steps}")
        config = (_load_seq2seq_config(config_path, wanted={"task": task, "decoder": decoder}) if config_path
                  else None)
        if config_path:
            settings["config"] = os.path.basename(config_path)
        state = translation.new_state(task, decoder, seed, settings, config)
    schedule = translation.Schedule(lr=settings["lr"], warmup_steps=settings["warmup_steps"],
                                    total_steps=settings["steps"], weight_decay=settings["weight_decay"],
                                    max_grad_norm=settings["clip"] or None)
    _translate_loop(state, schedule, output)


def _translate_loop(state, schedule, output: str) -> None:
    """The updates, evaluations and checkpoints of train-translate, with a progress bar on stderr."""
    settings, model = state.settings, state.model
    task, split, B = tasks.get_task(settings["task"]), tasks.NumberSplit(), settings["batch_size"]
    held_out = split.all_held_out()
    first_step = state.step
    status = {"exact": f"{state.evaluations[-1][1]:.1%}" if state.evaluations else "-"}

    def evaluate() -> None:
        result = translation.evaluate(model, task, held_out)
        state.evaluations.append(result.row(state.step))
        status["exact"] = f"{result.exact:.1%}"
        recent = state.train_loss[-settings["eval_every"]:]
        train = f"; train loss {np.mean(recent):.3f}" if recent else ""
        end_bar_line = "\n" if sys.stderr.isatty() else ""  # the progress bar's line is still open there
        clock = f" [{spent['wall']:.1f} s training, {spent['cpu']:.1f} s CPU]" if state.step > first_step else ""
        click.echo(f"{end_bar_line}step {state.step}: held-out exact match {result.exact:.2%} (by length 1-6: "
                   f"{_by_length(result.row(state.step)[2:])}){train}{clock}", err=True)

    def save() -> None:
        tensors = translation.checkpoint_tensors(state)
        metadata = translation.checkpoint_metadata(state)
        _write(output, lambda path: npperceiver.save_weights(path, tensors, metadata), suffix=".safetensors")

    def target_held() -> bool:  # the target at the last two evaluations
        recent = state.evaluations[-2:]
        return len(recent) == 2 and all(min(row[1:]) >= translation.TARGET for row in recent)

    started, started_cpu = time.perf_counter(), time.process_time()
    spent = {"wall": 0.0, "cpu": 0.0}  # in the updates alone, evaluations and checkpoints left out
    try:
        if state.step == 0:
            evaluate()  # before the first update: the "before" of the run's numbers
        with click.progressbar(length=settings["steps"] - first_step, label="train-translate", file=sys.stderr,
                               item_show_func=lambda text: text, show_eta=True) as bar:
            while state.step < settings["steps"]:
                wall, cpu = time.perf_counter(), time.process_time()
                batch = translation.training_batch(task, split, state.rng, B)
                loss, _ = translation.train_step(model, state.optimizer, batch, schedule.lr_at(state.step),
                                                 schedule.max_grad_norm)
                spent["wall"] += time.perf_counter() - wall
                spent["cpu"] += time.process_time() - cpu
                state.step += 1
                state.train_loss.append(loss)
                bar.update(1, f"step {state.step} loss {loss:.3f} held-out {status['exact']}")
                last = state.step == settings["steps"]
                if state.step % settings["eval_every"] == 0 or last:
                    evaluate()
                    stop = settings["stop_at_target"] and target_held()
                    save()
                    if stop:
                        break
    except KeyboardInterrupt:
        on_disk = _translation_step(output)
        where = (f"{output} holds step {on_disk}, the last checkpoint" if on_disk is not None
                 else f"{output} was left as it was" + (" (it holds no train-translate checkpoint)"
                                                        if os.path.exists(output) else " (nothing was written)"))
        interrupted = CliError(f"interrupted at step {state.step}; {where}. Continue with --resume {output}")
        interrupted.exit_code = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)
        raise interrupted from None
    elapsed, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    lines = [f"trained steps {first_step}-{state.step} of {settings['steps']} in {elapsed:.1f} s, {cpu:.1f} s CPU "
             f"(updates alone: {spent['wall']:.1f} s, {spent['cpu']:.1f} s CPU; batch {B})"]
    if state.step < settings["steps"]:
        lines[0] += "; stopped at the target (--stop-at-target)"
    first, last = state.evaluations[0], state.evaluations[-1]
    lines.append(f"held-out exact match {first[1]:.2%} -> {last[1]:.2%}; by length 1-6: {_by_length(last[2:])}")
    reached = next((int(row[0]) for row in state.evaluations if min(row[1:]) >= translation.TARGET), None)
    lines.append(f"target (>= 99% overall and on every length) first met at step {reached}" if reached is not None
                 else "target (>= 99% overall and on every length) not met")
    example = ("42 700005" if settings["task"] == "digits-to-words"
               else "'forty two' 'three thousand four hundred twelve'")
    lines.append(f"wrote {output} (step {state.step}; try: npperceiver translate --weights {output} {example})")
    click.echo("\n".join(lines))


def _by_length(values) -> str:
    """``100 100 99.8 97.2 ...``: exact match in percent, one number per digit length."""
    return " ".join(f"{100 * v:.4g}" for v in values)


def _translation_step(path: str) -> Optional[int]:
    """The step of the train-translate checkpoint at ``path``, or None (no file, or not a readable checkpoint)."""
    try:
        metadata = npperceiver.load_metadata(path)
        return int(metadata["step"]) if translation.is_checkpoint(metadata) else None
    except (ValueError, KeyError):
        return None


def _resume_translation(path: str, params: dict, explicit: set):
    """The training state saved in a train-translate checkpoint; one-line errors for anything else, and for
    options that contradict the run's saved settings."""
    try:
        state = translation.restore(npperceiver.load_weights(path), npperceiver.load_metadata(path))
    except ValueError as e:
        raise CliError(f"--resume {path}: {_one_line(e)}") from None
    renamed = {"warmup": "warmup_steps"}
    for option in sorted(explicit - {"output", "resume", "steps", "config_path"}):
        key = renamed.get(option, option)
        if key in state.settings and params[option] != state.settings[key]:
            flag = "--" + option.replace("_", "-")
            raise CliError(f"{flag} {params[option]} differs from the resumed run's {state.settings[key]}: a resumed "
                           "run keeps its settings (leave the option out)")
    return state


@main.command("translate", short_help="Translate numbers with a model trained by train-translate.")
@click.argument("texts", nargs=-1, metavar="[TEXT]...")
@click.option("--weights", required=True, metavar="FILE.safetensors",
              help="A checkpoint written by train-translate (its task and config are inside).")
def translate(texts: tuple, weights: str) -> None:
    """Translate each TEXT, or each line of standard input when no TEXT is given, with a model trained by
    train-translate: one translation per line, words joined by single spaces, digits without spaces.

    What the model reads depends on its task. digits-to-words: a number 0-999999 in digits; surrounding
    spaces, leading zeros ("007") and commas between groups of three ("12,345") are accepted. words-to-digits:
    the number in English words as train-translate writes them ("three thousand four hundred twelve"); upper
    case, extra spaces, hyphens ("forty-two") and "and" ("one hundred and five") are accepted. Anything else --
    a character outside the task's alphabet, an empty line, a number out of range or spelt otherwise -- is an
    error naming the text, before anything is translated (put -- before a TEXT that starts with "-").

    \b
    Examples:
      npperceiver translate --weights d2w.safetensors 42 700005
      printf '15\\n3412\\n' | npperceiver translate --weights d2w.safetensors
      npperceiver translate --weights w2d.safetensors "forty two" "three thousand four hundred twelve"
    """
    try:
        model = translation.load_model(weights)
    except ValueError as e:
        raise CliError(f"--weights {weights}: {_one_line(e)}") from None
    task = tasks.get_task(model.config.task)
    if texts:
        items = [(f"TEXT {text!r}", text) for text in texts]
    else:
        data = sys.stdin.buffer.read()
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise CliError(f"standard input is not UTF-8 text (byte {e.start})") from None
        if not lines:
            raise CliError("standard input is empty: nothing to translate (give TEXT arguments or lines on stdin)")
        items = [(f"line {i} of standard input", line) for i, line in enumerate(lines, 1)]
    numbers = []
    for where, text in items:
        try:
            numbers.append(_read_number(task, text))
        except ValueError as e:
            raise CliError(f"{where}: {e}") from None
    predicted = translation.translate_numbers(model, task, np.asarray(numbers, dtype=np.int64))  # (K, T)
    click.echo("\n".join(task.decode_target(ids) for ids in predicted))


def _read_number(task, text: str) -> int:
    """The number a translate input means, forgiving what is unambiguous (see translate's help); a
    ``ValueError`` saying what is wrong otherwise."""
    cleaned = text.strip()
    if not cleaned:
        raise ValueError("it is empty: nothing to translate")
    if task.name == "digits-to-words":
        bad = sorted(set(cleaned) - set("0123456789,"))
        if bad:
            raise ValueError(f"{text!r} has character(s) {''.join(bad)!r} outside the digits-to-words source "
                             "alphabet 0123456789")
        if "," in cleaned and not re.fullmatch(r"\d{1,3}(,\d{3})+", cleaned):
            raise ValueError(f"{text!r}: commas may only separate groups of three digits (12,345)")
        n = int(cleaned.replace(",", ""))
        if n > tasks.MAX_NUMBER:
            raise ValueError(f"{text!r} is out of range: the model translates 0 to {tasks.MAX_NUMBER:,}")
        return n
    words = cleaned.lower().replace("-", " ")
    bad = sorted(set(words) - set(task.source_alphabet) - set(" \t"))
    if bad:
        raise ValueError(f"{text!r} has character(s) {''.join(bad)!r} outside the words-to-digits source alphabet "
                         f"(the letters of the number words, and spaces)")
    tokens = [w for w in words.split() if w != "and"]
    if not tokens:
        raise ValueError(f"{text!r} has no number word")
    try:
        return tasks.words_to_number(tokens)
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None


# ---------------------------------------------------------------------------- helpers
def _load_config(name: str):
    """A path if one exists, else a bundled preset of that name. Says on stderr which was used."""

    path = Path(name)
    try:
        if path.exists():
            if path.is_dir():
                raise CliError(f"--config {name}: is a folder, not a JSON file")
            config = PerceiverConfig.from_json(path)
            click.echo(f"config: {path} (file)", err=True)
            return config, path.name
        stem = path.name[:-5] if path.name.endswith(".json") else path.name
        if stem in available_presets() and path.parent == Path("."):
            missing = f" (no file {name} here)" if name.endswith(".json") else ""
            click.echo(f"config: bundled preset '{stem}'{missing}", err=True)
            return load_preset(stem), f"{stem}.json"
    except ValueError as e:  # invalid JSON, invalid field, undecodable bytes
        raise CliError(f"--config {name}: {e}") from None
    except OSError as e:
        raise CliError(f"--config {name}: cannot read it: {e.strerror or e}") from None
    raise CliError(f"--config {name}: no such file, and no bundled preset of that name "
                   f"(presets: {', '.join(available_presets())})")


def _model_config(model: str, config_name: Optional[str], task: Optional[str], decoder: Optional[str]):
    """The config of ``--model``, and a name for it: a PerceiverConfig from --config (encoder, mlm), or the
    translation model's Seq2SeqConfig from --task [--decoder] or from a JSON --config (seq2seq)."""
    if model != "seq2seq":
        if task is not None or decoder is not None:
            raise click.UsageError("--task and --decoder describe a translation model: add --model seq2seq")
        if config_name is None:
            raise click.UsageError(f"Missing option '--config' (the config of --model {model}: a JSON file or a "
                                   "preset)")
        return _load_config(config_name)
    if config_name is not None and task is not None:
        raise click.UsageError("pass --task or --config, not both: --task makes the recipe model of a task, --config "
                               "reads a Seq2SeqConfig JSON")
    if config_name is None and task is None:
        raise click.UsageError("--model seq2seq needs --task digits-to-words|words-to-digits (the recipe model) or "
                               "--config FILE.json (a Seq2SeqConfig)")
    if task is not None:
        decoder = decoder or "autoregressive"
        click.echo(f"config: the {task} recipe, {decoder} decoder (Seq2SeqConfig.for_task)", err=True)
        return Seq2SeqConfig.for_task(task, decoder), f"{task}-{decoder}"
    if decoder is not None:
        raise click.UsageError("--decoder goes with --task; a --config file names its own decoder")
    return _load_seq2seq_config(config_name), Path(config_name).name


def _load_seq2seq_config(name: str, wanted: Optional[dict] = None) -> Seq2SeqConfig:
    """A Seq2SeqConfig from a JSON file (``Seq2SeqConfig.to_dict``'s layout), read as carefully as
    ``PerceiverConfig.from_json`` reads one: at most MAX_CONFIG_BYTES, UTF-8, strict JSON. ``wanted``
    (train-translate's ``{"task": ..., "decoder": ...}``) fills those fields when the file leaves them out and
    refuses a file that names others."""
    path = Path(name)
    if path.is_dir():
        raise CliError(f"--config {name}: is a folder, not a JSON file")
    if not path.exists():
        raise CliError(f"--config {name}: no such file (a Seq2SeqConfig JSON is wanted, e.g. "
                       "configs/seq2seq-digits-to-words.json)")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise CliError(f"--config {name}: cannot read it: {e.strerror or e}") from None
    data = None
    try:
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES // 1024} KiB: a config is a small JSON file")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
        data = parse_json(text)
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        for key, value in (wanted or {}).items():
            if data.setdefault(key, value) != value:
                raise ValueError(f"its {key} is {data[key]!r}, but --{key} is {value!r}")
        config = Seq2SeqConfig.from_dict(data)
    except ValueError as e:
        hint = (" (this looks like a PerceiverConfig: draw it with --model encoder or mlm)"
                if isinstance(data, dict) and "num_latents" in data else "") if "'encoder'" in str(e) else ""
        raise CliError(f"--config {name}: {_one_line(e)}{hint}") from None
    click.echo(f"config: {path} (file)", err=True)
    return config


def _check_checkpoint_output(output: str) -> None:
    """train-mlm's and train-translate's ``-o``: a ``.safetensors`` name (the checkpoint keeps its config in the
    file's metadata) in a folder that exists -- checked before training, not at the first checkpoint."""
    if not output.endswith(".safetensors"):
        raise click.BadParameter(f"{output} must end in .safetensors (the checkpoint keeps its config in the "
                                 "file's metadata)", param_hint="'-o' / '--output'")
    if os.path.isdir(output):
        raise CliError(f"cannot write {output}: it is a folder; give a file name")
    folder = os.path.dirname(output) or "."
    if not os.path.isdir(folder):
        raise CliError(f"cannot write {output}: no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise CliError(f"cannot write {output}: the folder {folder} is not writable")


def _write(output: str, data: "bytes | Callable[[str], None]", suffix: str = ".tmp") -> None:
    """Write ``data`` to ``output`` ('-': standard output) through a temporary file in the same folder, then
    move it into place, so a failure never leaves a partial file behind. ``data`` is bytes, or a function
    that writes the file at the path it is given (``suffix`` then ends the temporary name).

    Interrupted writes leave nothing either: Ctrl-C (SIGINT) raises KeyboardInterrupt, and SIGTERM and
    SIGHUP are caught while the file is written; the temporary file is removed, then the process ends by the
    same signal. (SIGKILL cannot be caught: it may leave a hidden ``.NAME.XXXXXXXX`` file beside the output.)"""
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if not output:
        raise CliError("the output file name is empty")
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        raise CliError(f"cannot write {output}: it is a folder; give a file name")
    target = Path(output)
    tmp = None
    with _TerminationSignals() as signals:
        try:
            with signals.blocked():  # a signal between creating the file and knowing its name would leak it
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=suffix, dir=target.parent)
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, bytes):
                    f.write(data)
            if not isinstance(data, bytes):
                data(tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; an output is an ordinary file
            os.replace(tmp, target)
        except BaseException as e:
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise CliError(f"cannot write {output}: {e.strerror or e}") from None
            raise


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while a file was being written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _TerminationSignals:
    """While active (main thread only), SIGTERM and SIGHUP raise :class:`_Terminated`, so ``finally`` and
    ``except`` blocks run; on leaving with one, the previous handlers come back and the signal is sent again,
    so the process ends as it would have (killed by the signal). Signals ignored before (``nohup``) stay
    ignored."""

    NAMES = ("SIGTERM", "SIGHUP")

    def __init__(self) -> None:
        self.previous: dict = {}

    def __enter__(self) -> "_TerminationSignals":
        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                signum = getattr(signal, name, None)
                if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
                    self.previous[signum] = signal.signal(signum, self._raise)
        return self

    @staticmethod
    def _raise(signum: int, frame) -> None:
        raise _Terminated(signum)

    def __exit__(self, kind, error, traceback) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if isinstance(error, _Terminated):
            os.kill(os.getpid(), error.signum)  # the previous disposition acts now: by default, the end
            raise SystemExit(128 + error.signum)  # reached only if a previous handler returned

    def blocked(self) -> "_BlockedSignals":
        return _BlockedSignals([*self.previous, signal.SIGINT])


class _BlockedSignals:
    """Hold back the given signals for the duration of a ``with`` (where the system can)."""

    def __init__(self, signums: list) -> None:
        self.signums, self.mask = signums, None

    def __enter__(self) -> None:
        if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signums)

    def __exit__(self, *exc) -> None:
        if self.mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)


if __name__ == "__main__":  # pragma: no cover
    main()
