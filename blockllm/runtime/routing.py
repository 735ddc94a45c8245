"""Which replica of each block a request uses: its route, chosen once at admission.

A block key may have several replicas on different devices (`devices.place_keys`,
`EngineConfig.replicas`); each replica has its own KV pool. A request's KV for a block lives
in the pool of the replica that ran its first pass, so every later pass must go there: the
route is chosen when the request is admitted (coordinated admission reserves its KV in the
chosen replicas) and kept for its life in the engine, its KV home. It is chosen again only
after a preemption, which frees all its KV. A replica that moves (`runtime.moves`) takes its
KV pool along, so a route never goes stale.

The choice is `placement.route`, the function the cluster simulator routes with: hop by hop
along the chain, among the replicas with room for the request's KV, the one with the least
transfer from the previous hop's device plus that device's routed load (requests holding KV
in its blocks, times each block's service time per pass, estimated as in `place_keys` from
its bytes: the seconds each token of those requests will keep the device busy).
A tied head goes where the request's embedding replica is (its logits read that weight).
The simulator routes each hop when the request reaches it; the engine routes the whole chain
up front because coordinated KV reserves every block of the chain before the first pass.
"""

from __future__ import annotations

from blockllm.runtime.devices import service_s
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.placement import route
from blockllm.runtime.request import Request


def set_keys(engine, req: Request, keys: tuple[BlockKey, ...]) -> None:
    """The request's key of each chain entry, and those of its decoder blocks (read on every
    hop and step)."""
    req.keys = keys
    req.decoder_keys = tuple(k for k, e in zip(keys, req.chain, strict=True)
                             if engine.info[e.block].kind == "decoder")


def route_request(engine, req: Request) -> None:
    """Choose the replica of each block of `req`'s chain (see the module doc)."""
    base = tuple(k.base for k in req.keys)
    if all(len(engine.replicas[k]) == 1 for k in base):
        return  # one replica each: its key is the block key
    n = len(req.feed)
    usable: dict[BlockKey, list[BlockKey]] = {}  # block -> its replicas this request may use
    for k in set(base):
        reps = list(engine.replicas[k])
        if k in engine.sched.kv.tables:  # a decoder block: replicas with room for this pass
            reps = [r for r in reps if engine.sched.kv.tables[r].can_append(req.id, n)] or reps
        usable[k] = reps
    options = {k: tuple(engine.where[r] for r in reps) for k, reps in usable.items()}
    hop_bytes = engine.models[req.model].hidden_size * 4 * n
    devices = route(list(base), options, engine.cluster, hop_bytes, busy_s=routed_load(engine))
    keys = [next(r for r in usable[k] if engine.where[r] == d)  # a replica on that device
            for k, d in zip(base, devices, strict=True)]
    if base[-1].tied:  # replica i of a tied head sits beside replica i of its embedding
        keys[-1] = base[-1].replica_of(keys[0].replica)
    set_keys(engine, req, tuple(keys))


def routed_load(engine) -> dict[int, float]:
    """Per device: seconds of block work per token of the requests routed there (requests
    holding KV in its decoder blocks times each block's estimated service time)."""
    load = {d: 0.0 for d in range(len(engine.hosts))}
    for k, table in engine.sched.kv.tables.items():
        holders = len(table.sequences())
        if holders:
            block = engine.info[engine.entry_of[k][0].block]
            load[engine.where[k]] += holders * service_s(block.nbytes)
    return load
