"""Sampled and penalized requests through the engine: picked on the device in the head's
batch, they equal their model's chain run alone with the same parameters (the same sampler,
seeded per (seed, token index)), in mixed batches of every model, under preemption."""

import pytest

from blockllm.models.logprobs import TokenLogprob
from blockllm.models.sampling import SamplingParams
from blockllm.runtime.hosts import LocalHost
from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.zoo.ingest import chain_model
from tests.conftest import ENGINE_N as N
from tests.conftest import ENGINE_PROMPTS as PROMPTS

PARAMS = [SamplingParams(temperature=0.9, top_p=0.9, seed=1),
          SamplingParams(temperature=1.3, top_k=5, seed=2, logprobs=2),
          SamplingParams(presence_penalty=1.5, repetition_penalty=1.3, seed=3),
          SamplingParams(temperature=0.7, frequency_penalty=0.8, logit_bias=((5, 3.0),), seed=4),
          SamplingParams()]
PAGE = 2 * 16 * 2 * 16 * 4  # bytes of one KV page of the tiny config (fp32)


@pytest.mark.parametrize("cfg", [EngineConfig(), EngineConfig(kv_budget=12 * 3 * PAGE)],
                         ids=["default", "tiny-kv"])
def test_sampled_requests_equal_their_chain_alone(zoo4, cfg, monkeypatch):
    zoo, _ = zoo4
    heads = []  # what every head call hands back: token ids, never logits
    run = LocalHost.run

    def spy(self, call):
        outs = run(self, call)
        if call.kind == "head":
            heads.extend(type(o) for o in outs)
        return outs
    monkeypatch.setattr(LocalHost, "run", spy)
    eng = Engine(zoo, zoo.models(), cfg)
    reqs = [(m, p, params, eng.submit(m, p, params, max_tokens=N, stop_ids=frozenset()))
            for params in PARAMS for p in PROMPTS for m in zoo.models()]
    steps = 0
    while eng.has_work():
        eng.step()
        steps += 1
        assert steps < 20000, "no progress"
    if cfg.kv_budget < 10_000_000:
        assert eng.counters["preemptions"] > 0, "the small pools were meant to force preemption"
    assert set(heads) == {int, TokenLogprob}
    refs = {m: chain_model(zoo, m) for m in zoo.models()}
    for m, p, params, r in reqs:
        want = refs[m].generate([p], N, params, stop_ids=())[0]
        assert r.output == want, (m, p, params)
        if params.logprobs is not None:
            assert [lp.token for lp in r.logprobs] == r.output
            assert all(len(lp.top) == 2 for lp in r.logprobs)
    sampled = [r.output for _, _, params, r in reqs if params.temperature]
    greedy = [r.output for _, _, params, r in reqs if params == SamplingParams()]
    assert len({tuple(o) for o in sampled}) > len(greedy), "the draws differ by seed"
