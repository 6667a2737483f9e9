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
from typing import Optional

import click

import npperceiver


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


@main.command("draw-encoder")
@click.option("--config", "config_name", required=True, metavar="PATH_OR_PRESET",
              help="A JSON config (an HF config.json works), or a bundled preset: small, language-perceiver.")
@click.option("--output", "-o", metavar="FILE|-",
              help="Where to write the diagram; '-' for standard output. Default: <config>-encoder.<format>.")
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="Output format. Default: from the output's extension, else svg.")
@click.option("--detail", type=click.Choice(["layer", "op"]),
              help="op: every operation; layer: one box per PerceiverLayer. "
                   "Default: op up to 8 drawn layers, layer beyond.")
@click.option("--unroll", is_flag=True, help="Draw every application of the self-attention block.")
@click.option("--batch", type=click.IntRange(min=1), help="A number for B in the shapes (default: the letter B).")
@click.option("--seq-len", type=click.IntRange(min=1), help="A number for M in the shapes (default: the letter M).")
@click.option("--hide-masks", is_flag=True, help="Leave the three masks out of the drawing.")
def draw_encoder(config_name: str, output: Optional[str], fmt: Optional[str], detail: Optional[str], unroll: bool,
                 batch: Optional[int], seq_len: Optional[int], hide_masks: bool) -> None:
    """Draw the encoder of a config: its layers, and how data and each mask flow through them.

    Every edge carries the shape of the array it stands for, as a real forward pass makes it.
    svg, png and pdf need Graphviz's `dot` program; --format dot needs nothing.

    \b
    Examples:
      npperceiver draw-encoder --config small.json
      npperceiver draw-encoder --config configs/small.json --detail layer --unroll -o small.png
      npperceiver draw-encoder --config language-perceiver --seq-len 2048 --format dot -o -
    """
    from viz.encoder_graph import build_encoder_graph
    from viz.render import dot_available, layout_dot, render, to_dot

    config, name = _load_config(config_name)
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output and output != "-" else ""
        fmt = suffix if suffix in FORMATS else "svg"
    if output is None:
        output = f"{Path(name).stem}-encoder.{fmt}"
    if fmt != "dot" and not dot_available():
        raise CliError(
            f"{fmt} output needs Graphviz's `dot` program, which is not on PATH: install Graphviz "
            "(apt-get install graphviz, brew install graphviz, or https://graphviz.org/download), "
            "or use --format dot, which needs no Graphviz")
    try:
        graph = build_encoder_graph(config, detail=detail, unroll=unroll, batch=batch or "B",
                                    seq_len=seq_len or "M", masks=not hide_masks, name=name)
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
@click.option("--batch", type=click.IntRange(min=1), help="A number for B in the shapes (default: the letter B).")
@click.option("--seq-len", type=click.IntRange(min=1), help="A number for M in the shapes (default: the letter M).")
def explain(config_name: str, batch: Optional[int], seq_len: Optional[int]) -> None:
    """Print every step of the encoder's forward pass, in order: the HF module it mirrors, what it
    computes, its output shape, and the mask acting there. The text twin of draw-encoder.

    \b
    Examples:
      npperceiver explain --config small.json
      npperceiver explain --config language-perceiver --batch 1 --seq-len 2048 | less
    """
    from npperceiver.shapes import encoder_steps, format_shape

    config, name = _load_config(config_name)
    steps = encoder_steps(config, batch=batch or "B", seq_len=seq_len or "M")
    rows = [("#", "HF module", "operation", "output shape", "mask")]
    for i, s in enumerate(steps):
        rows.append((str(i), s.module, f"{s.name}: {s.op}" if s.name != s.module else s.op,
                     format_shape(s.shape), s.mask or ""))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    sizes = (f"N={config.num_latents} D={config.d_latents} C={config.d_model} "
             f"Hc={config.num_cross_attention_heads} Hs={config.num_self_attention_heads} "
             f"S={config.num_self_attends_per_block} num_blocks={config.num_blocks}")
    lines = [f"Perceiver encoder forward pass: {name} ({sizes})", ""]
    scope = None
    for i, row in enumerate(rows):
        if i > 0 and steps[i - 1].scope != scope:  # a heading for each layer
            scope = steps[i - 1].scope
            lines.append(f"-- {_scope_title(scope, steps[i - 1], config)}")
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    click.echo("\n".join(lines))


def _scope_title(scope: str, step, config) -> str:
    if scope == "inputs":
        return "inputs and the latent array"
    if scope == "masks":
        return "the three masks, as PerceiverModel.forward prepares them"
    if scope == "cross":
        return "encoder.cross_attention: latents attend to the inputs (inputs_mask only)"
    if scope == "output":
        return "result"
    return (f"encoder.self_attends.{step.layer}, block {step.block + 1} of {config.num_blocks}: latents attend "
            f"to latents (attention_mask, head_mask[{step.layer}]; same weights in every block)")


# ---------------------------------------------------------------------------- helpers
def _load_config(name: str):
    """A path if one exists, else a bundled preset of that name. Says on stderr which was used."""
    from npperceiver.config import PerceiverConfig
    from npperceiver.presets import available_presets, load_preset

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


def _write(output: str, data: bytes) -> None:
    """Write ``data`` to ``output`` ('-': standard output) through a temporary file, then move it in place,
    so a failure never leaves a partial file behind."""
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    target = Path(output)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a diagram is an ordinary file
        os.replace(tmp, target)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise CliError(f"cannot write {output}: {e.strerror or e}") from None


if __name__ == "__main__":  # pragma: no cover
    main()
