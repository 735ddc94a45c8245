"""Block weights on the devices: what is resident under each device's budget, loads and
evictions, speculative loads, and each block's batch limit (from its shape's latency curve).

The engine decides when a block must be resident (a batch needs it, a warm-up, a guess);
this object keeps the bookkeeping (`Residency` per device: integers) and tells the block's
host to load or drop it (the host owns the tensors).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from blockllm.models.config import LlamaConfig
from blockllm.runtime.batch_policy import batch_limit
from blockllm.runtime.config import EngineConfig
from blockllm.runtime.keys import BlockKey
from blockllm.runtime.kv_manager import KVManager
from blockllm.runtime.request import Request
from blockllm.runtime.residency import Residency
from blockllm.runtime.segments import parts_of
from blockllm.zoo.manifest import BlockRow
from blockllm.zoo.partition import ChainEntry


class Weights:
    def __init__(self, cfg: EngineConfig, hosts: list, where: dict[BlockKey, int],
                 entry_of: Mapping[BlockKey, tuple], info: Mapping[str, BlockRow],
                 models: Mapping[str, LlamaConfig], kv: KVManager, counters: dict):
        self.cfg, self.hosts, self.kv, self.counters = cfg, hosts, kv, counters
        self.where = where  # key -> device (the engine's: moves change it in place)
        self.entry_of, self.info, self.models = entry_of, info, models
        self.memory = [Residency(cfg.memory_budget) for _ in hosts]  # per device
        self.speculative: set[BlockKey] = set()  # loaded speculatively, not run yet
        self.limits: dict[BlockKey, int] = {}  # each block's batch limit in tokens
        self._curves: dict[str, list[tuple[int, float]]] = {}  # per block shape
        self._measured: dict[tuple, tuple[int, list]] = {}  # decoder shape without its layer
        #                                                     count -> (layers, curve) profiled

    def weight_bytes(self, key: BlockKey, device: int | None = None) -> int:
        """Bytes `key`'s block holds on `device` (default: its own): its tensors, and for a
        tied model's embedding on a host that packs weights (CPU) the packed copy its heads'
        logits read. The host says whether it packs: it decided on its own CPU."""
        entry, model = self.entry_of[key]
        row = self.info[entry.block]
        host = self.hosts[self.where[key] if device is None else device]
        if row.kind == "embed" and self.models[model].tie_word_embeddings and host.packs:
            return 2 * row.nbytes
        return row.nbytes

    def residency(self, key: BlockKey) -> Residency:
        """The memory of the device that runs `key`."""
        return self.memory[self.where[key]]

    def resident(self, key: BlockKey) -> bool:
        return self.residency(key).resident(key)

    def used(self) -> int:
        return sum(r.used for r in self.memory)

    def load(self, key: BlockKey, entry: ChainEntry, model: str, wait: bool = True) -> None:
        """Load the block on its device (a decoder's KV pool with it, the first time);
        wait=False: speculatively, in the background (see runtime.speculation)."""
        tables = self.kv.tables
        pages = tables[key].num_pages if key in tables else 0
        self.hosts[self.where[key]].load(key, parts_of(entry), self.models[model], pages,
                                         self.cfg.page_size, wait)
        self.counters["cold_loads"] += 1

    def evict(self, key: BlockKey) -> None:
        """Free the block's weights on its device (its KV pool stays)."""
        self.hosts[self.where[key]].drop(key)
        if self.resident(key):
            self.residency(key).remove(key)
        if key in self.speculative:
            self.speculative.discard(key)
            self.counters["prefetch_wasted"] += 1

    def ensure_resident(self, key: BlockKey, req: Request) -> bool:
        """Load the block (and a tied head's embedding) under the memory budget. True if
        cold. With whole-model residency (the per-model baseline) the unit is the request's
        whole chain. Everything in `need` is on the device of `key` (devices.place_keys)."""
        stages = range(len(req.chain)) if self.cfg.residency_unit == "model" else [req.stage]
        need = {req.keys[i]: self.weight_bytes(req.keys[i]) for i in stages}
        if key.tied:  # its logits read the request's embedding replica (runtime.routing)
            need[req.keys[0]] = self.weight_bytes(req.keys[0])
        by_key = dict(zip(req.keys, req.chain, strict=True))
        t0 = time.perf_counter()
        mem = self.residency(key)
        load, evict = mem.plan(need)
        for k in evict:
            self.evict(k)
        for k in load:  # read on a background thread: the devices go on meanwhile
            self.load(k, by_key[k], req.model, wait=False)
            mem.add(k, need[k])
        mem.touch(need)
        if load:
            self.counters["load_seconds"] += time.perf_counter() - t0
        if key in self.speculative:  # a speculative load that paid off
            self.speculative.discard(key)
            self.counters["prefetch_hits"] += 1
        return bool(load)

    def ready(self, key: BlockKey, req: Request) -> bool:
        """The block (and a tied head's embedding) can run without waiting for a read."""
        keys = [key, req.keys[0]] if key.tied else [key]
        return all(self.hosts[self.where[k]].ready(k) for k in keys)

    def penalty(self, key: BlockKey, req: Request) -> float:
        """0 when the block is resident or fits the free budget (loading it evicts nothing),
        else `load_penalty_s` per 128 MiB to load: work that would evict others waits a
        little (Scheduler.pick). A block still being read waits behind all runnable work."""
        mem = self.residency(key)
        if mem.resident(key):
            return 0.0 if self.ready(key, req) else float("inf")
        if self.hosts[self.where[key]].reading():  # one read at a time per device: a pick of
            return float("inf")  # this block would leave the device idle until that read ends
        if self.cfg.residency_unit == "model":  # the request's whole model
            missing = sum(self.weight_bytes(k) for k in req.keys if not self.resident(k))
        else:
            missing = self.weight_bytes(key)
        if mem.used + missing <= mem.budget:
            return 0.0
        return self.cfg.load_penalty_s * missing / 2**27

    def warm(self, key: BlockKey, entry: ChainEntry, model: str) -> None:
        """Load `key` if it fits its device's free budget (a corrupt block is left to fail
        its requests, by name, later)."""
        from blockllm.errors import UserError
        mem, size = self.residency(key), self.weight_bytes(key)
        if not mem.resident(key) and mem.used + size <= mem.budget:
            try:
                self.load(key, entry, model)
            except UserError:
                return
            mem.add(key, size)

    def limit(self, key: BlockKey, entry: ChainEntry, measure: bool = False) -> int:
        """The block's batch limit in tokens: fixed, or from its shape's latency curve,
        profiled on its device once per shape. `measure` (warm-up, where a profile delays no
        request): always profile a new shape; else (a first use while serving) a decoder
        segment takes a measured curve of its layers scaled to its layer count if there is one."""
        if key not in self.limits:
            self.limits[key] = self._limit(key, entry, measure)
        return self.limits[key]

    def _limit(self, key: BlockKey, entry: ChainEntry, measure: bool) -> int:
        if self.cfg.batch_tokens is not None:
            return self.cfg.batch_tokens
        row = self.info[entry.block]
        if row.kind in ("embed", "head"):  # a lookup, and logits of last tokens only: cheap
            return 1 << 30
        shape = f"{row.kind}:{sorted(row.signature.items())}"
        if shape not in self._curves:  # one profile per block shape, not per block
            scaled = None if measure else self._scaled(row)
            self._curves[shape] = scaled or self._profile(key, row)
        return batch_limit(self._curves[shape], self.cfg.latency_target_s)

    def _profile(self, key: BlockKey, row: BlockRow) -> list[tuple[int, float]]:
        curve = self.hosts[self.where[key]].profile(key)
        if row.kind == "decoder":
            self._measured[_layer_free(row)] = (row.signature["n_layers"], curve)
        return curve

    def _scaled(self, row: BlockRow) -> list[tuple[int, float]] | None:
        """A decoder segment's curve from a measured one of the same layers in another number,
        scaled by the ratio of layers; None if none was measured. An estimate: a call's fixed
        costs scale too, and the knee (the batch limit without a latency target) stays where it
        was, so warm-up measures every resident shape instead. It keeps a segment that loads on
        demand from being profiled in the serving path (measured on 2 EPYC cores: the
        ablations' first requests waited 3-8 s while such segments were profiled)."""
        measured = self._measured.get(_layer_free(row)) if row.kind == "decoder" else None
        if measured is None:
            return None
        n, curve = measured
        ratio = row.signature["n_layers"] / n
        return [(tokens, seconds * ratio) for tokens, seconds in curve]


def _layer_free(row: BlockRow) -> tuple:
    """A decoder block's shape without its number of layers."""
    return tuple(sorted((k, v) for k, v in row.signature.items() if k != "n_layers"))
