"""The engine's scheduling decisions: admission, which block runs, its batch, KV re-reservation.

Functions of the engine's state; only `launch` and `finish_ready` talk to the hosts that run
blocks (the one place tensors move).
"""

from __future__ import annotations

import time

from typing import NamedTuple

import torch

from blockllm.models.attention import AttnBatch
from blockllm.runtime.faults import maybe_inject_fault
from blockllm.runtime.hosts import BatchCall
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.request import Request, State
from blockllm.runtime.residency import OverBudget
from blockllm.runtime.routing import route_request
from blockllm.zoo.store import CorruptBlock


def admit(engine) -> None:
    """FIFO admission. Coordinated: a request enters only with KV reserved for its whole pass in
    every decoder block of its chain, and room there for its whole context now (with chunked
    prefill a pass is one chunk: a request admitted for its first chunk alone would be
    preempted at a later one and readmitted at once, forever). Uncoordinated (ablation): it
    enters when its first decoder block has room right now, each block deciding alone. A
    request that cannot fit even in empty pools fails."""
    while engine.waiting:
        req: Request = engine.waiting[0]
        route_request(engine, req)  # its replica of each block, for its KV's life
        keys, n = req.decoder_keys, len(req.feed)
        if engine.cfg.coordinate_kv:
            ok = engine.kv.fits(req.id, keys, len(req.context)) and \
                engine.kv.reserve(req.id, keys, n)
        else:
            ok = engine.kv.fits(req.id, keys[:1], n)
        if not ok:
            if engine.running:
                return
            engine.waiting.popleft()
            engine._finish(req, f"error: {len(req.context)} tokens do not fit the KV cache "
                                "(raise --kv-budget)")
            continue
        engine.waiting.popleft()
        req.state, req.stage = State.RUNNING, 0
        engine.running[req.id] = req
        engine._enqueue(req)


def _can_run(engine, key: BlockKey, req: Request) -> bool:
    """Uncoordinated mode: a decoder block runs a request only if its pool has room for it."""
    if engine.cfg.coordinate_kv or key not in engine.kv.tables:
        return True
    table = engine.kv.tables[key]  # after its pass a block holds the request's pass_end tokens
    return table.length(req.id) >= req.pass_end or table.can_append(req.id, len(req.feed))


def pick(engine, device: int | None = None) -> BlockKey | None:
    """Which block runs next on `device` (None: on any device).

    Shared blocks (blockllm) run in waves: the runnable queue whose head is at the earliest
    chain position goes first, oldest first among equals. Requests that fell behind catch up,
    so the requests at one position, of every model whose chain shares that block, run as one
    batch. Without it, requests that arrive at random times drift apart and every token of
    every request costs its own pass through the chain (measured before this rule: TPOT
    0.4-0.9 s on SmolLM2 where the lockstep per-model baseline had 0.07-0.1 s). A queue whose
    head has waited longer than `wave_wait_s` goes first regardless (nothing starves), and a
    block whose load would evict others waits behind resident work (plus `load_penalty_s` per
    128 MiB before it counts as stalled).

    Whole-model residency (the per-model baseline) orders by request arrival: a model's
    requests run to completion in arrival order, moving in lockstep, and a model is swapped in
    only when the oldest request needs it. (Ordering by time in a block's queue made every
    in-flight model age while another ran: the baseline swapped whole models about once a
    second, 118 model loads for 24 requests.)"""
    by_arrival = engine.cfg.residency_unit == "model"
    now = time.perf_counter()
    best, best_rank = None, None
    for key, q in engine.queues.items():
        if device is not None and engine.where[key] != device:
            continue
        for t, req in q:
            if not _can_run(engine, key, req):
                continue
            rank = queue_rank(req.stage, t, req.arrival, _load_penalty(engine, key, req), now,
                              by_arrival, engine.cfg.wave_wait_s)
            if best_rank is None or rank < best_rank:
                best, best_rank = key, rank
            break
    return best


