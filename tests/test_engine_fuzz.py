"""A randomized differential fuzz of the engine: seeded trials draw the KV budget (down to one
request's worth), page size, prompt chunking, batch limits, KV coordination and sharing,
segments, one or two devices, weight layouts and the weight budget; several models' requests
arrive over time with greedy or seeded sampled decoding and aborts (between steps,
and from an `on_token` hook, the request's own included). Every request that finishes must
have the tokens of its model run alone (zoo.ingest.chain_model), no KV page may leak and
nothing may be left queued. This is how the KV-limit bugs of tests/test_kv_limits.py were
found (scheduling reads the clock, so a failing seed may not replay step for step; its
configuration is in the message)."""

import random

import pytest

from blockllm.models.sampling import SamplingParams
from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.request import State
from blockllm.zoo.ingest import chain_model
from tests.conftest import kv_layers

_MODELS: dict = {}  # name -> its chain run alone


def _reference(zoo, model: str, prompt: list[int], n: int, params: SamplingParams) -> list[int]:
    if model not in _MODELS:
        _MODELS[model] = chain_model(zoo, model)
    return _MODELS[model].generate([prompt], n, params, stop_ids=())[0]


def _config(rng: random.Random, layers: int) -> tuple[EngineConfig, int]:
    """A random engine configuration and the longest context (prompt + output) it must hold."""
    page = rng.choice([1, 2, 4, 5, 16])
    longest = rng.choice([12, 30, 60])
    pages = -(-longest // page) + rng.choice([0, 1, 3, 8, 40])
    cfg = EngineConfig(page_size=page, kv_budget=pages * layers * 2 * page * 2 * 16 * 4,
                       prefill_chunk=rng.choice([None, 1, 3, 16]),
                       batch_tokens=rng.choice([None, None, 1, 3]),
                       coordinate_kv=rng.random() < 0.7, kv_by_sharing=rng.random() < 0.3,
                       segments=rng.random() < 0.8, devices=rng.choice([1, 1, 2]),
                       pack_weights=rng.random() < 0.3,
                       cuda_graphs=rng.choice(["off", "uncaptured"]),
                       memory_budget=rng.choice([4 << 30, 4 << 30, 450_000]),
                       wave_wait_s=rng.choice([1.0, 0.0, 0.0005]))
    return cfg, longest


def _params(rng: random.Random) -> SamplingParams:
    if rng.random() < 0.7:
        return SamplingParams()
    return SamplingParams(temperature=rng.choice([0.7, 1.3]), seed=rng.randrange(1000),
                          top_k=rng.choice([0, 5]), top_p=rng.choice([1.0, 0.9]))


@pytest.mark.parametrize("seed", range(32))
def test_random_workloads_give_each_model_its_own_tokens(zoo4, seed):
    zoo, _ = zoo4
    rng = random.Random(seed)
    models = rng.choice([zoo.models(), ["base", "lora"], ["base", "ft", "lora"]])
    cfg, longest = _config(rng, kv_layers(Engine(zoo, models)))
    eng = Engine(zoo, models, cfg)
    smallest = min(t.num_pages for t in eng.sched.kv.tables.values()) * cfg.page_size
    arrivals = sorted((rng.randint(0, 30), rng.choice(models),
                       [rng.randrange(3, 300) for _ in range(rng.randint(1, longest - 6))],
                       rng.randint(1, 6), _params(rng)) for _ in range(rng.randint(3, 12)))
    abort_at = {i: rng.randint(0, 40) for i in range(len(arrivals)) if rng.random() < 0.15}
    reqs, aborted = [], set()

    def hook(req, token):
        live = [r for r in reqs if r.state is not State.FINISHED]
        if live and rng.random() < 0.03:
            victim = rng.choice(live)
            aborted.add(victim.id)
            eng.abort(victim)
    eng.on_token = hook
    step = 0
    while arrivals or eng.has_work():
        while arrivals and arrivals[0][0] <= step:
            _, m, prompt, n, params = arrivals.pop(0)
            reqs.append(eng.submit(m, prompt, params, max_tokens=n, stop_ids=frozenset()))
        for i, at in abort_at.items():
            if at == step and i < len(reqs) and reqs[i].state is not State.FINISHED:
                aborted.add(reqs[i].id)
                eng.abort(reqs[i])
        eng.step()
        step += 1
        assert step < 20000, f"no progress: seed {seed}, {cfg}"
    for r in reqs:
        why = f"seed {seed}, request {r.id} ({r.model}, {len(r.prompt)} tokens), {cfg}"
        assert r.state is State.FINISHED, why
        if r.id in aborted and r.finish_reason == "abort":
            continue
        if r.finish_reason.startswith("error"):  # only a context no pool of its chain holds
            assert len(r.prompt) + r.max_tokens > smallest and "do not fit" in \
                r.finish_reason, why
            continue
        assert r.finish_reason == "length", why
        assert r.output == _reference(zoo, r.model, r.prompt, r.max_tokens, r.params), why
    assert all(t.free_pages == t.num_pages for t in eng.sched.kv.tables.values()), "KV leak"
    assert not (eng.sched.running or eng.sched.waiting or any(eng.sched.queues.values()))
    eng.close()
