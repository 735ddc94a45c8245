"""Several devices: blocks placed over hosts (in-process, and Ray actors on this CPU) give the
same greedy tokens as one device, and the placement rules hold."""

import random

import pytest

from blockllm.errors import UserError
from blockllm.runtime.config import EngineConfig
from blockllm.runtime.engine import Engine
from blockllm.runtime.moves import move
from tests.conftest import ENGINE_N as N
from tests.conftest import ENGINE_PROMPTS as PROMPTS
from tests.conftest import check_tokens
from tests.test_engine import _run_all


def _check(zoo, ref, cfg):
    eng, reqs = _run_all(zoo, cfg)
    check_tokens(eng, reqs, ref)
    return eng


@pytest.mark.parametrize("cfg", [
    EngineConfig(devices=2),
    EngineConfig(devices=3, placement="round_robin"),
    EngineConfig(devices=2, placement="random", memory_budget=250_000),
    EngineConfig(devices=2, share_blocks=False, residency_unit="model", memory_budget=600_000),
], ids=["locality-2", "round-robin-3", "random-2-tiny-memory", "per-model-2"])
def test_local_devices_give_the_single_device_tokens(zoo4, cfg):
    zoo, ref = zoo4
    eng = _check(zoo, ref, cfg)
    eng.close()
    used = {eng.where[k] for k in eng.where}
    assert used == set(range(cfg.devices)), "every device runs some block"
    for key, d in eng.where.items():
        if key.tied:
            m = next(m for m in eng.models if eng.key(m, eng.chains[m][-1]) == key)
            assert eng.where[eng.key(m, eng.chains[m][0])] == d, "tied head beside its embedding"
    if cfg.residency_unit == "model":
        for m in eng.models:
            assert len({eng.where[eng.key(m, e)] for e in eng.chains[m]}) == 1


def test_locality_keeps_a_chain_on_fewer_hops_than_round_robin(zoo4):
    zoo, _ = zoo4
    hops = {}
    for placement in ("locality", "round_robin"):
        eng = Engine(zoo, zoo.models(), EngineConfig(devices=3, placement=placement))
        hops[placement] = sum(eng.where[eng.key(m, a)] != eng.where[eng.key(m, b)]
                              for m, ch in eng.chains.items() for a, b in zip(ch, ch[1:]))
        eng.close()
    assert hops["locality"] < hops["round_robin"], hops


def test_servers_keep_each_chain_inside_one_server_where_balance_allows(zoo4):
    """`servers=(2, 2)`: 4 devices in two fast-link domains. Locality placement crosses
    between them less than round-robin does, and the tokens stay the reference's. One call
    per block (no segments): the tiny chains have 4 segments, too few to tell placements apart."""
    zoo, ref = zoo4
    cross = {}
    for placement in ("locality", "round_robin"):
        eng = _check(zoo, ref, EngineConfig(devices=4, servers=(2, 2), placement=placement,
                                            segments=False))
        eng.close()
        server = [d.server for d in eng.cluster.devices]
        assert server == [0, 0, 1, 1]
        cross[placement] = sum(server[eng.where[eng.key(m, a)]] != server[eng.where[eng.key(m, b)]]
                               for m, ch in eng.chains.items() for a, b in zip(ch, ch[1:]))
    assert cross["locality"] < cross["round_robin"], cross


def test_bad_device_settings_are_named(zoo4):
    zoo, _ = zoo4
    with pytest.raises(ValueError, match="devices"):
        EngineConfig(devices=0)
    with pytest.raises(ValueError, match="backend"):
        EngineConfig(backend="mpi")
    with pytest.raises(ValueError, match="add up to devices"):
        EngineConfig(devices=4, servers=(2, 1))
    with pytest.raises(UserError, match="devices 2"):
        Engine(zoo, zoo.models(), EngineConfig(devices=2, device="cuda:1"))


