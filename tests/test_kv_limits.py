"""Requests at the KV cache's limits end cleanly: a request whose context cannot fit a pool of
its chain fails with an error in both KV modes (uncoordinated, it used to stall and be
preempted forever), and an `on_token` hook that aborts its own request ends it once."""

import pytest

from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.request import State
from blockllm.zoo.ingest import chain_model
from tests.conftest import ENGINE_PROMPTS as PROMPTS
from tests.conftest import kv_layers


def _run(eng, limit=5000) -> int:
    steps = 0
    while eng.has_work() and steps < limit:
        eng.step()
        steps += 1
    return steps


def _all_free(eng) -> bool:
    return all(t.free_pages == t.num_pages for t in eng.sched.kv.tables.values())


@pytest.mark.parametrize("coordinate", [True, False], ids=["coordinated", "uncoordinated"])
@pytest.mark.parametrize("chunk", [4, None], ids=["chunked", "whole-prompt"])
def test_a_request_that_outgrows_its_pool_fails_instead_of_looping(zoo4, coordinate, chunk):
    """3 pages of 4 tokens per pool: an 8-token prompt fits, its 13th token does not."""
    zoo, ref = zoo4
    page = 2 * 4 * 2 * 16 * 4  # K and V of 4 tokens, 2 KV heads of 16, fp32, per layer
    cfg = EngineConfig(page_size=4, kv_budget=3 * kv_layers(Engine(zoo, ["base"])) * page,
                       coordinate_kv=coordinate, prefill_chunk=chunk)
    eng = Engine(zoo, ["base"], cfg)
    assert {t.num_pages for t in eng.sched.kv.tables.values()} == {3}
    r = eng.submit("base", list(range(10, 18)), max_tokens=10, stop_ids=frozenset())
    assert _run(eng) < 5000, "no progress: the request was preempted and readmitted forever"
    assert r.finish_reason.startswith("error") and "do not fit the KV cache" in \
        r.finish_reason, r.finish_reason
    assert len(r.output) == 12 - 8 + 1  # the tokens it had room for were generated
    too_long = eng.submit("base", list(range(10, 23)), max_tokens=2, stop_ids=frozenset())
    ok = eng.submit("base", PROMPTS[0], max_tokens=4, stop_ids=frozenset())
    _run(eng)
    assert "do not fit" in too_long.finish_reason  # at admission, also beside a running one
    assert ok.output == ref["base"][0][:4]
    assert _all_free(eng)


@pytest.mark.parametrize("kv_budget", [512 << 20, 12 * 3 * 2 * 16 * 2 * 16 * 4],
                         ids=["room", "tiny-kv"])
def test_an_on_token_hook_that_aborts_its_own_request_ends_it_once(zoo4, kv_budget):
    zoo, ref = zoo4
    eng = Engine(zoo, ["base"], EngineConfig(kv_budget=kv_budget))
    finished = []
    eng.on_finish = lambda r: finished.append((r.id, r.finish_reason))

    def hook(req, token):
        if req is a and len(req.output) == 2:  # e.g. a client's stop string matched
            eng.abort(req)
    eng.on_token = hook
    a = eng.submit("base", PROMPTS[0], max_tokens=8, stop_ids=frozenset())
    b = eng.submit("base", PROMPTS[1], max_tokens=20, stop_ids=frozenset())
    _run(eng)
    assert not eng.has_work()
    assert a.state is State.FINISHED and a.finish_reason == "abort"
    assert a.output == ref["base"][0][:2]
    assert b.output == ref["base"][1][:20]
    assert sorted(finished) == [(a.id, "abort"), (b.id, "length")], "on_finish once each"
    assert _all_free(eng)


def test_uncoordinated_pools_of_different_sizes_drain_a_crowd(zoo4):
    """The ablation's deadlock breaking under pressure: pools sized by sharing (the shared
    segment's larger), 30 requests of four models with prompts up to 40 tokens. Preempting
    the newest request overall freed pages in a pool nobody waited for, and the victim took
    them back at once: thousands of preemptions, no progress. The newest holder of the pool
    the oldest stalled request waits for goes now, so the oldest always gains room."""
    import random
    zoo, _ = zoo4
    rng = random.Random(7)
    cfg = EngineConfig(page_size=5, kv_budget=179200, prefill_chunk=5, batch_tokens=1,
                       coordinate_kv=False, kv_by_sharing=True, wave_wait_s=0.0)
    eng = Engine(zoo, zoo.models(), cfg)
    assert len({t.num_pages for t in eng.sched.kv.tables.values()}) > 1
    reqs = [eng.submit(rng.choice(zoo.models()),
                       [rng.randrange(3, 300) for _ in range(rng.randint(1, 40))],
                       max_tokens=rng.randint(5, 10), stop_ids=frozenset())
            for _ in range(30)]
    assert _run(eng, 20000) < 20000, "no progress"
    assert eng.counters["deadlocks"] > 0
    ok = [r for r in reqs if r.finish_reason == "length"]
    assert len(ok) >= 25, [r.finish_reason for r in reqs]
    for r in ok:  # every request that ran to its length has the reference's tokens
        assert r.output == chain_model(zoo, r.model).generate([r.prompt], r.max_tokens,
                                                              stop_ids=())[0]
    assert _all_free(eng)
