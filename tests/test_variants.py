"""Variants: real (tiny) fine-tunes of each kind, cached, stored with the sharing each implies."""

import pytest

from blockllm.variants.build import TINY_RECIPES, make_variants
from blockllm.evaluation.tasks import TASKS, score
from blockllm.zoo.store import Zoo


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    zoo = Zoo(root / "zoo")
    rows = make_variants(zoo, "dummy:tiny", "tiny", TINY_RECIPES, n_eval=32,
                         cache=root / "cache", progress=False)
    return zoo, rows, root


def test_each_variant_beats_the_base_on_its_task(built):
    _, rows, _ = built
    assert {r["kind"] for r in rows} == {"partial", "lora", "full"}
    for r in rows:
        assert r["score"] > r["base_score"], r


def test_sharing_follows_the_kind_of_finetune(built):
    zoo, _, _ = built
    base = zoo.chain("tiny")
    part = zoo.chain("tiny-sentiment-top1")
    lora = zoo.chain("tiny-sentiment-lora")
    full = zoo.chain("tiny-sentiment-full")
    n = len(base)
    # partial (top 1 of 4 layers trained): embed, 3 bottom decoders and head shared
    assert [a.block == b.block for a, b in zip(base, part)] == [True] * (n - 2) + [False, True]
    # LoRA: every base block shared, an adapter on each decoder block
    assert [e.block for e in lora] == [e.block for e in base]
    assert all(e.adapter for e in lora[1:-1]) and not lora[0].adapter
    # full: nothing shared
    assert not {e.block for e in full} & {e.block for e in base}


def test_variants_are_cached_and_deterministic(built):
    zoo, rows, root = built
    again = make_variants(zoo, "dummy:tiny", "tiny", TINY_RECIPES, n_eval=32,
                          cache=root / "cache", progress=False)
    assert again == rows
    fresh = Zoo(root / "zoo2")
    make_variants(fresh, "dummy:tiny", "tiny", TINY_RECIPES[:1], n_eval=8,
                  cache=root / "cache2", progress=False)  # retrained from scratch
    assert fresh.chain("tiny-sentiment-top1") == zoo.chain("tiny-sentiment-top1")


def test_task_generators_and_score():
    a = TASKS["arith"].examples(5, seed=1)
    assert a == TASKS["arith"].examples(5, seed=1) and a != TASKS["arith"].examples(5, seed=2)
    p, ans = a[0]
    assert p.startswith("Compute: ") and str(eval(p[9:-1])) == ans
    assert score(TASKS["arith"], ["42\nmore", " 7 is it", "x"], ["42", "7", "8"]) == \
        pytest.approx(200 / 3)
    assert score(TASKS["sentiment"], [" Positive\n", " neg"], [" positive", " negative"]) == 50
    assert score(TASKS["upper"], [" LEMON LIGHT, yes"], [" LEMON LIGHT"]) == 100


def test_make_variants_cli_writes_results_and_the_figure_draws(tmp_path):
    import json
    import subprocess
    import sys
    res = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "blockllm.cli", "zoo", "make-variants", "--tiny",
                        "--n-eval", "8", "--results", str(res), "--zoo", str(tmp_path / "z")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "tiny-sentiment-lora" in p.stdout
    data = json.loads((res / "variants-tiny.json").read_text())
    assert len(data["rows"]) == 3 and data["storage"]["stats"]["models"] == 4
    from paper_figures.variants import draw
    paths = draw(res / "variants-tiny.json", tmp_path / "fig")
    assert all(x.stat().st_size > 1000 for x in paths)
