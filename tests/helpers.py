"""Small helpers several test files share: loading a benchmark script as a module, and interrupting a
training loop at a chosen update."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> Iterator[ModuleType]:
    """``benchmarks/NAME.py`` as a module, for a module-scoped fixture (``yield from load_benchmark(...)``):
    registered in ``sys.modules`` (dataclasses look their module up there), with ``benchmarks/`` on the path
    (the scripts import ``bench_forward``'s tools), both undone afterwards."""
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]
        sys.path.remove(str(BENCHMARKS))


def interrupt_update(monkeypatch, module: ModuleType, calls: int) -> None:
    """Make the ``calls``-th ``module.train_step`` raise KeyboardInterrupt, as Ctrl-C would in the middle of it
    (``module``: ``npperceiver.pretraining`` for train-mlm, ``npperceiver.translation`` for train-translate)."""
    real, count = module.train_step, {"n": 0}

    def step(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "train_step", step)
