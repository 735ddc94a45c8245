"""Traces are data: the same seed gives byte-identical traces; the knobs do what they say."""

import json

import numpy as np
import pytest

from experiments.workloads import (
    WorkloadConfig,
    inter_arrivals,
    load_prompts,
    make_trace,
    popularity,
    prompt_set,
    save_trace,
)

MODELS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return load_prompts(prompt_set(tmp_path_factory.mktemp("p") / "prompts.json", n=40))


def test_same_seed_same_bytes(prompts, tmp_path):
    cfg = WorkloadConfig(n_requests=30, seed=3, arrival="gamma", cv=2.0, popularity="zipf")
    a = save_trace(make_trace(cfg, MODELS, prompts), tmp_path / "a.json").read_bytes()
    b = save_trace(make_trace(cfg, MODELS, prompts), tmp_path / "b.json").read_bytes()
    c = save_trace(make_trace(WorkloadConfig(n_requests=30, seed=4), MODELS, prompts),
                   tmp_path / "c.json").read_bytes()
    assert a == b and a != c
    trace = json.loads(a)
    assert len(trace["requests"]) == 30 and trace["config"]["seed"] == 3


def test_arrival_processes_keep_the_rate_and_set_burstiness():
    rng = np.random.default_rng(0)
    for cv in (0.5, 1.0, 3.0):
        x = inter_arrivals(WorkloadConfig(n_requests=20000, rate=4.0, arrival="gamma", cv=cv), rng)
        assert x.mean() == pytest.approx(0.25, rel=0.05)
        assert x.std() / x.mean() == pytest.approx(cv, rel=0.1)
    fixed = inter_arrivals(WorkloadConfig(n_requests=5, rate=2.0, arrival="fixed"), rng)
    assert fixed.tolist() == [0.5] * 5


def test_popularity_shapes():
    rng = np.random.default_rng(0)
    z = popularity(WorkloadConfig(n_requests=4000, popularity="zipf", skew=1.5), MODELS, rng)
    counts = [z.count(m) for m in MODELS]
    assert counts == sorted(counts, reverse=True) and counts[0] > 2 * counts[1]
    d = popularity(WorkloadConfig(n_requests=8, popularity="distinct"), MODELS, rng)
    assert d == MODELS * 2
    with pytest.raises(ValueError):
        popularity(WorkloadConfig(popularity="nope"), MODELS, rng)


def test_sharegpt_style_files_load(tmp_path):
    path = tmp_path / "sg.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Hi there"},
                                                   {"from": "gpt", "value": "Hello"}]}]))
    assert load_prompts(path) == ["Hi there"]
