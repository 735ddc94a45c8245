"""Speculative execution, as blockllm does it: a block's load starts before a batch needs it.

Definition. After the engine starts this step's batches, it looks `speculate_ahead` blocks
along the chain of every request in flight or queued: the blocks those requests will run next
(after the head, the embedding and first blocks of the next token's pass). Each such block
that is not resident on its device is loaded speculatively (`host.load(wait=False)`: read
and hash-checked on a background thread, or inside its Ray actor, while the devices compute)
if it fits its device's budget by evicting only blocks that are in no admitted or waiting
request's chain; at most one speculative load per device per step. Without it
(`EngineConfig.speculate=False`, the default) a block's load starts when the scheduler picks
its batch; it is read in the background all the same (one read per device at a time), and
the device runs other blocks' batches until the read is done (Engine._launch).

The guess can be wrong: a request stops early, is preempted or aborted, or the wave moves on,
and the block is evicted unused. Such loads are counted (`prefetch_wasted`); they cost disk
reads and CPU time, never a request's KV or a block with work. Correctness does not depend on
the guess: a block runs only once its load finished and passed the zoo's hash check, and a
failed speculative load fails the first batch that needs the block, as a failed load does.

Not applied with whole-model residency (the per-model baseline loads whole models).

Measured so far (README): it halves the seconds the engine spends loading, but p50/p95 did
not improve on 2 CPU cores (the background read and hash compete with the block calls) nor on
an H100 with small SmolLM2-shaped blocks (loads are short there), so it is off by default.
"""

from __future__ import annotations

from blockllm.runtime.keys import BlockKey
from blockllm.runtime.request import Request
from blockllm.runtime.residency import OverBudget


def upcoming(engine, ahead: int) -> dict[BlockKey, tuple]:
    """Blocks the requests in flight and in queues will run within `ahead` hops, soonest
    first: key -> (chain entry, model)."""
    reqs: list[tuple[Request, int]] = []  # (request, hops already certain)
    for running in engine.executor.inflight.values():
        reqs += [(r, 1) for r in running.reqs]  # running now: its next block is one hop away
    for q in engine.sched.queues.values():
        reqs += [(r, 0) for _, r in q]  # queued: this block, then the next
    out: dict[BlockKey, tuple] = {}
    for hop in range(ahead + 1):
        for r, start in reqs:
            if hop < start:
                continue
            i = (r.stage + hop) % len(r.chain)  # past the head: the next pass
            if r.keys[i] not in out:
                out[r.keys[i]] = (r.chain[i], r.model)
    return out


def _in_use(engine) -> set[BlockKey]:
    """Every block in the chain of an admitted or waiting request: a guess may not evict
    these (measured: evicting blocks only a few hops away made 10x the loads it saved)."""
    out: set[BlockKey] = set()
    for r in engine.sched.running.values():
        out.update(r.keys)
    for r in engine.sched.waiting:  # not routed yet: any replica of its blocks may become its own
        out.update(x for k in r.keys for x in engine.replicas[k.base])
    return out


def speculate(engine) -> None:
    if not engine.cfg.speculate or engine.cfg.residency_unit == "model":
        return
    wanted = upcoming(engine, engine.cfg.speculate_ahead)
    busy: set[BlockKey] | None = None  # computed only when a guess would need room
    started: set[int] = set()
    for key, (entry, model) in wanted.items():
        d = engine.where[key]
        if d in started or engine.weights.resident(key):
            continue
        if key.tied:
            continue  # a tied head is norm weights only; it loads with its embedding, on use
        mem, size = engine.weights.residency(key), engine.weights.weight_bytes(key)
        if mem.used + size > mem.budget and busy is None:
            busy = set(wanted) | _in_use(engine)
        try:
            _, evict = mem.plan({key: size}, pinned=busy or ())
        except OverBudget:
            continue  # only blocks with work could make room: no guess is worth that
        for k in evict:
            engine.weights.evict(k)
        engine.weights.load(key, entry, model, wait=False)
        mem.add(key, size)
        engine.weights.speculative.add(key)
        engine.counters["prefetches"] += 1
        started.add(d)
