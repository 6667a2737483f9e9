"""The ``npperceiver`` command: parses, calls npperceiver/viz, and reports. The only place that prints."""

from __future__ import annotations

import click

import npperceiver


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(npperceiver.__version__, prog_name="npperceiver")
def main() -> None:
    """npperceiver: the Perceiver encoder of HF transformers, in NumPy, explained and drawn."""


# ============================================================================ the text path: fill-mask, convert-checkpoint
def _one_line(error: BaseException) -> str:
    """The first line of an error message (library errors are one line; torch's unpickler's are not)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _load_mlm_config(value: str) -> "npperceiver.PerceiverConfig":
    """``--config``: a bundled preset name, or the path of a config.json (an HF one works as it is)."""
    import os

    try:
        if value.endswith(".json") or os.sep in value or os.path.exists(value):
            if not os.path.isfile(value):
                raise ValueError(f"config file {value} does not exist")
            config = npperceiver.PerceiverConfig.from_json(value)
        else:
            config = npperceiver.load_preset(value)
        npperceiver.text.check_mlm_config(config)
    except (OSError, ValueError, TypeError) as e:
        raise click.ClickException(f"--config: {_one_line(e)}") from None
    return config


def _show_token(token_id: int) -> str:
    """A readable form of one id: ``[MASK]`` for a special token, ``'m'`` for a printable byte, ``\\xc3`` else."""
    if token_id < npperceiver.tokenizer.NUM_SPECIAL_TOKENS:
        return npperceiver.tokenizer.SPECIAL_TOKENS[token_id]
    byte = token_id - npperceiver.tokenizer.NUM_SPECIAL_TOKENS
    return repr(chr(byte)) if 32 <= byte < 127 else f"\\x{byte:02x}"


@main.command("fill-mask")
@click.argument("text")
@click.option("--weights", type=click.Path(dir_okay=False), help="PerceiverForMaskedLM weights: .safetensors or .npz.")
@click.option("--config", "config_name", default="language-perceiver", show_default=True,
              help="Preset name or config.json path; must match the weights.")
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
    config = _load_mlm_config(config_name)
    tokenizer = npperceiver.PerceiverTokenizer(model_max_length=config.max_position_embeddings)
    input_ids = tokenizer(text)["input_ids"]  # [CLS] bytes [SEP]
    if len(input_ids) > config.max_position_embeddings:
        raise click.ClickException(
            f"the text is {len(input_ids)} tokens long ([CLS] + {len(input_ids) - 2} bytes + [SEP]) but this model "
            f"accepts at most {config.max_position_embeddings} (max_position_embeddings); shorten it"
        )
    if tokenizer.mask_token_id not in input_ids:
        raise click.ClickException("the text has no [MASK]: write one [MASK] for each byte to predict")

    try:
        if random_init:
            model = npperceiver.PerceiverForMaskedLM.init(config, seed=seed)
        else:
            model = npperceiver.PerceiverForMaskedLM.from_state_dict(config, npperceiver.load_weights(weights))
        spans, filled = npperceiver.text.fill_mask(model, input_ids, top_k=top_k)
    except (OSError, ValueError) as e:
        raise click.ClickException(_one_line(e)) from None

    if random_init:
        click.echo(f"note: random weights (--random-init, seed {seed}): the predictions are meaningless")
    click.echo(f"filled: {tokenizer.decode(filled[1:-1])!r}")
    for n, span in enumerate(spans, 1):
        click.echo(f"span {n}: input positions {span.start}-{span.stop - 1} ({span.stop - span.start} masked bytes), "
                   f"greedy {tokenizer.decode(span.greedy_ids)!r}")
        for position, ids, probs in zip(range(span.start, span.stop), span.top_ids, span.top_probs):
            choices = "  ".join(f"{_show_token(int(i))} {p:.3f}" for i, p in zip(ids, probs))
            click.echo(f"  {position:>5}: {choices}")


@main.command("convert-checkpoint")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
def convert_checkpoint(source: str, dest: str) -> None:
    """Turn a PyTorch checkpoint (SOURCE, e.g. pytorch_model.bin) into DEST (.safetensors or .npz).

    Needs PyTorch, imported by this command only; the tensors are read with
    torch.load(map_location="cpu", weights_only=True), floats stored as float32, names kept.
    """
    import os
    import tempfile

    suffix = next((s for s in (".safetensors", ".npz") if dest.endswith(s)), None)
    if suffix is None:
        raise click.BadParameter(f"{dest} must end in .safetensors or .npz", param_hint="DEST")
    if not os.path.isfile(source):
        raise click.ClickException(f"checkpoint {source} does not exist")
    try:
        import torch
    except ImportError:
        raise click.ClickException("convert-checkpoint needs PyTorch to read the checkpoint: pip install torch") from None
    try:
        state_dict = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (pickle, zip, runtime) for a file it cannot read
        raise click.ClickException(f"cannot read {source} as a PyTorch checkpoint: {_one_line(e)}") from None
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise click.ClickException(f"{source} does not hold a state dict (a mapping of names to tensors)")
    arrays = {k: (v.detach().float() if v.is_floating_point() else v.detach()).numpy() for k, v in state_dict.items()}

    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=os.path.dirname(os.path.abspath(dest)))
    os.close(fd)
    try:
        npperceiver.save_weights(tmp, arrays)
        os.replace(tmp, dest)
    except (OSError, ValueError) as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise click.ClickException(f"cannot write {dest}: {_one_line(e)}") from None
    click.echo(f"wrote {len(arrays)} tensors ({sum(a.size for a in arrays.values()):,} values) to {dest}")


if __name__ == "__main__":  # pragma: no cover
    main()
