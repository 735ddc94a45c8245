"""The executor: a block's batch of requests as one call on its device, and its outputs back.

The scheduler chooses whom a block's batch takes (integers); the hosts run blocks (tensors:
runtime/hosts.py, one per device, in this process or a Ray actor). Between them, the
executor turns a batch into one `BatchCall` (inputs, this step's page tables and slots for a
decoder, adapter ids, how the head picks each request's token), keeps what each device is
running (`inflight`), and hands each finished batch's outputs back: hidden states, or token
ids (with logprobs where asked) picked on the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from blockllm.models.attention import AttnBatch
from blockllm.runtime.faults import maybe_inject_fault
from blockllm.runtime.hosts import BatchCall
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.kv_manager import KVManager
from blockllm.runtime.request import Request


class Inflight(NamedTuple):
    """A batch running on a device."""
    key: BlockKey
    kind: str
    reqs: list[Request]
    epochs: list[tuple]  # (preemptions, state) of each request when it started
    handle: object  # the host's handle of the call
    t0: float

    def live(self, i: int) -> bool:
        """Request i was not preempted or ended since the batch started (else its output is
        void: a preempted request restarts, an ended one is gone). Ask at the time of use."""
        r = self.reqs[i]
        return (r.preemptions, r.state) == self.epochs[i]


class Done(NamedTuple):
    """A batch that finished: its outputs (one per request), or the exception it raised."""
    batch: Inflight
    outs: list | None
    error: Exception | None


class Executor:
    def __init__(self, hosts: list, kv: KVManager, kind_of: Callable[[Request], str],
                 counters: dict):
        self.hosts, self.kv, self.kind_of = hosts, kv, kind_of  # kind of a request's block
        self.counters = counters  # the engine's: block_calls, block_seconds
        self.inflight: dict[int, Inflight] = {}  # device -> the batch running there

    def idle(self, device: int) -> bool:
        return device not in self.inflight

    def launch(self, device: int, key: BlockKey, reqs: list[Request],
               tied_key: BlockKey | None) -> Exception | None:
        """Start the batch on its device (its outputs come back from `collect`); the
        exception if it could not start (the engine fails the batch's requests)."""
        kind = self.kind_of(reqs[0])
        if kind == "embed":
            inputs = [torch.tensor(r.feed, dtype=torch.long) for r in reqs]
        else:
            inputs = [r.hidden for r in reqs]
        attn = adapters = picks = prompt_lp = None
        if kind == "decoder":  # page tables live in the scheduler; the KV pool on the device
            attn = AttnBatch.describe(self.kv.tables[key], [r.id for r in reqs],
                                      [len(r.feed) for r in reqs])
            ids = tuple(r.chain[r.stage].adapter for r in reqs)
            adapters = ids if any(ids) else None
        if kind == "head":  # every request's token is picked on the device
            picks = tuple(r.pick() for r in reqs)
            if any(r.wants_prompt_logprobs for r in reqs):
                prompt_lp = tuple((tuple(r.prompt[1:]), r.params.prompt_logprobs)
                                  if r.wants_prompt_logprobs else None for r in reqs)
        call = BatchCall(key, inputs, attn, adapters, tied_key, kind, picks, prompt_lp)
        # a request preempted or ended while its batch runs gets a new epoch: its output is void
        epochs = [(r.preemptions, r.state) for r in reqs]
        t0 = time.perf_counter()
        try:
            maybe_inject_fault()
            handle = self.hosts[device].submit(call)
        except Exception as e:  # noqa: BLE001 - a failing block ends its batch, not the server
            return e
        self.inflight[device] = Inflight(key, kind, reqs, epochs, handle, t0)
        self.counters["block_calls"] += 1
        return None

    def collect(self) -> list[Done]:
        """Wait until at least one device's batch is done; every finished batch."""
        devices = list(self.inflight)
        handles = [self.inflight[d].handle for d in devices]
        out = []
        for i in self.hosts[0].collect(handles):
            d = devices[i]
            batch = self.inflight.pop(d)
            try:
                outs = self.hosts[d].result(batch.handle)
            except Exception as e:  # noqa: BLE001 - isolate the block, keep serving
                out.append(Done(batch, None, e))
                continue
            self.counters["block_seconds"] += time.perf_counter() - batch.t0
            out.append(Done(batch, outs, None))
        return out
