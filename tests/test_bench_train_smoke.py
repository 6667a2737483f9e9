"""benchmarks/bench_train.py runs end to end at tiny sizes (``--quick``): both cases, both models, the
gradients agree, the JSON and Markdown are written. No timing is asserted. Skipped without torch or
transformers."""

from __future__ import annotations

import json

import pytest

from helpers import load_benchmark

pytest.importorskip("torch", reason="the benchmark compares with torch")
pytest.importorskip("transformers", reason="the benchmark compares with HF transformers")

@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("bench_train")


def test_quick_run_covers_both_cases_and_agrees_with_hf(bench, tmp_path):
    results = bench.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    rows = results["rows"]
    assert {(r["case"], r["kind"]) for r in rows if not r["case"].startswith("sweep")} == {("small", "mlm"), ("language", "encoder")}
    assert {r["chunk"] for r in rows if r["case"].startswith("sweep")} == {None, 32}  # streamed and not
    for r in rows:
        assert r["max_rel_grad_diff"] < 1e-5, r  # the two steps compute the same gradients
        assert r["np_ms"] > 0 and r["torch_ms"] > 0 and r["np_peak_mib"] > 0 and r["torch_peak_mib"] > 0
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(saved["rows"]) == len(rows) and saved["quick"] is True
    assert "| case | model | B | M | params | threads |" in next(tmp_path.glob("*.md")).read_text()
