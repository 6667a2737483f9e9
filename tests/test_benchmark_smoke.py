"""benchmarks/bench_forward.py runs end to end at tiny sizes (``--quick``), and counts FLOPs right.

No timing is asserted -- only that every config runs against HF, agrees with it to the parity bar, and
that the JSON and Markdown are written. Skipped without torch or transformers (threadpoolctl, which the
benchmark uses to set numpy's BLAS threads, is optional here).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from helpers import load_benchmark

pytest.importorskip("torch", reason="the benchmark compares with torch")
pytest.importorskip("transformers", reason="the benchmark compares with HF transformers")

import npperceiver as npp  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_forward.py"


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("bench_forward")


def test_quick_run_covers_every_config_and_agrees_with_hf(bench, tmp_path):
    results = bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    rows = results["rows"]
    names = {r["config"] for r in rows}
    assert {"small", "language", "image"} <= names and any(n.startswith("sweep") for n in names)
    assert any(r["chunk"] for r in rows if r["config"] == "image")  # the streamed variant ran
    for r in rows:
        assert r["max_rel_diff"] <= 1e-5, r
        assert r["np_ms"] > 0 and r["torch_ms"] > 0 and r["np_peak_mib"] > 0 and r["torch_peak_mib"] > 0
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".json", ".md"]
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(saved["rows"]) == len(rows)
    table = next(tmp_path.glob("*.md")).read_text()
    assert "| config | B | M | threads |" in table and "Scaling sweep" in table


def test_flop_count_of_the_language_perceiver(bench):
    """2 x multiply-adds, written out by hand from the config (spec section 1): N=256, D=1280, C=768,
    qk=256, v=1280, 26 self-attention layers, M=2048, B=1 -- about 110 GFLOP."""
    N, D, C, qk, v, M = 256, 1280, 768, 256, 1280, 2048
    cross = N * D * qk + M * C * qk + M * C * v + N * M * qk + N * M * v + N * v * D + 2 * N * D * D
    self_layer = 2 * N * D * qk + N * D * v + N * N * qk + N * N * v + N * v * D + 2 * N * D * D
    expected = 2 * (cross + 26 * self_layer)
    assert bench.forward_flops(npp.load_preset("language-perceiver"), 1, M) == expected
    assert 105e9 < expected < 115e9


def test_ab_script_times_the_checkout_it_is_given(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_ab", SCRIPT.with_name("bench_ab.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checkout = str(Path(npp.__file__).resolve().parents[1])
    line = module.main([checkout, "--preset", "small", "--repeats", "1", "--inputs", "4"])
    assert re.match(rf"{re.escape(checkout)} small threads=(1|default) M=4 min=\d", line)
    with pytest.raises(SystemExit, match="not from"):  # a folder without npperceiver is refused, not timed
        module.main([str(tmp_path), "--preset", "small", "--repeats", "1", "--inputs", "4"])
