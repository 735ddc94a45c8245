"""lm-evaluation-harness (`local-completions`) against a real `blockllm serve`: its scores on
the project's tasks, multiple choice (prompt logprobs) and generate_until, equal the project's
own evaluation of the same models on the same examples (experiments/lm_eval_check.py)."""

import importlib.util
import os

import pytest

from tests.test_zoo import four_model_zoo

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None and "BLOCKLLM_LM_EVAL_PYTHON" not in os.environ,
    reason="lm-eval is not installed: `make setup` installs it (the [test] extra)")


def test_lm_eval_scores_equal_the_projects_own(tmp_path):
    from experiments.lm_eval_check import check, write
    zoo = four_model_zoo(tmp_path)
    models = ["base", "ft", "lora"]
    rows = check(str(zoo.root), models, n=12)
    assert {(r["model"], r["task"]) for r in rows} == {
        (m, t) for m in models for t in ("sentiment", "arith", "reverse")}
    for r in rows:  # the same examples, tokens and logprobs: the same score
        assert r["lm_eval"] == pytest.approx(r["own"], abs=1e-9), r
    mc = [r["lm_eval"] for r in rows if r["kind"] == "multiple_choice"]
    assert any(0 < s < 100 for s in mc), "likelihoods that pick both answers somewhere"
    write(rows, tmp_path / "lm_eval")
    assert "| base | exact | sentiment |" in (tmp_path / "lm_eval.md").read_text()
