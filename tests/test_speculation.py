"""Speculative block loads: same tokens on or off, they happen and pay off under memory pressure,
and a speculative load of a corrupt block fails only the requests that need it, by name."""

import pytest

from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.speculation import upcoming
from tests.conftest import ENGINE_PROMPTS as PROMPTS
from tests.conftest import good_and_bad_zoo
from tests.test_engine import _run_all

TIGHT = 400_000  # bytes of weights: not every block fits, so loads and evictions go on


@pytest.mark.parametrize("speculate", [True, False], ids=["on", "off"])
@pytest.mark.parametrize("devices", [1, 2])
def test_speculation_changes_no_token(zoo4, speculate, devices):
    zoo, ref = zoo4
    eng, reqs = _run_all(zoo, EngineConfig(memory_budget=TIGHT, speculate=speculate,
                                           devices=devices))
    for m, i, r in reqs:
        assert r.output == ref[m][i], (m, i)
    c = eng.counters
    if not speculate:
        assert c["prefetches"] == 0
    else:
        assert c["prefetches"] > 0 and c["prefetch_hits"] > 0, c
        assert c["prefetch_hits"] + c["prefetch_wasted"] <= c["prefetches"]
    assert all(m.used <= TIGHT for m in eng.weights.memory), "speculation stays inside the budget"


def test_upcoming_looks_along_the_chain_and_wraps_past_the_head(zoo4):
    zoo, _ = zoo4
    eng = Engine(zoo, ["base"], EngineConfig(speculate=False))
    req = eng.submit("base", PROMPTS[0], max_tokens=4)
    eng.step()  # admitted, and its embedding ran
    chain = eng.chains["base"]
    want = list(upcoming(eng, 2))
    ahead = [chain[(req.stage + i) % len(chain)] for i in range(3)]  # past the head: embed
    assert want == list(dict.fromkeys(eng.key("base", e) for e in ahead))
    req.stage = len(chain) - 1  # at the head: the next pass starts at the embedding
    assert list(upcoming(eng, 1))[:2] == [eng.key("base", chain[-1]), eng.key("base", chain[0])]


def test_a_corrupt_block_loaded_speculatively_fails_its_requests_by_name(tmp_path):
    zoo, victim = good_and_bad_zoo(tmp_path)
    eng = Engine(zoo, ["good", "bad"], EngineConfig(speculate=True))
    bad = eng.submit("bad", [1, 2, 3], max_tokens=3)
    good = eng.submit("good", [1, 2, 3], max_tokens=3)
    while eng.has_work():
        eng.step()
    assert eng.counters["prefetches"] > 0
    assert bad.finish_reason.startswith("error") and victim[:12] in bad.finish_reason
    assert "hash check" in bad.finish_reason
    assert good.finish_reason in ("stop", "length") and len(good.output) >= 1
