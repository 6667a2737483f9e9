"""Command output quoted in docs/ is generated, never typed: find it, run it, rewrite it.

In a page, a block of command output is marked like this::

    <!-- output of: npperceiver explain --config small --batch 2 --seq-len 5 -->
    ```text
    ...the command's standard output...
    ```

``tests/test_docs.py`` checks every such block against the command's real output; after a change on
purpose, ``python -m tests.regen_docs`` (from the repository root) rewrites them.

The attention pictures are generated the same way: ``docs/cli.md`` lists the ``npperceiver draw-attention
... -o docs/images/...`` line that makes each one, and ``python -m tests.regen_docs`` runs them too; so are
the translation model's diagrams (``npperceiver draw-encoder --model seq2seq ... -o docs/images/...``).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- output of: (?P<cmd>.+?) -->\n```text\n)(?P<body>.*?)(```)", re.S)
PICTURE = re.compile(r"^(npperceiver draw-attention .* -o (docs/images/\S+))$", re.M)
DIAGRAM = re.compile(r"^(npperceiver draw-encoder --model seq2seq .* -o (docs/images/\S+))$", re.M)


def run_command(command: str, output: "Path | None" = None) -> str:
    """Standard output of an ``npperceiver ...`` command line, run in-process; ``output`` replaces the
    path after ``-o`` (a picture command writes there instead)."""
    from click.testing import CliRunner

    sys.path.insert(0, str(ROOT))
    from npperceiver_cli.cli import main

    args = shlex.split(command)
    if args[:1] != ["npperceiver"]:
        raise ValueError(f"generated blocks must run an npperceiver command, got {command!r}")
    if output is not None:
        args[args.index("-o") + 1] = str(output)
    result = CliRunner().invoke(main, args[1:], prog_name="npperceiver", terminal_width=100)
    if result.exit_code != 0:
        raise RuntimeError(f"{command!r} exited with {result.exit_code}: {result.output}")
    return result.stdout


def pictures() -> list[tuple[str, str]]:
    """``(command, picture path)`` of every picture ``docs/cli.md`` says ``draw-attention`` makes."""
    return [(m[1], m[2]) for m in PICTURE.finditer((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))]


def diagrams() -> list[tuple[str, str]]:
    """``(command, picture path)`` of every translation-model diagram ``docs/cli.md`` says ``draw-encoder``
    makes."""
    return [(m[1], m[2]) for m in DIAGRAM.finditer((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))]


def blocks(text: str):
    """``(command, quoted output)`` for every generated block of a page."""
    return [(m["cmd"], m["body"]) for m in BLOCK.finditer(text)]


def regenerate(path: Path) -> bool:
    """Rewrite the generated blocks of one page; True if anything changed."""
    text = path.read_text(encoding="utf-8")
    new = BLOCK.sub(lambda m: m[1] + run_command(m["cmd"]) + m[4], text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    for page in sorted((ROOT / "docs").glob("*.md")):
        if regenerate(page):
            print(f"updated {page.relative_to(ROOT)}")
    for command, picture in pictures() + diagrams():
        run_command(command, ROOT / picture)
        print(f"drew {picture}")
