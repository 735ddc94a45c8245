"""Moving blocks between devices while serving: re-placement as load changes.

`move(engine, key, dst)` is make before break for one block. Not while a batch of it runs
(the caller tries again later). If its weights are resident on the old device they are loaded
on the new one first (evicting there least recently used, never the block running there);
its KV pool moves with it, while the requests holding pages keep their page tables, which
live in the engine; then the engine sends its queue to the new device and frees the old copy.
No request is dropped, preempted or recomputed: its next pass finds its KV where the block
now is. A tied head moves with its embedding (its logits read the embedding's weight). A
replica moves as any block does (it is a key of its own), so the routes of the requests
holding KV in it stay valid.

`replan(engine)` places the blocks again with the placement function used at start, weighting
each model's chain by the requests it got (halved at each plan), and moves the blocks whose
device changed (a block keeps its number of replicas); a block that is running stays and
moves at a later plan. With
`EngineConfig.replan_s` the engine replans on its own every that many seconds.
"""

from __future__ import annotations

import time

from blockllm.runtime.devices import place_keys
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.residency import OverBudget
from blockllm.runtime.segments import parts_of


def _group(engine, key: BlockKey) -> list[BlockKey]:
    """The keys that move together: an embedding's replica with the replicas of the tied
    heads that read it (replica i of a tied head sits beside replica i of its embedding)."""
    group, i = {key}, key.replica
    for m in engine.models:
        for chain in engine.all_chains(m):
            embed, head = engine.key(m, chain[0], chain), engine.key(m, chain[-1], chain)
            if head.tied and key.base in (embed, head):
                group |= {embed.replica_of(i), head.replica_of(i)}
    return sorted(group, key=str)


def move(engine, key: BlockKey, dst: int) -> bool:
    """Move `key` (and what must stay beside it) to device `dst`, all of the group or none.
    False: not now (one of them is running, or their resident weights do not fit on `dst`
    beside the block running there)."""
    group = _group(engine, key)
    running = {b.key for b in engine.executor.inflight.values()}
    if any(k in running for k in group):
        return False
    coming = {k: engine.weights.weight_bytes(k, dst) for k in group
              if engine.where[k] != dst and engine.weights.resident(k)}
    pinned = [engine.executor.inflight[dst].key] if dst in engine.executor.inflight else []
    try:
        engine.weights.memory[dst].plan(coming, pinned)  # checks only: each move plans its own room
    except OverBudget:
        return False
    for k in group:
        _move_one(engine, k, dst, engine.entry_of[k], pinned + list(coming))
    return True


def _move_one(engine, key: BlockKey, dst: int, entry_model: tuple,
              pinned: list[BlockKey]) -> None:
    src = engine.where[key]
    if src == dst:
        return
    entry, model = entry_model
    old, new = engine.weights.memory[src], engine.weights.memory[dst]
    resident = old.resident(key)
    if resident:  # make: load on the new device before anything is freed on the old one
        size = engine.weights.weight_bytes(key, dst)  # what dst's host will hold
        _, evict = new.plan({key: size}, [k for k in pinned if k != key])
        for k in evict:
            engine.weights.evict(k)
        pages = engine.sched.kv.tables[key].num_pages if key in engine.sched.kv.tables else 0
        engine.hosts[dst].load(key, parts_of(entry), engine.models[model], pages,
                               engine.cfg.page_size)
        new.add(key, size)
    pool = engine.hosts[src].take_pool(key)
    if pool is not None:  # the KV of every request holding pages in this block goes along
        engine.hosts[dst].put_pool(key, *pool)
    engine.where[key] = dst  # break: from now on its queue runs on dst
    engine.hosts[src].drop(key)
    if resident:
        old.remove(key)
    engine.counters["moves"] += 1


def _targets(engine, key: BlockKey, devs: tuple[int, ...]) -> dict[BlockKey, int]:
    """Moves that take `key`'s replicas to the devices `devs` of a new plan: a replica already
    on one of them stays; the others take the rest in order (the count of replicas stays as at
    start, so every request's route stays valid)."""
    reps = engine.replicas[key]
    free = [d for d in devs if d not in {engine.where[r] for r in reps}]
    out = {}
    for r in reps:
        if engine.where[r] not in devs and free:
            out[r] = free.pop(0)
    return out


def replan(engine) -> tuple[int, int]:
    """Place again by the load since the last plan; (blocks moved, blocks left for later)."""
    rates = {m: 1.0 + engine.served.get(m, 0) for m in engine.models}
    moved = deferred = 0
    for key, devs in place_keys(engine, rates).items():
        for r, d in _targets(engine, key, devs).items():
            if move(engine, r, d):
                moved += 1
            else:
                deferred += 1
    for m in engine.served:  # older load counts half at each plan: quiet spells do not reset it
        engine.served[m] /= 2
    engine.last_plan = time.perf_counter()
    return moved, deferred
