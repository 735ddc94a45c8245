"""The scheduler's wave rule: which block's queue runs next, exactly, as pure values and in
the engine (the order its block calls run in)."""

import pytest

from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.scheduler import queue_rank, wave_places
from tests.conftest import ENGINE_PROMPTS as PROMPTS


def test_a_head_call_of_the_pass_in_flight_goes_before_a_fresh_embedding():
    # one model: embed, one decoder segment, head; a fresh request at the embedding (stage 0),
    # the pass in flight at its head (stage 2): the head is the rear of the wave
    assert wave_places([(0, 3), (2, 3)]) == [1, 0]
    # the pass in flight still at its decoders: the fresh request catches up first
    assert wave_places([(0, 3), (1, 3)]) == [0, 1]


def test_laggards_mid_pass_run_first():
    # model x at its head (stage 3), model y still at its own segment (stage 2): y first, so
    # both heads then run and the next pass reaches the shared blocks together
    assert wave_places([(3, 4), (2, 4)]) == [1, 0]
    # a shared segment (stage 1) behind a private one (stage 2)
    assert wave_places([(2, 4), (1, 4)]) == [1, 0]


def test_heads_of_chains_of_any_length_sit_just_before_the_embedding():
    # a 3-block chain's head and a 4-block chain's stage 2: the head is at the cycle's end
    assert wave_places([(2, 3), (2, 4)]) == [1, 0]
    assert wave_places([(2, 3), (0, 4)]) == [0, 1]


def test_tied_gaps_let_the_pass_further_along_come_round_and_full_cycles_run_in_order():
    # a fresh request at the embedding, passes in flight at a private segment (stage 2 of 4):
    # one empty position either side; the passes in flight finish first
    assert wave_places([(0, 4), (2, 4)]) == [2, 0]
    # x at a shared segment (stage 1), y at its head: y's head, then y's embedding, then the
    # shared segment runs x and y together
    assert wave_places([(1, 4), (3, 4)]) == [2, 0]
    assert wave_places([(2, 3), (0, 3), (1, 3)]) == [2, 0, 1]  # every position: chain order
    assert wave_places([(1, 3)]) == [0] and wave_places([]) == []
    assert wave_places([(0, 3), (2, 3)], cycle=False) == [0, 2]  # the ablation: chain order


def test_rank_puts_stalled_queues_first_then_places():
    fresh, stalled = 10.0, 1.0  # queued at; now = 10.5, wave_wait_s = 1
    assert queue_rank(0, fresh, 0, 0.0, 10.5, False, 1.0) < \
        queue_rank(1, fresh, 0, 0.0, 10.5, False, 1.0)
    assert queue_rank(5, stalled, 0, 0.0, 10.5, False, 1.0) < \
        queue_rank(0, fresh, 0, 0.0, 10.5, False, 1.0)


@pytest.mark.parametrize("cfg", [EngineConfig(), EngineConfig(prefill_chunk=None, batch_tokens=2)],
                         ids=["default", "prompt-over-the-budget"])
def test_engine_runs_the_head_then_one_embedding_call_for_the_pass_and_a_fresh_request(zoo4,
                                                                                       cfg):
    """A request arrives while another's pass is at the head: the head goes first, then one
    embedding call and one decoder call carry both (the fresh prompt joins the pass), also when
    the prompt is longer than a call's prompt budget (unchunked, as prompt logprobs are)."""
    zoo, ref = zoo4
    eng = Engine(zoo, ["base"], cfg)
    eng.warm_up()  # every block resident: no load penalty reorders the queues
    assert len(eng.chains["base"]) == 3, "embed, one decoder segment, head"
    calls = []
    launch = eng.executor.launch

    def record(device, key, reqs, tied):
        calls.append((eng.info[key.block].kind, sorted(r.id for r in reqs)))
        return launch(device, key, reqs, tied)
    eng.executor.launch = record
    a = eng.submit("base", PROMPTS[0], max_tokens=4, stop_ids=frozenset())
    while a.stage != 2:
        eng.step()
    b = eng.submit("base", PROMPTS[1], max_tokens=4, stop_ids=frozenset())
    calls.clear()
    while len(calls) < 3:
        eng.step()
    assert calls == [("head", [a.id]), ("embed", [a.id, b.id]), ("decoder", [a.id, b.id])]
    while eng.has_work():
        eng.step()
    assert a.output == ref["base"][0][:4] and b.output == ref["base"][1][:4]
