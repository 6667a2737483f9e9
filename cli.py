"""The ``npperceiver`` command: parses, calls npperceiver/viz, and reports. The only place that prints."""

from __future__ import annotations

import click

import npperceiver


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(npperceiver.__version__, prog_name="npperceiver")
def main() -> None:
    """npperceiver: the Perceiver encoder of HF transformers, in NumPy, explained and drawn."""


if __name__ == "__main__":  # pragma: no cover
    main()
