"""The engine when blocks fail or load slowly: a failure ends only the requests it touches
(their KV freed), and a device never idles behind a block read while it has other work.

BLOCKLLM_TEST_DEVICE=cuda runs these engines on the GPU (tests/test_engine.py)."""

import os
import time

import pytest

from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.hosts import LocalHost
from tests.conftest import ENGINE_N as N
from tests.conftest import ENGINE_PROMPTS as PROMPTS

DEVICE = os.environ.get("BLOCKLLM_TEST_DEVICE", "cpu")


def _drain(eng) -> None:
    steps = 0
    while eng.has_work():
        eng.step()
        steps += 1
        assert steps < 20000, "no progress"


def _no_kv_leak(eng) -> bool:
    return all(eng.sched.kv.used_pages(k) == 0 for k in eng.sched.kv.tables)


def test_a_failing_block_ends_its_batch_frees_its_kv_and_the_engine_keeps_serving(zoo4):
    """A worker that raises mid-batch (as a dying device would): its requests end with an error
    naming the block, their KV pages are freed, the worker is reloaded, the rest is exact."""
    zoo, ref = zoo4
    eng = Engine(zoo, zoo.models(), EngineConfig())
    for m, p in [("base", PROMPTS[0]), ("other", PROMPTS[1])]:
        eng.submit(m, p, max_tokens=2, stop_ids=frozenset())
    _drain(eng)  # every block loaded once
    key = eng.key("base", eng.chains["base"][1])  # a segment base shares with ft and lora

    def broken(*a, **k):
        raise RuntimeError("device lost")
    workers = eng.hosts[0].workers
    workers[key].run = broken
    hit = eng.submit("base", PROMPTS[0], max_tokens=N, stop_ids=frozenset())
    other = eng.submit("other", PROMPTS[1], max_tokens=N, stop_ids=frozenset())
    _drain(eng)
    assert hit.finish_reason.startswith("error: block") and "device lost" in hit.finish_reason
    assert other.output == ref["other"][1]
    assert eng.counters["block_failures"] == 1 and key not in workers  # dropped
    assert _no_kv_leak(eng)
    again = eng.submit("base", PROMPTS[0], max_tokens=N, stop_ids=frozenset())
    _drain(eng)
    assert again.output == ref["base"][0] and workers[key].run != broken  # reloaded


def test_a_request_preempted_while_its_batch_fails_goes_on(zoo4):
    """Two requests in one failing call; one of them was preempted meanwhile (as another
    device's head batch does): that one restarts and ends exact, only the other fails."""
    zoo, ref = zoo4
    eng = Engine(zoo, ["base"], EngineConfig(device=DEVICE))
    eng.warm_up()
    key = eng.key("base", eng.chains["base"][1])
    launch, batches = eng.executor.launch, []

    def spy(device, k, reqs, tied):
        batches.append(reqs)
        return launch(device, k, reqs, tied)
    eng.executor.launch = spy
    worker = eng.hosts[0].workers[key]
    run = worker.run

    def broken(*a, **k):
        worker.run = run  # once
        eng.sched.preempt(batches[-1][1])
        raise RuntimeError("device lost")
    worker.run = broken
    a, b = (eng.submit("base", p, max_tokens=N, stop_ids=frozenset()) for p in PROMPTS[:2])
    _drain(eng)
    assert [r.id for r in batches[1]] == [a.id, b.id], "both prompts ran in the failing call"
    assert a.finish_reason.startswith("error: block") and "device lost" in a.finish_reason
    assert b.finish_reason == "length" and b.output == ref["base"][1]
    assert _no_kv_leak(eng)


def test_a_block_that_fails_to_build_ends_its_requests_not_the_server(zoo4, monkeypatch):
    """An error while a block is made ready (out of memory building or profiling it, say)
    ends the requests waiting for that block with its message; the engine goes on serving."""
    zoo, ref = zoo4
    profile, failed = LocalHost.profile, []

    def out_of_memory_once(self, key):
        if not failed:
            failed.append(key)
            raise RuntimeError("out of memory (injected)")
        return profile(self, key)
    monkeypatch.setattr(LocalHost, "profile", out_of_memory_once)
    eng = Engine(zoo, ["base"], EngineConfig(device=DEVICE))
    hit = eng.submit("base", PROMPTS[0], max_tokens=N, stop_ids=frozenset())
    _drain(eng)
    assert failed and hit.finish_reason == "error: out of memory (injected)"
    assert _no_kv_leak(eng)
    again = eng.submit("base", PROMPTS[0], max_tokens=N, stop_ids=frozenset())
    _drain(eng)
    assert again.output == ref["base"][0]


@pytest.mark.parametrize("cold", [["other"], ["other", "ft"]])
def test_a_slow_block_read_does_not_stop_other_models(zoo4, monkeypatch, cold):
    """A block loaded on demand is read on a background thread: while another model's block
    takes a second to read, the resident model's requests keep getting tokens, also when a
    second cold model waits for a read of its own (one read per device at a time: the device
    runs resident work meanwhile instead of picking a block it cannot load yet)."""
    zoo, ref = zoo4
    base_blocks = {e.block for e in zoo.chain("base")}
    slow = {e.block for m in cold for e in zoo.chain(m) if e.block not in base_blocks}
    read = LocalHost._read

    def slow_read(self, rows):
        if any(r.id in slow for r in rows):
            time.sleep(1.0)
        return read(self, rows)
    monkeypatch.setattr(LocalHost, "_read", slow_read)
    eng = Engine(zoo, ["base", *cold], EngineConfig(device=DEVICE))
    base = eng.submit("base", PROMPTS[0], max_tokens=200, stop_ids=frozenset())
    while len(base.output) < 2:
        eng.step()
    reqs = {m: eng.submit(m, PROMPTS[1], max_tokens=N, stop_ids=frozenset()) for m in cold}
    t0 = time.perf_counter()
    while eng.has_work():
        eng.step()
        if eng.hosts[0].reading() and base.state.name != "FINISHED":
            key = eng.sched.pick(eng.where, 0, eng.weights.penalty)
            assert key is not None and eng.weights.resident(key) and \
                eng.hosts[0].ready(key), "the device would wait for a read"
    first_cold = min(r.token_times[0] for r in reqs.values())
    during = [t for t in base.token_times if t0 < t < first_cold]
    assert first_cold - t0 > 1.0, "the cold models' blocks were read slowly"
    assert len(during) >= 20, f"base got {len(during)} tokens while other blocks were read"
    assert base.output[:N] == ref["base"][0]
    assert all(r.output == ref[m][1] for m, r in reqs.items())
