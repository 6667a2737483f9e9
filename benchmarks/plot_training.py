"""Draw the loss curve of an ``npperceiver train-mlm`` run from its ``--log`` CSV (needs matplotlib: the ``plot``
extra).

Usage::

    python benchmarks/plot_training.py docs/images/train-mlm-alice.csv -o docs/images/train-mlm-alice.svg
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from npperceiver.viz.training import read_history, render_history  # noqa: E402


def main(argv: "list[str] | None" = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="the CSV written by train-mlm --log")
    p.add_argument("-o", "--output", required=True, help="the picture: .svg, .png or .pdf")
    p.add_argument("--title", default="", help="a title over the plot")
    p.add_argument("--smoothing", type=int, default=50, help="updates in the running mean of the training loss")
    args = p.parse_args(argv)
    history = read_history(Path(args.log).read_text(encoding="utf-8"))
    data = render_history(history, fmt=Path(args.output).suffix.lstrip(".") or "svg", title=args.title,
                          smoothing=args.smoothing)
    target = Path(args.output)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)  # whole file or nothing
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a picture is an ordinary file
    os.replace(tmp, target)
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
