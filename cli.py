"""The ``npperceiver`` command: parses, calls npperceiver/viz, and reports. The only place that prints.

Each command is one function; shared helpers (finding a config, writing a file safely, reporting an error
in one line) sit at the bottom. Errors a user can cause end in :class:`CliError`: one line on stderr,
exit code 1, no traceback (click's own usage errors exit with 2).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import click

import npperceiver
from npperceiver.config import PerceiverConfig
from npperceiver.presets import available_presets, load_preset
from npperceiver.trace import encoder_steps, format_shape, mlm_steps, scope_title
from npperceiver.viz.encoder_graph import build_encoder_graph, build_mlm_graph
from npperceiver.viz.render import dot_available, layout_dot, render, to_dot


class CliError(click.ClickException):
    """A problem the user can fix: printed as one line, ``error: ...``, exit code 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


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
MODELS = ("encoder", "mlm")


@main.command("draw-encoder")
@click.option("--config", "config_name", required=True, metavar="PATH_OR_PRESET",
              help="A JSON config (an HF config.json works), or a bundled preset: small, language-perceiver.")
@click.option("--model", type=click.Choice(MODELS), default="encoder", show_default=True,
              help="encoder: PerceiverModel; mlm: PerceiverForMaskedLM (text preprocessor, encoder, decoder).")
@click.option("--output", "-o", metavar="FILE|-",
              help="Where to write the diagram; '-' for standard output. Default: <config>-<model>.<format>.")
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="Output format. Default: from the output's extension, else svg.")
@click.option("--detail", type=click.Choice(["layer", "op"]),
              help="op: every operation; layer: one box per PerceiverLayer. "
                   "Default: op up to 8 drawn layers, layer beyond; layer for --model mlm.")
@click.option("--unroll", is_flag=True, help="Draw every application of the self-attention block.")
@click.option("--batch", type=click.IntRange(min=1), help="A number for B in the shapes (default: the letter B).")
@click.option("--seq-len", type=click.IntRange(min=1), help="A number for M in the shapes (default: the letter M).")
@click.option("--hide-masks", is_flag=True, help="Leave the masks out of the drawing.")
def draw_encoder(config_name: str, model: str, output: Optional[str], fmt: Optional[str], detail: Optional[str],
                 unroll: bool, batch: Optional[int], seq_len: Optional[int], hide_masks: bool) -> None:
    """Draw the encoder of a config: its layers, and how data and each mask flow through them.

    Every box shows the shape of what it outputs, as a real forward pass makes it. With --model mlm, the
    masked language model: the text preprocessor, the encoder, the decoder's output queries and their
    cross-attention to the latents, and the logits, tied to the token embedding.
    svg, png and pdf need Graphviz's `dot` program; --format dot needs nothing.

    \b
    Examples:
      npperceiver draw-encoder --config small.json
      npperceiver draw-encoder --config configs/small.json --detail layer --unroll -o small.png
      npperceiver draw-encoder --config language-perceiver --seq-len 2048 --format dot -o -
      npperceiver draw-encoder --config small.json --model mlm -o small-mlm.svg
    """

    config, name = _load_config(config_name)
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
    options = dict(unroll=unroll, batch=batch or "B", seq_len=seq_len or "M", masks=not hide_masks, name=name)
    try:
        if model == "mlm":
            graph = build_mlm_graph(config, detail=detail or "layer", **options)
        else:
            graph = build_encoder_graph(config, detail=detail, **options)
    except ValueError as e:
        raise CliError(str(e)) from None
    source = to_dot(graph) if fmt == "dot" else layout_dot(graph)
    try:
        data = render(source, fmt)
    except Exception as e:  # noqa: BLE001 - Graphviz failing is reported in one line, like any error
        raise CliError(f"Graphviz could not render {fmt}: {str(e).strip().splitlines()[0] if str(e) else e!r}")
    _write(output, data)
    if output != "-":
        click.echo(f"wrote {output}", err=True)


# ---------------------------------------------------------------------------- explain
@main.command("explain")
@click.option("--config", "config_name", required=True, metavar="PATH_OR_PRESET",
              help="A JSON config (an HF config.json works), or a bundled preset: small, language-perceiver.")
@click.option("--model", type=click.Choice(MODELS), default="encoder", show_default=True,
              help="encoder: PerceiverModel; mlm: PerceiverForMaskedLM (text preprocessor, encoder, decoder).")
@click.option("--batch", type=click.IntRange(min=1), help="A number for B in the shapes (default: the letter B).")
@click.option("--seq-len", type=click.IntRange(min=1), help="A number for M in the shapes (default: the letter M).")
def explain(config_name: str, model: str, batch: Optional[int], seq_len: Optional[int]) -> None:
    """Print every step of the encoder's forward pass, in order: the HF module it mirrors, what it
    computes, its output shape, and the mask acting there. The text twin of draw-encoder.

    \b
    Examples:
      npperceiver explain --config small.json
      npperceiver explain --config language-perceiver --batch 1 --seq-len 2048 | less
      npperceiver explain --config small.json --model mlm
    """

    config, name = _load_config(config_name)
    if model == "mlm":
        _check_mlm(config, name)
    try:
        steps = (mlm_steps if model == "mlm" else encoder_steps)(config, batch=batch or "B", seq_len=seq_len or "M")
    except ValueError as e:
        raise CliError(str(e)) from None
    rows = [("#", "HF module", "operation", "output shape", "mask")]
    for i, s in enumerate(steps):
        rows.append((str(i), s.module, f"{s.name}: {s.op}" if s.name != s.module else s.op,
                     format_shape(s.shape), s.mask or ""))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    sizes = (f"N={config.num_latents} D={config.d_latents} C={config.d_model} "
             f"Hc={config.num_cross_attention_heads} Hs={config.num_self_attention_heads} "
             f"S={config.num_self_attends_per_block} num_blocks={config.num_blocks}")
    if model == "mlm":
        sizes += f" V={config.vocab_size} P={config.max_position_embeddings}"
    what = "Perceiver IO masked language model" if model == "mlm" else "Perceiver encoder"
    lines = [f"{what} forward pass: {name} ({sizes})", ""]
    scope = None
    for i, row in enumerate(rows):
        if i > 0 and steps[i - 1].scope != scope:  # a heading for each layer
            scope = steps[i - 1].scope
            lines.append(f"-- {scope_title(steps[i - 1], config, model)}")
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    click.echo("\n".join(lines))


