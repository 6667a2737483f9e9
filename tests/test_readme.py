"""The README's commands and examples are the ones CI runs, and its Python example runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_command = next(b.strip() for b in _blocks("bash") if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_main_job_draws_the_small_encoder():
    main_job = next(b.strip() for b in _blocks("bash") if "draw-encoder" in b)
    assert "pip install -e ." in main_job and "--config small.json" in main_job


def test_readme_python_example_runs_and_its_comments_are_true():
    (code,) = _blocks("python")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out, cfg = namespace["out"], namespace["config"]
    # The shapes the README's comments promise:
    assert out.last_hidden_state.shape == (2, 16, 32) and str(out.last_hidden_state.dtype) == "float32"
    assert len(out.hidden_states) == cfg.num_blocks * (cfg.num_self_attends_per_block + 1)
    assert out.cross_attentions[0].shape == (2, 2, 16, 5)