def queue_rank(stage: int, queued_at: float, arrival: float, penalty: float, now: float,
               by_arrival: bool, wave_wait_s: float) -> tuple:
    """Sort key of a queue by its head request (smallest runs first); see `pick`. Pure: the
    cluster simulator ranks its device queues with it too."""
    if by_arrival:
        return (0, 0, 0, arrival + penalty)
    if now - queued_at > wave_wait_s + penalty:
        return (0, 0, 0, queued_at)  # stalled: oldest first
    return (1, penalty > 0, stage, queued_at)


def _load_penalty(engine, key: BlockKey, req: Request) -> float:
    """0 when the block is resident or fits the free budget (loading it evicts nothing), else
    `load_penalty_s` per 128 MiB to load: work that would evict others waits a little."""
    mem = engine.residency(key)
    if mem.resident(key):
        return 0.0
    missing = _missing_bytes(engine, key, req)
    if mem.used + missing <= mem.budget:
        return 0.0
    return engine.cfg.load_penalty_s * missing / 2**27


def _missing_bytes(engine, key: BlockKey, req: Request) -> int:
    """Bytes that running `key` for `req` would load: the block, or its whole model."""
    if engine.cfg.residency_unit != "model":
        return engine.weight_bytes(key)
    return sum(engine.weight_bytes(k) for k in req.keys if not engine.resident(k))


def _ensure_resident(engine, key: BlockKey, req: Request) -> bool:
    """Load the block (and a tied head's embedding) under the memory budget. True if cold.

    With whole-model residency (the per-model baseline) the unit is the request's whole chain.
    Everything in `need` is on the device of `key` (see devices.place_keys)."""
    stages = range(len(req.chain)) if engine.cfg.residency_unit == "model" else [req.stage]
    need = {req.keys[i]: engine.weight_bytes(req.keys[i]) for i in stages}
    embed_key = engine.tied_embed_key(key, req)
    if embed_key is not None:
        need[embed_key] = engine.weight_bytes(embed_key)
    by_key = dict(zip(req.keys, req.chain, strict=True))
    t0 = time.perf_counter()
    mem = engine.residency(key)
    load, evict = mem.plan(need)
    for k in evict:
        engine.evict(k)
    for k in load:
        engine.load(k, by_key[k], req.model)
        mem.add(k, need[k])
    mem.touch(need)
    if load:
        engine.counters["load_seconds"] += time.perf_counter() - t0
    return bool(load)


def take(engine, key: BlockKey) -> list[Request]:
    """Requests from the block's queue: decodes up to its token limit, then prompt chunks up
    to `prefill_chunk` tokens (at least one request)."""
    q = engine.queues[key]
    head = next(r for _, r in q if _can_run(engine, key, r))
    try:
        cold = _ensure_resident(engine, key, head)
        limit = engine.limit(key, head.chain[head.stage])  # may profile: a first use
    except (OverBudget, CorruptBlock) as e:  # the block cannot run: end its requests, say why
        for _, r in list(q):
            engine.abort(r, f"error: {e}")
        if engine.resident(key):  # a speculative load that failed: read it again next time
            engine.evict(key)
        return []
    if key in engine.speculative:  # a speculative load that paid off
        engine.speculative.discard(key)
        engine.counters["prefetch_hits"] += 1
    batch, tokens, prompt_tokens = [], 0, 0
    prompt_budget = engine.cfg.prefill_chunk or limit
    # decodes first, one token each, up to the block's limit; then prompt chunks ride along
    # up to `prefill_chunk` tokens in all, as vLLM's token budget does: a prompt joins the
    # decodes' pass over the weights instead of waiting for a call of its own (measured on
    # 2 cores: SmolLM2's knee was 32-128 tokens, so a 128-token prompt never joined)
    for item in sorted(q, key=lambda it: len(it[1].feed) > 1):
        req = item[1]
        n = len(req.feed)
        prompt = n > 1
        if batch and (prompt_tokens + n > prompt_budget if prompt else tokens + n > limit):
            continue
        if not _can_run(engine, key, req):
            continue
        if not engine.cfg.coordinate_kv and key in engine.kv.tables:
            table = engine.kv.tables[key]
            if table.length(req.id) < req.pass_end:
                table.append(req.id, n)
        q.remove(item)
        batch.append(req)
        if prompt:
            prompt_tokens += n
        else:
            tokens += n
        req.cold |= cold
    engine.last_batch[key] = tokens + prompt_tokens
    return batch