@pytest.mark.parametrize("n,placement", [(2, "locality"), (4, "round_robin")])
def test_ray_actors_give_the_single_process_tokens(zoo4, ray_session, n, placement):
    zoo, ref = zoo4
    eng = _check(zoo, ref, EngineConfig(devices=n, backend="ray", placement=placement))
    try:
        pids = ray_session.get([h.actor.pid.remote() for h in eng.hosts])
        assert len(set(pids)) == n, "one actor process per device"
        assert {d.server for d in eng.cluster.devices} == {0}, "one Ray node: one server"
        packs = ray_session.get([h.actor.packs.remote() for h in eng.hosts])
        assert [h.packs for h in eng.hosts] == packs and all(isinstance(p, bool) for p in packs), \
            "the engine charges memory by what each actor's own CPU decided"
    finally:
        eng.close()


def test_ray_block_failure_is_isolated(zoo4, ray_session):
    """A block that raises inside its actor fails only its batch, as in one process."""
    zoo, ref = zoo4
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=2, backend="ray"))
    try:
        good = eng.submit("base", PROMPTS[0], max_tokens=4, stop_ids=frozenset())
        while eng.has_work():
            eng.step()
        assert good.output == ref["base"][0][:4]
        key = eng.key("base", eng.chains["base"][1])
        host = eng.hosts[eng.where[key]]
        ray_session.get(host.actor.drop.remote(key))  # the actor lost the block behind our back
        bad = eng.submit("base", PROMPTS[0], max_tokens=4, stop_ids=frozenset())
        while eng.has_work():
            eng.step()
        assert bad.finish_reason.startswith("error: block"), bad.finish_reason
        assert eng.counters["block_failures"] == 1
        again = eng.submit("base", PROMPTS[0], max_tokens=4, stop_ids=frozenset())
        while eng.has_work():
            eng.step()
        assert again.output == ref["base"][0][:4], "reloaded and serving again"
    finally:
        eng.close()


@pytest.mark.parametrize("backend,n", [("local", 3), ("ray", 2)])
def test_blocks_move_between_devices_mid_generation_without_changing_a_token(
        zoo4, backend, n, request):
    """Every step a random block moves to a random device, its weights and KV pool with it:
    no request is dropped, preempted or changed."""
    if backend == "ray":
        request.getfixturevalue("ray_session")
    zoo, ref = zoo4
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=n, backend=backend))
    try:
        reqs = [(m, i, eng.submit(m, p, max_tokens=N, stop_ids=frozenset()))
                for i, p in enumerate(PROMPTS) for m in zoo.models()]
        rng = random.Random(0)
        while eng.has_work():
            eng.step()
            move(eng, rng.choice(sorted(eng.where, key=str)), rng.randrange(n))
        for m, i, r in reqs:
            assert r.output == ref[m][i], (m, i)
        assert eng.counters["moves"] > 20 and eng.counters["preemptions"] == 0
        assert all(t.free_pages == t.num_pages for t in eng.sched.kv.tables.values())
        for m in eng.models:  # a tied head still sits beside its embedding
            head, embed = eng.key(m, eng.chains[m][-1]), eng.key(m, eng.chains[m][0])
            assert not head.tied or eng.where[head] == eng.where[embed]
    finally:
        eng.close()


def test_replanning_by_observed_load_moves_blocks_and_keeps_tokens(zoo4):
    """Traffic skewed to one model changes the plan; the engine replans on its own (here
    every step) and moves blocks mid-generation."""
    zoo, ref = zoo4
    eng = Engine(zoo, zoo.models(), EngineConfig(devices=2, replan_s=0.0))
    reqs = [("other", i, eng.submit("other", p, max_tokens=N, stop_ids=frozenset()))
            for i, p in enumerate(PROMPTS)]
    for _ in range(10):
        eng.step()
    reqs += [(m, i, eng.submit(m, p, max_tokens=N, stop_ids=frozenset()))
             for i, p in enumerate(PROMPTS) for m in zoo.models() if m != "other"]
    while eng.has_work():
        eng.step()
    for m, i, r in reqs:
        assert r.output == ref[m][i], (m, i)
    assert eng.counters["moves"] > 0 and eng.counters["preemptions"] == 0
    eng.close()
