"""Replicas of shared blocks in the real engine, and KV-affine routing: requests spread over
the replicas, each request keeps the replicas that hold its KV for its whole life, and the
greedy tokens equal one device's."""

import random

import pytest

from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.moves import move
from blockllm.runtime.placement import Workload, add_replicas, cluster_of
from blockllm.runtime.request import State
from tests.conftest import ENGINE_N as N
from tests.conftest import ENGINE_PROMPTS as PROMPTS
from tests.conftest import check_tokens, greedy_refs


def _serve(eng, zoo, on_step=None):
    reqs = [(m, i, eng.submit(m, p, max_tokens=N, stop_ids=frozenset()))
            for i, p in enumerate(PROMPTS) for m in zoo.models()]
    routes: dict[int, tuple] = {}  # request id -> its keys when first seen running
    used: set = set()  # keys that ran a batch
    steps = 0
    while eng.has_work():
        eng.step()
        steps += 1
        assert steps < 20000, "no progress"
        used |= set(eng.sched.last_batch)
        for r in eng.sched.running.values():
            assert routes.setdefault(r.id, r.keys) == r.keys, "a route changed while KV is held"
            held = {k for k, t in eng.sched.kv.tables.items() if t.length(r.id)}
            assert held <= set(r.decoder_keys), "KV only in the request's own replicas"
        if on_step:
            on_step()
    return reqs, routes, used


def _check_tokens(eng, reqs, ref):
    assert all(r.state is State.FINISHED for _, _, r in reqs)
    check_tokens(eng, reqs, ref)


@pytest.mark.parametrize("n,replicas,placement", [(2, 2, "locality"), (3, 3, "round_robin")])
def test_replicas_spread_requests_and_keep_the_single_device_tokens(zoo4, n, replicas, placement):
    zoo, ref = zoo4
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=n, replicas=replicas,
                                                 placement=placement))
    try:
        shared = {k for k, reps in eng.replicas.items() if len(reps) > 1}
        assert shared, "blocks shared by several models get replicas"
        for k in shared:
            devs = [eng.where[r] for r in eng.replicas[k]]
            assert len(devs) == len(set(devs)) == replicas, "one replica per device"
        reqs, routes, used = _serve(eng, zoo)
        _check_tokens(eng, reqs, ref)
        spread = [k for k in shared if sum(r in used for r in eng.replicas[k]) > 1]
        assert spread, "requests of one shared block ran on more than one of its replicas"
        for r in (r for _, _, r in reqs):
            keys = routes[r.id]
            if keys[-1].tied:
                assert eng.where[keys[-1]] == eng.where[keys[0]], "tied head by its embedding"
    finally:
        eng.close()


def test_replicas_survive_random_moves(zoo4):
    """Replicas move like blocks (weights and KV pool); routes stay valid."""
    zoo, ref = zoo4
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=3, replicas=2))
    rng = random.Random(1)
    try:
        reqs, _, _ = _serve(eng, zoo, lambda: move(eng, rng.choice(sorted(eng.where, key=str)),
                                                   rng.randrange(3)))
        _check_tokens(eng, reqs, ref)
        assert eng.counters["moves"] > 20 and eng.counters["preemptions"] == 0
        for k in eng.where:  # a tied head's replica i still sits beside its embedding's
            if k.tied:
                embed = BlockKey(k.tied_embed, replica=k.replica)
                assert eng.where[embed] == eng.where[k], k
    finally:
        eng.close()


def test_ray_replicas_give_the_single_process_tokens(zoo4, ray_session):
    zoo, ref = zoo4
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=2, replicas=2, backend="ray"))
    try:
        reqs, _, used = _serve(eng, zoo)
        _check_tokens(eng, reqs, ref)
        assert any(sum(r in used for r in reps) > 1 for reps in eng.replicas.values()), \
            "some shared block ran on both of its replicas"
    finally:
        eng.close()


def test_one_replica_is_the_default_and_keys_are_unchanged(zoo4):
    zoo, _ = zoo4
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=2))
    try:
        assert all(len(r) == 1 and r[0] == k for k, r in eng.replicas.items())
    finally:
        eng.close()


def test_add_replicas_goes_to_the_least_busy_devices_with_room():
    w = Workload(sizes={"a": 10, "b": 10, "c": 10}, demand={"a": 2.0, "b": 0.5, "c": 0.1},
                 transitions={}, hop_bytes=1.0)
    c = cluster_of((2, 2), memory=20)
    placed = {"a": (0,), "b": (1,), "c": (2,)}
    out = add_replicas(placed, w, c, {"a": 3, "c": 1})
    assert placed == {"a": (0,), "b": (1,), "c": (2,)}, "input unchanged"
    assert out["a"] == (0, 3, 2), "idle 3 first, then 2 (0.1 busy) over 1 (0.5)"
    assert out["b"] == (1,) and out["c"] == (2,)
    full = add_replicas(placed, w, cluster_of((2, 2), memory=10), {"a": 4})
    assert full["a"] == (0, 3), "only device 3 has room: fewer replicas than wished"


