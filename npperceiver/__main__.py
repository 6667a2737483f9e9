"""``python -m npperceiver``: the ``npperceiver`` command (``cli.py``, installed as ``npperceiver_cli.cli``).

The one file of the package that reaches the command line; the model itself never imports it.
"""

from npperceiver_cli.cli import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="npperceiver")
