"""The scheduler: the waiting line, each block's queue, admission, KV pages and preemption.

Integers and request ids only: nothing here touches a tensor, a device or a weight. The
engine asks it which block runs next on a device (`pick`) and which of that block's queued
requests its batch takes (`take`); it tells it when a pass comes back (`enqueue`, `reenter`)
and when a request ends (`release`). What it decides with help from outside comes in as
plain values or callables: a request's route (`admit`), each key's device and the penalty of
work that needs a load (`pick`). Its state is what a unit test can check exactly.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

from blockllm.runtime.config import EngineConfig
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.kv_manager import KVManager
from blockllm.runtime.request import Request, State


class Scheduler:
    def __init__(self, cfg: EngineConfig, kv: KVManager, counters: dict):
        self.cfg, self.kv = cfg, kv
        self.counters = counters  # the engine's: preemptions and deadlocks are counted here
        self.waiting: deque[Request] = deque()  # not admitted, first come first admitted
        self.running: dict[int, Request] = {}  # admitted: KV reserved along the chain
        self.queues: dict[BlockKey, deque[tuple[float, Request]]] = {}  # (queued at, request)
        self.last_batch: dict[BlockKey, int] = {}  # tokens in each block's last batch

    # ---- the line and the queues ----------------------------------------------------------

    def enqueue(self, req: Request) -> None:
        """Into the queue of the block at its stage."""
        key = req.keys[req.stage]
        self.queues.setdefault(key, deque()).append((time.perf_counter(), req))

    def dequeue(self, req: Request) -> None:
        """Out of every queue and of the waiting line."""
        for q in self.queues.values():
            for item in list(q):
                if item[1] is req:
                    q.remove(item)
        if req in self.waiting:
            self.waiting.remove(req)

    def release(self, req: Request) -> None:
        """A request ended: its KV pages are free, it runs no more."""
        self.kv.free(req.id)
        self.running.pop(req.id, None)

    def admit(self, route: Callable[[Request], None]) -> list[Request]:
        """FIFO admission; returns the requests that fit nowhere (the engine ends them).

        Coordinated: a request enters only with KV reserved for its whole pass in every
        decoder block of its chain, and room there for its whole context now (with chunked
        prefill a pass is one chunk: a request admitted for its first chunk alone would be
        preempted at a later one and readmitted at once, forever). Uncoordinated (ablation):
        it enters when its first decoder block has room right now, each block deciding alone.
        `route(req)` picks its replica of each block first (runtime.routing). A request whose
        context would not fit some pool of its chain even were that pool empty fails at once,
        in both modes (uncoordinated, it used to be admitted on its first pool's room and stall
        forever at a smaller one, or once its output outgrew a pool); one that does not fit
        now fails when nothing else runs."""
        failed = []
        while self.waiting:
            req = self.waiting[0]
            route(req)
            keys, n = req.decoder_keys, len(req.feed)
            never = not self.kv.could_fit(keys, len(req.context))
            if never:
                ok = False
            elif self.cfg.coordinate_kv:
                ok = self.kv.fits(req.id, keys, len(req.context)) and \
                    self.kv.reserve(req.id, keys, n)
            else:
                ok = self.kv.fits(req.id, keys[:1], n)
            if not ok and self.running and not never:
                break  # room comes back as running requests end
            self.waiting.popleft()
            if not ok:
                failed.append(req)
                continue
            req.state, req.stage = State.RUNNING, 0
            self.running[req.id] = req
            self.enqueue(req)
        return failed

    def runnable(self, key: BlockKey, req: Request) -> bool:
        """Uncoordinated mode: a decoder block runs a request only if its pool has room."""
        if self.cfg.coordinate_kv or key not in self.kv.tables:
            return True
        table = self.kv.tables[key]  # after its pass a block holds the request's pass_end tokens
        return table.length(req.id) >= req.pass_end or table.can_append(req.id, len(req.feed))

    # ---- which block runs, and whom -------------------------------------------------------

    def pick(self, device_of: Mapping[BlockKey, int], device: int | None,
             penalty: Callable[[BlockKey, Request], float]) -> BlockKey | None:
        """Which block runs next on `device` (None: on any device).

        Shared blocks (blockllm) run in waves: the runnable queue whose head is furthest
        behind in the wave goes first (`wave_places`), oldest first among equals. Requests
        that fell behind catch up, so the requests at one position, of every model whose chain
        shares that block, run as one batch. Without it, requests that arrive at random times drift
        apart and every token of every request costs its own pass through the chain
        (measured before this rule: TPOT 0.4-0.9 s on SmolLM2 where the lockstep per-model
        baseline had 0.07-0.1 s). A queue whose head has waited longer than `wave_wait_s`
        goes first regardless (nothing starves), and a block whose load would evict others
        waits behind resident work (`penalty(key, req)` seconds before it counts as stalled).

        Whole-model residency (the per-model baseline) orders by request arrival: a model's
        requests run to completion in arrival order, moving in lockstep, and a model is
        swapped in only when the oldest request needs it. (Ordering by time in a block's
        queue made every in-flight model age while another ran: the baseline swapped whole
        models about once a second, 118 model loads for 24 requests.)"""
        by_arrival = self.cfg.residency_unit == "model"
        now = time.perf_counter()
        heads = []  # (key, queued at, request): each queue's first runnable request
        for key, q in self.queues.items():
            item = next(((t, r) for t, r in q if self.runnable(key, r)), None)
            if item is not None:
                heads.append((key, *item))
        places = wave_places([(r.stage, len(r.keys)) for _, _, r in heads],
                             self.cfg.wave_order == "cycle")
        best, best_rank = None, None
        for (key, t, req), place in zip(heads, places):
            if device is not None and device_of[key] != device:
                continue
            rank = queue_rank(place, t, req.arrival, penalty(key, req), now, by_arrival,
                              self.cfg.wave_wait_s)
            if best_rank is None or rank < best_rank:
                best, best_rank = key, rank
        return best

    def head(self, key: BlockKey) -> Request:
        """The first request of the block's queue that can run now (`pick` chose the block)."""
        return next(r for _, r in self.queues[key] if self.runnable(key, r))

    def take(self, key: BlockKey, limit: int) -> list[Request]:
        """Requests from the block's queue: decodes first, one token each, up to its token
        `limit`; then prompt chunks ride along up to `prefill_chunk` tokens in all, as vLLM's
        token budget does: a prompt joins the decodes' pass over the weights instead of
        waiting for a call of its own (measured on 2 cores: SmolLM2's knee was 32-128
        tokens, so a 128-token prompt never joined). At least one request."""
        q = self.queues[key]
        batch, tokens, prompt_tokens = [], 0, 0
        prompt_budget = self.cfg.prefill_chunk or limit
        for item in sorted(q, key=lambda it: len(it[1].feed) > 1):
            req = item[1]
            n = len(req.feed)
            prompt = n > 1
            if batch and (prompt_tokens and prompt_tokens + n > prompt_budget if prompt
                          else tokens + n > limit):
                continue  # the first prompt always rides along: one longer than the budget
                # (unchunked, as with prompt logprobs) would otherwise never join decodes
            if not self.runnable(key, req):
                continue
            if not self.cfg.coordinate_kv and key in self.kv.tables:
                table = self.kv.tables[key]
                if table.length(req.id) < req.pass_end:
                    table.append(req.id, n)
            q.remove(item)
            batch.append(req)
            if prompt:
                prompt_tokens += n
            else:
                tokens += n
        self.last_batch[key] = tokens + prompt_tokens
        return batch

    # ---- passes, preemption ---------------------------------------------------------------

    def reenter(self, req: Request) -> None:
        """Back to the embedding for the next pass (a token, or a prompt chunk). Coordinated:
        reserve its slots in every decoder block first; where a pool is full, the newest
        request holding pages there is preempted, the requester included (as vLLM does): an
        older request is never evicted by newer ones, so two cannot evict each other in turn."""
        if not self.cfg.coordinate_kv:
            self.enqueue(req)
            return
        keys, n = req.decoder_keys, len(req.feed)
        while not self.kv.reserve(req.id, keys, n):
            short = self.kv.shortest(keys, req.id, n)
            holders = {i for k in short for i in self.kv.holders(k) if i in self.running}
            victim = newest([self.running[i] for i in holders | {req.id}])
            self.preempt(victim)
            if victim is req:
                return
        self.enqueue(req)

    def preempt(self, req: Request) -> None:
        """Recompute preemption: free all its KV, send it back to wait; it loses no tokens."""
        self.dequeue(req)
        self.release(req)
        req.restart()
        self.waiting.appendleft(req)
        self.counters["preemptions"] += 1

    def break_deadlock(self) -> None:
        """Uncoordinated mode: every running request waits for KV held by others. The newest
        request holding pages in the pool the oldest stalled request waits for gives them
        back, so the oldest always gains room (it is first in that block's queue): the
        newest request overall may hold none there, and preempting it freed nothing, again
        and again. First, though, a stalled request whose pass would not fit its pool even
        were the pool empty (its output outgrew it) is the victim: readmitted, it fails
        (`admit`) and frees what it holds elsewhere."""
        stalled = [(k, r) for k, q in self.queues.items() if k in self.kv.tables
                   for _, r in q if not self.runnable(k, r)]
        hopeless = [r for k, r in stalled if not self.kv.could_fit([k], r.pass_end)]
        holders = []
        if stalled:
            key = min(stalled, key=lambda kr: age(kr[1]))[0]
            holders = [self.running[i] for i in self.kv.holders(key) if i in self.running]
        victim = hopeless[0] if hopeless else newest(holders or self.running.values())
        self.counters["deadlocks"] += 1
        self.preempt(victim)