@pytest.fixture(scope="module")
def tied_zoo(tmp_path_factory):
    """Two tied models sharing embedding and head: the tied head has replicas too."""
    from blockllm.zoo.ingest import add_source
    from blockllm.zoo.store import Zoo
    from tests.conftest import tiny_source
    from tests.test_zoo import partial_finetune
    zoo = Zoo(tmp_path_factory.mktemp("tied") / "zoo")
    base = tiny_source(seed=9, tie_word_embeddings=True)
    add_source(zoo, base, "tbase")
    add_source(zoo, partial_finetune(base, 1, seed=4), "tft")
    return zoo, greedy_refs(zoo)


@pytest.mark.parametrize("n,placement", [(2, "locality"), (2, "round_robin"), (3, "locality")])
def test_tied_heads_run_beside_the_request_s_embedding_replica(tied_zoo, n, placement):
    zoo, ref = tied_zoo
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=n, replicas=2, placement=placement))
    try:
        head = eng.key("tbase", eng.chains["tbase"][-1])
        assert head.tied and len(eng.replicas[head]) == 2
        reqs, routes, used = _serve(eng, zoo)
        _check_tokens(eng, reqs, ref)
        for keys in routes.values():
            assert eng.where[keys[-1]] == eng.where[keys[0]]
    finally:
        eng.close()


def test_a_tied_group_moves_whole_or_not_at_all(tied_zoo):
    """Embedding replica and tied head replica move together; when they do not both fit the
    target device, neither moves, and serving goes on with the same tokens."""
    zoo, ref = tied_zoo
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=3, replicas=2))
    try:
        eng.generate("tbase", [PROMPTS[0]], 3, stop_ids=frozenset())  # both resident
        embed = eng.key("tbase", eng.chains["tbase"][0])
        head = eng.key("tbase", eng.chains["tbase"][-1])
        rep = next(r for r in eng.replicas[embed] if eng.weights.resident(r))  # the one that ran
        head_rep = head.replica_of(rep.replica)
        assert eng.weights.resident(head_rep)
        dst = next(d for d in range(3) if d not in {eng.where[r] for r in eng.replicas[embed]})
        before = dict(eng.where)
        mem = eng.weights.memory[dst]
        for k in list(mem.keys()):
            eng.weights.evict(k)
        mem.budget = eng.weights.residency(head_rep).size(head_rep) + 10  # the head fits, not both
        assert not move(eng, rep, dst), "the embedding does not fit there"
        assert eng.where == before, "nothing of the group moved"
        mem.budget = 1 << 40
        assert move(eng, rep, dst)
        assert eng.where[rep] == eng.where[head_rep] == dst
        out = eng.generate("tbase", [PROMPTS[1]], N, stop_ids=frozenset())
        assert out[0] == ref["tbase"][1]
    finally:
        eng.close()


def test_replanning_keeps_the_configured_number_of_replicas(zoo4):
    """However hot the load, a plan gives each block as many devices as it has replicas, so a
    replan can move every one of them."""
    from blockllm.runtime.devices import place_keys
    zoo, _ = zoo4
    for replicas in (1, 2):
        eng = Engine(zoo, zoo.models(), EngineConfig(devices=3, replicas=replicas))
        try:
            plan = place_keys(eng, dict.fromkeys(eng.models, 1e9))
            assert all(len(devs) == len(eng.replicas[k]) for k, devs in plan.items())
        finally:
            eng.close()


def test_bad_replica_settings_are_named():
    with pytest.raises(ValueError, match="at most one per device"):
        EngineConfig(devices=2, replicas=3)
    with pytest.raises(ValueError, match="only of shared blocks"):
        EngineConfig(devices=2, replicas=2, share_blocks=False)


def test_a_tied_embedding_is_charged_what_its_host_holds(tied_zoo):
    """Each host decides on its own CPU whether it packs weights (a Ray actor may run on
    another CPU): the engine charges a tied embedding's packed copy on a host that keeps one
    and not on one that does not, also when the block moves between them."""
    zoo, ref = tied_zoo
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=2))
    try:
        embed = eng.key("tbase", eng.chains["tbase"][0])
        src = eng.where[embed]
        dst = 1 - src
        eng.hosts[src].packs, eng.hosts[dst].packs = False, True  # as two CPUs could report
        plain = eng.weights.info[eng.entry_of[embed][0].block].nbytes
        assert eng.generate("tbase", [PROMPTS[0]], N, stop_ids=frozenset())[0] == ref["tbase"][0]
        assert eng.weights.residency(embed).size(embed) == plain
        assert eng.hosts[src].workers[embed].module.packed is None
        assert move(eng, embed, dst)
        assert eng.weights.memory[dst].size(embed) == 2 * plain, "the packed copy is counted"
        assert not eng.weights.memory[src].resident(embed)
        assert eng.hosts[dst].workers[embed].module.packed is not None, "and really held"
        assert eng.generate("tbase", [PROMPTS[1]], N, stop_ids=frozenset())[0] == ref["tbase"][1]
    finally:
        eng.close()