def _check_mlm(config, name: str) -> None:
    """--model mlm: the config must suit PerceiverForMaskedLM (d_model divisible by 8)."""
    try:
        npperceiver.text.check_mlm_config(config)
    except ValueError as e:
        raise CliError(f"--config {name}: {e}") from None


# ============================================================================ the text path: fill-mask, convert-checkpoint
def _one_line(error: BaseException) -> str:
    """The first line of an error message (library errors are one line; torch's unpickler's are not)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _show_token(token_id: int) -> str:
    """A readable form of one id: ``[MASK]`` for a special token, ``'m'`` for a printable byte, ``\\xc3`` else."""
    if token_id < npperceiver.tokenizer.NUM_SPECIAL_TOKENS:
        return npperceiver.tokenizer.SPECIAL_TOKENS[token_id]
    byte = token_id - npperceiver.tokenizer.NUM_SPECIAL_TOKENS
    return repr(chr(byte)) if 32 <= byte < 127 else f"\\x{byte:02x}"


@main.command("fill-mask")
@click.argument("text")
@click.option("--weights", type=click.Path(dir_okay=False), help="PerceiverForMaskedLM weights: .safetensors or .npz.")
@click.option("--config", "config_name", default="language-perceiver", show_default=True, metavar="PATH_OR_PRESET",
              help="A JSON config (an HF config.json works), or a bundled preset; must match the weights.")
@click.option("--random-init", is_flag=True, help="No weights: a seeded random model (predictions are noise).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init.")
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
    config, name = _load_config(config_name)
    _check_mlm(config, name)
    tokenizer = npperceiver.PerceiverTokenizer(model_max_length=config.max_position_embeddings)
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
            model = npperceiver.PerceiverForMaskedLM.from_state_dict(config, npperceiver.load_weights(weights))
        spans, filled = npperceiver.text.fill_mask(model, input_ids, top_k=top_k)
    except (OSError, ValueError) as e:
        raise CliError(_one_line(e)) from None

    if random_init:
        click.echo(f"note: random weights (--random-init, seed {seed}): the predictions are meaningless")
    click.echo(f"filled: {tokenizer.decode(filled[1:-1])!r}")
    for n, span in enumerate(spans, 1):
        click.echo(f"span {n}: input positions {span.start}-{span.stop - 1} ({span.stop - span.start} masked bytes), "
                   f"greedy {tokenizer.decode(span.greedy_ids)!r}")
        for position, ids, probs in zip(range(span.start, span.stop), span.top_ids, span.top_probs):
            choices = "  ".join(f"{_show_token(int(i))} {p:.3f}" for i, p in zip(ids, probs))
            click.echo(f"  {position:>5}: {choices}")


@main.command("convert-checkpoint", short_help="Turn a PyTorch checkpoint into .safetensors or .npz.")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
def convert_checkpoint(source: str, dest: str) -> None:
    """Turn a PyTorch checkpoint (SOURCE, e.g. pytorch_model.bin) into DEST (.safetensors or .npz).

    Needs PyTorch, imported by this command only; the tensors are read with
    torch.load(map_location="cpu", weights_only=True), floats stored as float32, names kept.
    """
    suffix = next((s for s in (".safetensors", ".npz") if dest.endswith(s)), None)
    if suffix is None:
        raise click.BadParameter(f"{dest} must end in .safetensors or .npz", param_hint="DEST")
    if not os.path.isfile(source):
        raise CliError(f"checkpoint {source} does not exist")
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
    arrays = {k: (v.detach().float() if v.is_floating_point() else v.detach()).numpy() for k, v in state_dict.items()}

    try:
        _write(dest, lambda path: npperceiver.save_weights(path, arrays), suffix=suffix)
    except ValueError as e:
        raise CliError(f"cannot write {dest}: {_one_line(e)}") from None
    click.echo(f"wrote {len(arrays)} tensors ({sum(a.size for a in arrays.values()):,} values) to {dest}")


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


def _write(output: str, data: "bytes | Callable[[str], None]", suffix: str = ".tmp") -> None:
    """Write ``data`` to ``output`` ('-': standard output) through a temporary file in the same folder, then
    move it into place, so a failure never leaves a partial file behind. ``data`` is bytes, or a function
    that writes the file at the path it is given (``suffix`` then ends the temporary name)."""
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    target = Path(output)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
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
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CliError(f"cannot write {output}: {e.strerror or e}") from None
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
