"""The mutation check's own mechanics (``python -m tests.mutate`` itself is not part of the default run), and
that every mutant still matches the code: a change to the model that makes a snippet ambiguous or removes it
fails here, so the mutation check is refreshed with the change instead of silently losing mutants. (This runs
no mutant: it reads the files, in well under a second.)
"""

from __future__ import annotations

import io
from pathlib import Path

from mutate import GROUPS, MUTANTS, Mutant, Result, failed_tests, given_tests, group_tests, report, stale_reason

ROOT = Path(__file__).resolve().parents[1]

#: At least this many mutants per group (the issue asks for 40 of the forward pass, 30 of the backward).
MINIMUM = {"forward": 40, "backward": 30, "causal": 10}


def test_mutant_list_is_well_formed():
    """Enough mutants in every group, unique names, each a real change of an existing model file, equivalents
    argued, and every group's test files present."""
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for group, minimum in MINIMUM.items():
        assert len([m for m in MUTANTS if m.group == group]) >= minimum, group
    for m in MUTANTS:
        assert m.group in GROUPS, m.name
        assert (ROOT / m.file).is_file() and m.file.startswith("npperceiver/"), m.name
        assert m.original and m.original != m.replacement and m.description, m.name
    assert all(len(m.equivalent) > 40 for m in MUTANTS if m.equivalent)
    for group in GROUPS.values():
        assert all((ROOT / t).is_file() for t in group.tests), group.name


def test_every_snippet_matches_the_code_exactly_once():
    """The mutation check can plant every mutant: refresh a snippet the code has moved away from."""
    stale = {m.name: stale_reason(m) for m in MUTANTS if stale_reason(m)}
    assert stale == {}


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
    """The exit status is 0 only when every behaviour-changing mutant was caught and none is stale; each group
    gets its own score line."""
    real = Mutant("real", "npperceiver/x.py", "a", "b", "a bug")
    argued = Mutant("argued", "npperceiver/x.py", "a", "b", "no bug", equivalent="because " * 10)
    grad = Mutant("grad", "npperceiver/x.py", "a", "b", "a gradient bug", group="backward")
    out = io.StringIO()
    assert report([Result(real, "KILLED", "test_x"), Result(argued, "EQUIVALENT"), Result(grad, "KILLED")],
                  out=out) == 0
    assert "score [forward]: 1/1 behaviour-changing mutants caught by tests/test_properties.py" in out.getvalue()
    assert "score [backward]: 1/1 behaviour-changing mutants caught by tests/test_backward.py" in out.getvalue()
    assert "argued: because" in out.getvalue()
    for bad in ("SURVIVED", "STALE", "INVALID"):
        assert report([Result(real, bad)], out=io.StringIO()) == 1
    assert report([Result(argued, "NOT EQUIVALENT", "test_x")], out=io.StringIO()) == 1


def test_a_properties_only_group_runs_the_given_tests_alone(tmp_path):
    """The causal group is scored by the hypothesis properties of its files (functions decorated with
    ``@given``, however it is imported), not by their unit or parity tests; a file the scored folder lacks is
    left out and named."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_seq2seq.py").write_text(
        "import hypothesis\nfrom hypothesis import given\n\n"
        "@given(x=1)\ndef test_a(x): pass\n\n"
        "@hypothesis.given(x=1)\ndef test_b(x): pass\n\n"
        "def test_unit(): pass\n\n"
        "@pytest.mark.parametrize('x', [1])\ndef test_parity(x): pass\n", encoding="utf-8")
    assert given_tests(tmp_path / "tests" / "test_seq2seq.py") == ["test_a", "test_b"]
    assert group_tests(GROUPS["causal"], tmp_path) == (
        ("tests/test_seq2seq.py::test_a", "tests/test_seq2seq.py::test_b"), [])
    tests, missing = group_tests(GROUPS["backward"], tmp_path)
    assert tests == () and missing == list(GROUPS["backward"].tests)
    causal, _ = group_tests(GROUPS["causal"], ROOT)
    assert "tests/test_seq2seq.py::test_a_target_token_never_influences_earlier_positions" in causal
    assert not any("parity" in t or "test_causal_mask_and_shift_right" in t for t in causal)


def test_only_a_failing_test_kills_a_mutant():
    """A test that fails or errors in its set-up names a catch; a file that does not even import (a mutant that
    breaks the syntax: pytest -x exits 1 then too) names none, and the mutant is INVALID, not KILLED."""
    output = ("FAILED tests/test_backward.py::test_vjp_matches_finite_differences - AssertionError\n"
              "ERROR tests/test_grad_properties.py::test_adamw_step_for_a_constant_gradient - ValueError\n"
              "ERROR tests/test_streamed_backward.py\n")
    assert failed_tests(output) == ["test_vjp_matches_finite_differences", "test_adamw_step_for_a_constant_gradient"]
    assert failed_tests("ERROR tests/test_backward.py\n!!! stopping after 1 failures !!!\n1 error in 0.9s") == []
