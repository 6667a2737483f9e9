"""benchmarks/bench_translate.py runs end to end at tiny sizes (``--quick``): every task and decoder, both
sides' gradients agree, the held-out decoding is timed, the JSON and Markdown are written. No timing is
asserted. Skipped without torch or transformers."""

from __future__ import annotations

import json

import pytest

from helpers import load_benchmark

pytest.importorskip("torch", reason="the benchmark compares with torch")
pytest.importorskip("transformers", reason="the benchmark compares with HF transformers")

@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("bench_translate")


def test_quick_run_covers_every_task_and_decoder_and_agrees_with_torch(bench, tmp_path):
    results = bench.main(["--quick", "--threads", "1", "--eval", "--out", str(tmp_path)])
    rows = results["rows"]
    assert {(r["task"], r["decoder"]) for r in rows} == {
        (t, d) for t in ("digits-to-words", "words-to-digits") for d in ("autoregressive", "queries")}
    for r in rows:
        assert r["max_rel_grad_diff"] < 1e-5 and r["rel_loss_diff"] < 1e-5, r  # the same loss and gradients
        assert r["np_cpu_s"] > 0 and r["torch_cpu_s"] > 0 and r["np_wall_s"] > 0 and r["torch_wall_s"] > 0
        assert r["np_eval_cpu_s"] > 0 and r["torch_eval_cpu_s"] > 0 and r["eval_numbers"] == 64
        assert r["B"] == 8 and r["threads"] == 1
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(saved["rows"]) == len(rows) and saved["quick"] is True
    table = next(tmp_path.glob("*.md")).read_text()
    assert "| task | decoder | params | mean M | threads | numpy s/step CPU | torch s/step CPU |" in table
    assert table.count("\n| digits-to-words |") == 2 and table.count("\n| words-to-digits |") == 2


def test_unknown_names_are_refused(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--tasks", "pig-latin"])