def age(req: Request) -> tuple[float, int]:
    """Order of arrival (the request id breaks ties)."""
    return req.arrival, req.id


def newest(reqs) -> Request:
    return max(reqs, key=age)


def wave_places(heads: list[tuple[int, int]], cycle: bool = True) -> list[int]:
    """The place in the wave of each queue, from (stage, chain length) of its head request:
    0 runs first. Pure: the cluster simulator orders its queues with it too. `cycle=False`
    (EngineConfig.wave_order "chain", an ablation): the stage itself, earliest first.

    A pass is a cycle (embed, decoder blocks, head, then the embedding again for the next
    token), so the rear of the wave is the occupied chain position right after the longest
    run of empty ones; places count forward from it (a head is the position before the
    embedding, whatever its chain's length). So a fresh request at the embedding waits for
    the head call of the pass in flight and joins its next pass, instead of running its
    prompt alone through the decoders while that pass's requests wait for their tokens
    (measured on 2 cores at 2 req/s: a second prompt step in their time to first token).
    Where requests sit at several positions mid-pass, the laggards run first, as before.
    Between runs of empty positions of equal length, the later position is the rear: the
    pass further along finishes and comes round to the others (a fresh request at the
    embedding waits for the passes in flight at a private segment of a 4-position chain).
    With every position occupied, the embedding is the rear (earliest position first)."""
    if not heads or not cycle:
        return [s for s, _ in heads]
    c = max(n for _, n in heads)
    pos = [c - 1 if s == n - 1 else s for s, n in heads]
    occupied = sorted(set(pos))
    if len(occupied) == c:
        return pos
    rear, widest = occupied[0], -1
    for i, p in enumerate(occupied):
        gap = p - (occupied[i - 1] if i else occupied[-1] - c) - 1  # empty positions before p
        if gap >= widest:  # ties: the later position, the pass that is further along
            rear, widest = p, gap
    return [(p - rear) % c for p in pos]


def queue_rank(place: int, queued_at: float, arrival: float, penalty: float, now: float,
               by_arrival: bool, wave_wait_s: float) -> tuple:
    """Sort key of a queue by its head request (smallest runs first), `place` its place in
    the wave (`wave_places`); see `Scheduler.pick`. Pure: the cluster simulator ranks its
    device queues with it too."""
    if by_arrival:
        return (0, 0, 0, arrival + penalty)
    if now - queued_at > wave_wait_s + penalty:
        return (0, 0, 0, queued_at)  # stalled: oldest first
    return (1, penalty > 0, place, queued_at)