class Inflight(NamedTuple):
    """A batch running on a device."""
    key: BlockKey
    kind: str
    reqs: list[Request]
    epochs: list[tuple]  # (preemptions, state) of each request when it started
    handle: object  # the host's handle of the call
    t0: float


def launch(engine, device: int, key: BlockKey, reqs: list[Request]) -> None:
    """Start the batch on its device; its outputs are taken in by `finish_ready`."""
    if not reqs:
        return
    kind = engine.info[reqs[0].chain[reqs[0].stage].block].kind
    if kind == "embed":
        inputs = [torch.tensor(r.feed, dtype=torch.long) for r in reqs]
    else:
        inputs = [r.hidden for r in reqs]
    attn = adapters = None
    if kind == "decoder":  # page tables live here, in the engine; the KV pool on the device
        attn = AttnBatch.describe(engine.kv.tables[key], [r.id for r in reqs],
                                  [len(r.feed) for r in reqs])
        ids = tuple(r.chain[r.stage].adapter for r in reqs)
        adapters = ids if any(ids) else None
    greedy = None
    if kind == "head":  # greedy requests get their token picked on the device
        greedy = tuple((tuple(sorted(r.stop_ids)) if len(r.output) < r.min_tokens else ())
                       if r.params.greedy else None for r in reqs)
    call = BatchCall(key, inputs, attn, adapters, engine.tied_embed_key(key, reqs[0]), kind,
                     greedy)
    # a request preempted or ended while its batch runs gets a new epoch: its output is void
    epochs = [(r.preemptions, r.state) for r in reqs]
    t0 = time.perf_counter()
    try:
        maybe_inject_fault()
        handle = engine.hosts[device].submit(call)
    except Exception as e:  # a failing block ends its batch's requests, not the server
        engine.block_failed(key, reqs, e)
        return
    engine.inflight[device] = Inflight(key, kind, reqs, epochs, handle, t0)
    engine.counters["block_calls"] += 1


def finish_ready(engine) -> None:
    """Wait until at least one device's batch is done; hand each finished batch's outputs on."""
    devices = list(engine.inflight)
    handles = [engine.inflight[d].handle for d in devices]
    for i in engine.hosts[0].collect(handles):
        d = devices[i]
        done = engine.inflight.pop(d)
        try:
            outs = engine.hosts[d].result(done.handle)
        except Exception as e:  # noqa: BLE001 - isolate the block, keep serving
            engine.block_failed(done.key, done.reqs, e)
            continue
        engine.counters["block_seconds"] += time.perf_counter() - done.t0
        _postprocess(engine, done.kind == "head", done.reqs, done.epochs, outs)


def _postprocess(engine, head: bool, reqs: list[Request], epochs: list, outs) -> None:
    for req, out, (epoch, state) in zip(reqs, outs, epochs, strict=True):
        if (req.preemptions, req.state) != (epoch, state):
            continue  # preempted (or ended) while its batch ran: its output is void
        if head:
            engine._after_head(req, out)
        elif req.stage + 2 == len(req.chain) and req.prefilling:
            req.next_pass()  # a chunk of the prompt is in every block's KV: the next chunk
            reenter(engine, req)
        else:
            req.hidden = out
            req.stage += 1
            engine._enqueue(req)


def reenter(engine, req: Request) -> None:
    """Back to the embedding for the next pass (a token, or a prompt chunk). Coordinated:
    reserve its slots in every decoder block first; where a pool is full, the newest request
    holding pages there is preempted, the requester included (as vLLM does): an older request
    is never evicted by newer ones, so two requests cannot evict each other in turn."""
    if not engine.cfg.coordinate_kv:
        engine._enqueue(req)
        return
    keys, n = req.decoder_keys, len(req.feed)
    while not engine.kv.reserve(req.id, keys, n):
        short = engine.kv.shortest(keys, req.id, n)
        holders = {i for k in short for i in engine.kv.holders(k) if i in engine.running}
        victim = max([engine.running[i] for i in holders | {req.id}],
                     key=lambda r: (r.arrival, r.id))
        engine.preempt(victim)
        if victim is req:
            return
    engine._enqueue(req)
