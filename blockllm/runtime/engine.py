"""The block-chain engine: `step()` = schedule a block's batch on every idle device, run them,
postprocess what finished (runtime/scheduler.py decides, runtime/execution.py runs).

Every block (key; each replica of a shared block is a key of its own) has a queue and a
device (`devices.place_keys`); a request keeps one replica of each block, chosen at admission
(`routing`). A request's pass goes embed -> decoder/stitch blocks -> head,
waiting in each block's queue; a block shared by several models' chains batches all of their
requests. After the head samples a token the request re-enters the embedding's queue. The
scheduler picks, for each idle device, one of the blocks placed there (`Scheduler.pick`),
and takes as many requests as fit the block's token limit (profiled from its latency curve,
or fixed). Devices are hosts (`runtime.hosts`): in this process, or Ray actors that compute
while the engine schedules the others.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import torch

from blockllm.errors import UserError
from blockllm.models.logprobs import TokenLogprob, prompt_logprobs
from blockllm.models.sampling import SamplingParams
from blockllm.runtime.chains import assemble_chain, load_options
from blockllm.runtime.config import EngineConfig
from blockllm.runtime.devices import key_layout, make_hosts, place_keys, topology
from blockllm.runtime.execution import Done, Executor
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.kv_manager import kv_pools
from blockllm.runtime.moves import replan
from blockllm.runtime.request import Request, State, check_request
from blockllm.runtime.routing import route_request, set_keys
from blockllm.runtime.scheduler import Scheduler
from blockllm.runtime.segments import segment_served
from blockllm.runtime.speculation import speculate
from blockllm.runtime.weights import Weights
from blockllm.zoo.partition import ChainEntry
from blockllm.zoo.store import Zoo


COUNTERS = ("steps", "block_calls", "tokens", "preemptions", "deadlocks", "cold_loads",
            "block_failures", "step_seconds", "block_seconds", "load_seconds", "prefetches",
            "prefetch_hits", "prefetch_wasted", "moves")


class Engine:
    def __init__(self, zoo: Zoo, models: list[str], config: EngineConfig = EngineConfig()):
        if not models:
            raise UserError("serve at least one model")
        self.zoo, self.cfg = zoo, config
        self.dtype = getattr(torch, config.dtype)
        self.models = {m: zoo.config(m) for m in models}  # raises for unknown names
        self.chains = {m: tuple(zoo.chain(m)) for m in models}
        self.info = {}  # block id -> BlockRow
        for chain in self.chains.values():
            self.register(chain)
        self.options = load_options(self) if config.use_equivalence or config.pinned_chains \
            else {}
        if config.segments:  # decoder runs as segments: one queue, KV pool and call each
            self.chains, self.options = segment_served(
                self.chains, self.options, self.info, config.share_blocks,
                config.memory_budget // 2)
        self.hosts = make_hosts(zoo, config)
        self.cluster = topology(self.hosts, config)  # which devices share a server's links
        self.replicas, self.where, self.entry_of = key_layout(self, place_keys(self))
        # step_seconds = block_seconds (inside block calls) + load_seconds + the engine's own work
        self.counters = {k: 0.0 if k.endswith("seconds") else 0 for k in COUNTERS}
        kv = kv_pools(self)  # a KV pool per decoder key, within config.kv_budget
        self.sched = Scheduler(config, kv, self.counters)  # queues, admission, KV, preemption
        self.executor = Executor(self.hosts, kv, lambda r: self.info[r.chain[r.stage].block].kind,
                                 self.counters)  # batches running on the devices
        self.weights = Weights(config, self.hosts, self.where, self.entry_of, self.info,
                               self.models, kv, self.counters)  # resident blocks, limits
        self.served: dict[str, float] = {}  # requests per model, decayed at each placement
        self.waiting_for_reads = False  # this step found only blocks still being read
        self.last_plan = time.perf_counter()
        self._ids = itertools.count()
        self.on_token: Callable[[Request, int], None] | None = None
        self.on_finish: Callable[[Request], None] | None = None

    # ---- keys, chains, sizes ------------------------------------------------------------

    def key(self, model: str, entry: ChainEntry, chain=None) -> BlockKey:
        """A block's identity in the engine: shared across models unless sharing is off. A
        tied head's key names the embedding of `chain` (default: the model's own), the one
        its logits read: an equivalent chain that swaps the embedding has a head key of its
        own, so its requests never share a head call with requests of another embedding."""
        owner = None if self.cfg.share_blocks else model
        tied = None
        if self.info[entry.block].kind == "head" and self.models[model].tie_word_embeddings:
            tied = (chain or self.chains[model])[0].block
        return BlockKey(entry.block, owner, tied)

    def all_chains(self, model: str) -> list:
        """The model's chain, then its equivalent chains."""
        return [self.chains[model]] + [c for _, c, _ in self.options.get(model, ())]

    def all_entries(self, model: str) -> list[tuple[BlockKey, ChainEntry]]:
        """(key, entry) of every block the model's chain and its equivalent chains run, each
        key once."""
        seen: dict[BlockKey, ChainEntry] = {}
        for chain in self.all_chains(model):
            for e in chain:
                seen.setdefault(self.key(model, e, chain), e)
        return list(seen.items())

    def register(self, chain) -> None:
        """Learn the manifest rows of a chain's blocks and adapters."""
        for e in chain:
            for bid in (e.block, e.adapter):
                if bid and bid not in self.info:
                    self.info[bid] = self.zoo.block_info(bid)

    # ---- requests -------------------------------------------------------------------------

    def submit(self, model: str, prompt: list[int], params: SamplingParams = SamplingParams(),
               max_tokens: int = 16, stop_ids: frozenset[int] | None = None,
               min_tokens: int = 0) -> Request:
        """Queue a request. stop_ids: the tokens that end it (None: the model's EOS ids; empty:
        never, as vLLM's ignore_eos); min_tokens: those tokens cannot be sampled before this
        many tokens were generated (their logits are masked, as vLLM does)."""
        self.check(model, prompt, max_tokens, min_tokens, len(self.sched.waiting),
                   scoring=params.prompt_logprobs is not None)
        cfg = self.models[model]
        stop = frozenset(cfg.eos_token_ids) if stop_ids is None else stop_ids
        req = Request(next(self._ids), model, list(prompt), params, max_tokens, stop,
                      assemble_chain(self, model), min_tokens=min_tokens,
                      chunk=self.cfg.prefill_chunk)
        set_keys(self, req, tuple(self.key(model, e, req.chain) for e in req.chain))
        self.sched.waiting.append(req)
        self.served[model] = self.served.get(model, 0) + 1
        return req

    def check(self, model: str, prompt: list[int], max_tokens: int, min_tokens: int,
              waiting: int, scoring: bool = False) -> None:
        """A UserError or Busy naming what the request's fields or the backlog (`waiting`
        requests) break; reads only the configuration: any thread may call it."""
        check_request(self.models, self.cfg.max_waiting, model, prompt, max_tokens,
                      min_tokens, waiting, scoring)

    def snapshot(self) -> dict:
        """What /metrics and /v1/models read, as plain data (taken on the engine's thread)."""
        s = self.sched
        return {"queues": {k: len(q) for k, q in s.queues.items()},
                "last_batch": dict(s.last_batch), "limits": dict(self.weights.limits),
                "kv_pages_used": {k: s.kv.used_pages(k) for k in s.kv.tables},
                "resident": {k for r in self.weights.memory for k in r.keys()},
                "resident_bytes": self.weights.used(), "running": len(s.running),
                "waiting": len(s.waiting), "counters": dict(self.counters)}

    def abort(self, req: Request, reason: str = "abort") -> None:
        if req.state is State.FINISHED:
            return
        self.sched.dequeue(req)
        self._finish(req, reason)

    def has_work(self) -> bool:
        return bool(self.sched.waiting or self.sched.running or self.executor.inflight)

    def close(self) -> None:
        """Give the devices back (Ray actors end; local hosts free their tensors)."""
        for h in self.hosts:
            h.shutdown()

    # ---- the step -------------------------------------------------------------------------

    def step(self) -> None:
        """Admit what fits, start a batch on every idle device, then postprocess at least one
        finished batch. No-op when idle."""
        t0 = time.perf_counter()
        self.waiting_for_reads = False
        if self.cfg.replan_s is not None and len(self.hosts) > 1 and \
                t0 - self.last_plan >= self.cfg.replan_s:
            replan(self)
        for req in self.sched.admit(lambda r: route_request(self, r)):
            self._finish(req, f"error: {len(req.context)} tokens do not fit the KV cache "
                              "(raise --kv-budget)")
        for d in range(len(self.hosts)):
            if self.executor.idle(d):
                key = self.sched.pick(self.where, d, self.weights.penalty)
                if key is not None:
                    self._launch(d, key)
        speculate(self)  # loads what comes next while the devices compute
        if not self.executor.inflight:
            if self.sched.running and self.sched.pick(self.where, None, self.weights.penalty) \
                    is None:  # all stuck waiting for KV (uncoordinated)
                self.sched.break_deadlock()
            elif self.waiting_for_reads:
                time.sleep(0.001)  # only blocks being read have work: let the reader run
            return
        for done in self.executor.collect():
            self._postprocess(done)
        self.counters["steps"] += 1
        self.counters["step_seconds"] += time.perf_counter() - t0

    def _launch(self, device: int, key: BlockKey) -> None:
        """The block's batch (its weights loaded first, its limit known) on its device."""
        head = self.sched.head(key)
        if not self.weights.resident(key) and self.hosts[device].reading():
            self.waiting_for_reads = True  # one read at a time per device: a load never
            return  # evicts a block still being read (two loads would evict each other)
        try:
            cold = self.weights.ensure_resident(key, head)
            if not self.weights.ready(key, head):  # its read goes on: other blocks run first
                for _, r in self.sched.queues[key]:
                    r.cold |= cold
                self.waiting_for_reads = True
                return
            limit = self.weights.limit(key, head.chain[head.stage])  # may profile: first use
        except Exception as e:  # noqa: BLE001 - over budget, corrupt, out of memory while
            # building or profiling it: the block cannot run, so its requests end, not all
            for _, r in list(self.sched.queues[key]):
                self.abort(r, f"error: {e}")
            if self.weights.resident(key):  # a speculative load that failed: read it again
                self.weights.evict(key)
            return
        reqs = self.sched.take(key, limit)
        for r in reqs:
            r.cold |= cold
        failed = self.executor.launch(device, key, reqs, self.tied_embed_key(key, reqs[0]))
        if failed is not None:
            self.block_failed(key, reqs, failed)

    def _postprocess(self, done: Done) -> None:
        """Each request of a finished batch goes on: to its next block, back to the embedding
        (a prompt chunk done, or a token sampled after the head), or out."""
        batch = done.batch
        if done.error is not None:  # requests preempted while it ran go on from their restart
            self.block_failed(batch.key, [r for i, r in enumerate(batch.reqs) if batch.live(i)],
                              done.error)
            return
        for i, (req, out) in enumerate(zip(batch.reqs, done.outs, strict=True)):
            if not batch.live(i):  # asked here: an earlier request's head may have preempted it
                continue  # preempted (or ended) while its batch ran: its output is void
            if batch.kind == "head":
                self._after_head(req, out)
            elif req.stage + 2 == len(req.chain) and req.prefilling:
                req.next_pass()  # a chunk of the prompt is in every block's KV: the next chunk
                self.sched.reenter(req)
            else:
                req.hidden = out
                req.stage += 1
                self.sched.enqueue(req)

    def tied_embed_key(self, key: BlockKey, req: Request) -> BlockKey | None:
        """For a tied head's key, the key of the embedding replica its logits need (on the
        head's device: see runtime.routing)."""
        return req.keys[0] if key.tied else None

    def block_failed(self, key: BlockKey, reqs: list[Request], exc: Exception) -> None:
        """A block call raised: its batch's requests end with the reason (their KV is freed),
        the worker is dropped so the next use reloads it from the zoo (hash-checked)."""
        self.counters["block_failures"] += 1
        for r in reqs:
            self.abort(r, f"error: block {key} failed: {exc!r}")
        self.weights.evict(key)

    def _after_head(self, req: Request, out: int | TokenLogprob | tuple) -> None:
        """`out`: the token picked on the device (a TokenLogprob where logprobs are asked),
        or (that, the prompt's logprobs)."""
        if isinstance(out, tuple):  # (its output, its prompt's logprobs)
            out, plp = out
            req.prompt_lps = prompt_logprobs(req.prompt, *plp)
        if req.max_tokens == 0:  # scoring the prompt alone (its logprobs): nothing to generate
            return self._finish(req, "length")
        if isinstance(out, TokenLogprob):
            token = out.token
            req.logprobs.append(out)
        else:
            token = out
        req.output.append(token)
        self.counters["tokens"] += 1
        req.token_times.append(time.perf_counter())
        if self.on_token is not None:
            self.on_token(req, token)
            if req.state is State.FINISHED:  # the hook aborted it: its KV is gone
                return
        limit = self.models[req.model].max_position_embeddings
        if token in req.stop_ids:
            return self._finish(req, "stop")
        if len(req.output) >= req.max_tokens or len(req.context) >= limit:
            return self._finish(req, "length")
        req.next_pass(token)
        self.sched.reenter(req)

    def _finish(self, req: Request, reason: str) -> None:
        self.sched.release(req)
        req.state, req.finish_reason, req.hidden = State.FINISHED, reason, None
        if self.on_finish is not None:
            self.on_finish(req)

    # ---- blocks on the devices ----------------------------------------------------------

    def warm_up(self) -> None:
        """Before serving: load what fits each device's budget, in chain order, and profile
        each block shape's latency curve (its batch limit) on it, so that no request pays for
        a profile (measured: the first run at 2 req/s was 2.5x slower than the next when
        shapes were profiled inside serving steps). Blocks that do not fit load on demand."""
        for m in self.models:
            for e in self.chains[m]:
                key = self.key(m, e)
                for r in self.replicas[key]:
                    self.weights.warm(r, e, m)
                if self.weights.resident(key):
                    self.weights.limit(key, e, measure=True)

    def generate(self, model: str, prompts: list[list[int]], max_tokens: int,
                 params: SamplingParams = SamplingParams(), stop_ids=None) -> list[list[int]]:
        """Submit, run to completion, return outputs (a convenience for tests and scripts)."""
        reqs = [self.submit(model, p, params, max_tokens, stop_ids) for p in prompts]
        while any(r.state is not State.FINISHED for r in reqs):
            self.step()
        return [r.output for r in reqs]
