"""The mutation check's own mechanics (``python -m tests.mutate`` itself is not part of the default run).

Whether each mutant's snippet still matches the model is ``python -m tests.mutate --check``'s job, not this
file's: a refactoring of the model must not fail the suite, only make the mutation check report STALE.
"""

from __future__ import annotations

import io
from pathlib import Path

from mutate import MUTANTS, Mutant, Result, report, stale_reason

ROOT = Path(__file__).resolve().parents[1]


def test_mutant_list_is_well_formed():
    """At least 40 mutants, unique names, each a real change of an existing model file, equivalents argued."""
    assert len(MUTANTS) >= 40
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        assert (ROOT / m.file).is_file() and m.file.startswith("npperceiver/"), m.name
        assert m.original and m.original != m.replacement and m.description, m.name
    assert all(len(m.equivalent) > 40 for m in MUTANTS if m.equivalent)


def test_a_snippet_missing_or_repeated_is_stale(tmp_path):
    """A snippet that is not in its file exactly once makes the mutant STALE, with the count."""
    (tmp_path / "npperceiver").mkdir()
    (tmp_path / "npperceiver" / "x.py").write_text("a = 1\nb = 1\n", encoding="utf-8")
    once = Mutant("once", "npperceiver/x.py", "a = 1", "a = 2", "changes a")
    twice = Mutant("twice", "npperceiver/x.py", " = 1", " = 2", "changes both")
    missing = Mutant("missing", "npperceiver/x.py", "c = 1", "c = 2", "changes nothing that exists")
    assert stale_reason(once, tmp_path) == ""
    assert stale_reason(twice, tmp_path) == "snippet found 2 times in npperceiver/x.py"
    assert stale_reason(missing, tmp_path) == "snippet found 0 times in npperceiver/x.py"
    assert "does not exist" in stale_reason(Mutant("gone", "npperceiver/y.py", "a", "b", "d"), tmp_path)


def test_report_fails_on_survivors_and_stale_but_not_on_argued_equivalents():
    """The exit status is 0 only when every behaviour-changing mutant was caught and none is stale."""
    real = Mutant("real", "npperceiver/x.py", "a", "b", "a bug")
    argued = Mutant("argued", "npperceiver/x.py", "a", "b", "no bug", equivalent="because " * 10)
    out = io.StringIO()
    assert report([Result(real, "KILLED", "test_x"), Result(argued, "EQUIVALENT")], out=out) == 0
    assert "score: 1/1 behaviour-changing mutants caught" in out.getvalue()
    assert "argued: because" in out.getvalue()
    for bad in ("SURVIVED", "STALE", "INVALID"):
        assert report([Result(real, bad)], out=io.StringIO()) == 1
    assert report([Result(argued, "NOT EQUIVALENT", "test_x")], out=io.StringIO()) == 1
